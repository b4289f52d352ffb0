//! The small languages users type: agent names, `--net`, `--allow`, durations.
//!
//! They live here so the CLI rejects bad input before it reaches the daemon, and the
//! daemon, which never trusts its callers, checks the same rules again.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "invalid agent name {0:?}: use 1-64 characters from a-z A-Z 0-9 . _ -, starting with a letter or digit"
    )]
    AgentName(String),
    #[error(
        "invalid --net {input:?}: {why} (expected deny, allow, or HOST:PORT[,HOST:PORT...], HOST a name, \
         *.DOMAIN, an address or a CIDR prefix such as 10.0.0.0/8 or [fd00::/8])"
    )]
    Net { input: String, why: String },
    #[error(
        "invalid --allow {input:?}: {why} (expected PATH:OPS[:TTL], OPS a comma list of read,write,exec,create,delete)"
    )]
    Allow { input: String, why: String },
    #[error(
        "invalid --budget {input:?}: {part:?}: {why} (expected KEY:VALUE[,...] with KEY one of cpu, cpu-rate, mem, pids, net, api, cost; e.g. cpu:1h,mem:2G,pids:256,net:1G,api:500,cost:$5)"
    )]
    Budget { input: String, part: String, why: String },
    #[error("invalid duration {input:?}: {why} (expected e.g. 90s, 30m, 1h, 2d)")]
    Duration { input: String, why: String },
    #[error("invalid --hardlinks {0:?}: expected follow, refuse-write or refuse")]
    Hardlinks(String),
}

/// What a file-confined agent may do with a regular file that has more than one hard
/// link (`--hardlinks`): such a file can be reached through a name inside a granted
/// directory while its other names are outside every grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hardlinks {
    /// A name in a granted directory grants the file, whatever its other names.
    #[default]
    Follow,
    /// Writing it needs a token that names the file itself.
    RefuseWrite,
    /// Reading, writing and executing it need a token that names the file itself.
    Refuse,
}

impl Hardlinks {
    /// The spelling the CLI and the policy file use.
    pub fn as_str(self) -> &'static str {
        match self {
            Hardlinks::Follow => "follow",
            Hardlinks::RefuseWrite => "refuse-write",
            Hardlinks::Refuse => "refuse",
        }
    }
}

impl fmt::Display for Hardlinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Hardlinks {
    type Err = SpecError;
    /// `refuse_write` (the JSON spelling) is taken too.
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "follow" => Ok(Hardlinks::Follow),
            "refuse-write" | "refuse_write" => Ok(Hardlinks::RefuseWrite),
            "refuse" => Ok(Hardlinks::Refuse),
            _ => Err(SpecError::Hardlinks(s.to_owned())),
        }
    }
}

/// An agent's name: also its cgroup directory name, so it is kept to a safe alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentName(String);

impl AgentName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgentName {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
        if ok { Ok(AgentName(s.to_owned())) } else { Err(SpecError::AgentName(s.to_owned())) }
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// File operations a token can grant. A plain bit set: the same bits travel to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Ops(pub u32);

impl Ops {
    pub const READ: Ops = Ops(1 << 0);
    pub const WRITE: Ops = Ops(1 << 1);
    pub const EXEC: Ops = Ops(1 << 2);
    pub const CREATE: Ops = Ops(1 << 3);
    pub const DELETE: Ops = Ops(1 << 4);
    pub const ALL: [(&'static str, Ops); 5] = [
        ("read", Ops::READ),
        ("write", Ops::WRITE),
        ("exec", Ops::EXEC),
        ("create", Ops::CREATE),
        ("delete", Ops::DELETE),
    ];

    pub fn contains(self, other: Ops) -> bool {
        self.0 & other.0 == other.0
    }
}

impl FromStr for Ops {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut ops = Ops(0);
        for word in s.split(',') {
            let word = word.trim();
            match Ops::ALL.iter().find(|(name, _)| *name == word) {
                Some((_, bit)) => ops.0 |= bit.0,
                None if word.is_empty() => return Err("empty operation in list".into()),
                None => return Err(format!("unknown operation {word:?}")),
            }
        }
        Ok(ops)
    }
}

impl fmt::Display for Ops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> =
            Ops::ALL.iter().filter(|(_, bit)| self.contains(*bit)).map(|(n, _)| *n).collect();
        f.write_str(&names.join(","))
    }
}

/// `--allow PATH:OPS[:TTL]`: a file capability token requested at spawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileGrant {
    pub path: PathBuf,
    pub ops: Ops,
    /// Lifetime from the grant; `None` = until revoked.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

impl FromStr for FileGrant {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let err = |why: &str| SpecError::Allow { input: s.to_owned(), why: why.to_owned() };
        // Paths may contain ':'; the ops list and TTL never do, so split from the right:
        // PATH:OPS:TTL when the middle part is an ops list, else PATH:OPS.
        let (path, ops, ttl) = match s.rsplitn(3, ':').collect::<Vec<_>>().as_slice() {
            [ttl, ops, path] if ops.parse::<Ops>().is_ok() => (*path, *ops, Some(*ttl)),
            _ => match s.rsplit_once(':') {
                Some((path, ops)) => (path, ops, None),
                None => return Err(err("missing ':OPS'")),
            },
        };
        if path.is_empty() {
            return Err(err("empty path"));
        }
        if !path.starts_with('/') {
            return Err(err("path must be absolute"));
        }
        let ops = ops.parse::<Ops>().map_err(|why| err(&why))?;
        if ops.0 == 0 {
            return Err(err("no operations"));
        }
        let ttl_secs = match ttl {
            None => None,
            Some(t) => Some(parse_duration(t).map_err(|e| err(&e.to_string()))?.as_secs()),
        };
        Ok(FileGrant { path: PathBuf::from(path), ops, ttl_secs })
    }
}

/// One allowed destination. `host` is an IP literal, a host name, or `*.` and a domain
/// (any name below it); the addresses of names are those the agent's DNS answers gave,
/// for their TTL (or resolved at spawn where the daemon has no resolver); port 0 means any
/// port. With `prefix`, `host` is an IP literal
/// and the entry covers every address sharing its first `prefix` bits (a CIDR block).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetEndpoint {
    pub host: String,
    pub port: u16,
    /// CIDR prefix length (≤ 32 for IPv4, ≤ 128 for IPv6); None = the one address (or
    /// every address the name resolves to). Absent in older requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<u8>,
}

impl NetEndpoint {
    /// The address block this entry names, if `host` is an IP literal: (address with the
    /// bits below the prefix cleared, prefix length; a lone address is a full prefix).
    /// Err for a prefix on a host name or one longer than the address.
    pub fn ip_prefix(&self) -> Result<Option<(IpAddr, u8)>, String> {
        let Ok(ip) = self.host.parse::<IpAddr>() else {
            return match self.prefix {
                Some(p) => Err(format!(
                    "a prefix length (/{p}) needs an IP address, not the host name {:?}",
                    self.host
                )),
                None => Ok(None),
            };
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = self.prefix.unwrap_or(max);
        if len > max {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            return Err(format!("prefix /{len} is longer than the {max} bits of an {family} address"));
        }
        Ok(Some((mask_ip(ip, len), len)))
    }
}

/// `ip` with every bit after the first `len` cleared (`len` at most the address's bits).
pub fn mask_ip(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

impl fmt::Display for NetEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.port == 0 { "*".to_owned() } else { self.port.to_string() };
        let prefix = self.prefix.map(|p| format!("/{p}")).unwrap_or_default();
        if self.host.contains(':') {
            write!(f, "[{}{prefix}]:{port}", self.host)
        } else {
            write!(f, "{}{prefix}:{port}", self.host)
        }
    }
}

/// An agent's outbound network policy (`--net`), enforced by cgroup connect/sendmsg programs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "mode", content = "endpoints", rename_all = "snake_case")]
pub enum NetPolicy {
    /// No outbound connect() or sendmsg() to any IPv4/IPv6 address.
    #[default]
    Deny,
    Allow,
    AllowList(Vec<NetEndpoint>),
}

impl fmt::Display for NetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetPolicy::Deny => f.write_str("deny"),
            NetPolicy::Allow => f.write_str("allow"),
            NetPolicy::AllowList(eps) => {
                let list: Vec<String> = eps.iter().map(|e| e.to_string()).collect();
                f.write_str(&list.join(","))
            }
        }
    }
}

impl FromStr for NetPolicy {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let err = |why: String| SpecError::Net { input: s.to_owned(), why };
        match s {
            "deny" => return Ok(NetPolicy::Deny),
            "allow" => return Ok(NetPolicy::Allow),
            "" => return Err(err("empty".into())),
            _ => {}
        }
        let mut eps = Vec::new();
        for item in s.split(',') {
            eps.push(parse_endpoint(item).map_err(|why| err(format!("{item:?}: {why}")))?);
        }
        Ok(NetPolicy::AllowList(eps))
    }
}

fn parse_endpoint(item: &str) -> Result<NetEndpoint, String> {
    let (host, port) = if let Some(rest) = item.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        let port = rest.strip_prefix(':').ok_or("missing ':PORT' after ']'")?;
        let addr = host.split_once('/').map_or(host, |(a, _)| a);
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        (host, port)
    } else {
        let (host, port) = item.rsplit_once(':').ok_or("missing ':PORT'")?;
        if host.contains(':') {
            return Err("write IPv6 addresses in brackets, e.g. [::1]:443 or [fd00::/8]:443".into());
        }
        (host, port)
    };
    let (host, prefix) = match host.split_once('/') {
        None => (host, None),
        Some((addr, len)) => {
            let len = match len.parse::<u8>() {
                Ok(n) if !len.starts_with('+') => n,
                _ => return Err(format!("prefix length {len:?} is not a number of bits (0-32 or 0-128)")),
            };
            (addr, Some(len))
        }
    };
    if host.is_empty() {
        return Err("empty host".into());
    }
    if let Some(below) = host.strip_prefix("*.") {
        if prefix.is_some() || !is_hostname(below) || !below.contains('.') {
            return Err(format!(
                "{host:?}: a wildcard is \"*.\" before a domain of at least two labels, e.g. *.example.com"
            ));
        }
    } else if host.parse::<IpAddr>().is_err() && !is_hostname(host) {
        return Err(format!("{host:?} is neither an IP address nor a host name"));
    }
    let mut endpoint = NetEndpoint { host: host.to_owned(), port: 0, prefix };
    // A block written with host bits set (10.1.2.3/8) means the block: keep it normalised.
    if prefix.is_some()
        && let Some((ip, _)) = endpoint.ip_prefix()?
    {
        endpoint.host = ip.to_string();
    }
    let port = match port {
        "*" => 0,
        p => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {p:?} is not 1-65535 or *")),
            Ok(n) => n,
        },
    };
    endpoint.port = port;
    Ok(endpoint)
}

fn is_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `90s`, `30m`, `1h`, `2d`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, SpecError> {
    let err = |why: &str| SpecError::Duration { input: s.to_owned(), why: why.to_owned() };
    if s.is_empty() {
        return Err(err("empty"));
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(err(&format!("unknown unit {c:?}"))),
        };
        let n: u64 = digits.parse().map_err(|_| err("a unit without a number before it"))?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(|| err("too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(err("a number without a unit at the end"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_parse_in_both_spellings_and_serialize_snake_case() {
        assert_eq!("follow".parse::<Hardlinks>().unwrap(), Hardlinks::Follow);
        assert_eq!("refuse-write".parse::<Hardlinks>().unwrap(), Hardlinks::RefuseWrite);
        assert_eq!("refuse_write".parse::<Hardlinks>().unwrap(), Hardlinks::RefuseWrite);
        assert_eq!("refuse".parse::<Hardlinks>().unwrap(), Hardlinks::Refuse);
        let e = "never".parse::<Hardlinks>().unwrap_err().to_string();
        assert!(e.contains("\"never\"") && e.contains("follow, refuse-write or refuse"), "{e}");
        assert_eq!(serde_json::to_string(&Hardlinks::RefuseWrite).unwrap(), "\"refuse_write\"");
        assert_eq!(serde_json::from_str::<Hardlinks>("\"refuse\"").unwrap(), Hardlinks::Refuse);
        assert_eq!(Hardlinks::default(), Hardlinks::Follow);
    }

    #[test]
    fn agent_names() {
        assert!("a1".parse::<AgentName>().is_ok());
        assert!("build-bot_2.x".parse::<AgentName>().is_ok());
        for bad in ["", "-x", ".hidden", "a/b", "a b", "..", &"x".repeat(65)] {
            assert!(bad.parse::<AgentName>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn net_policies() {
        assert_eq!("deny".parse::<NetPolicy>().unwrap(), NetPolicy::Deny);
        assert_eq!("allow".parse::<NetPolicy>().unwrap(), NetPolicy::Allow);
        let p = "127.0.0.1:8080,[::1]:443,api.example.com:*".parse::<NetPolicy>().unwrap();
        let NetPolicy::AllowList(eps) = &p else { panic!("not a list: {p:?}") };
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0], NetEndpoint { host: "127.0.0.1".into(), port: 8080, prefix: None });
        assert_eq!(eps[1], NetEndpoint { host: "::1".into(), port: 443, prefix: None });
        assert_eq!(eps[2].port, 0);
        assert_eq!(p.to_string(), "127.0.0.1:8080,[::1]:443,api.example.com:*");
    }

    #[test]
    fn cidr_net_policies() {
        let text = "10.0.0.0/8:443,[fd00::/8]:*,192.168.1.5:*,0.0.0.0/0:53,[::/0]:53,1.2.3.4/32:80";
        let p = text.parse::<NetPolicy>().unwrap();
        let NetPolicy::AllowList(eps) = &p else { panic!("not a list: {p:?}") };
        assert_eq!(eps[0], NetEndpoint { host: "10.0.0.0".into(), port: 443, prefix: Some(8) });
        assert_eq!(eps[1], NetEndpoint { host: "fd00::".into(), port: 0, prefix: Some(8) });
        assert_eq!(eps[2], NetEndpoint { host: "192.168.1.5".into(), port: 0, prefix: None });
        assert_eq!(eps[3].ip_prefix(), Ok(Some(("0.0.0.0".parse().unwrap(), 0))));
        assert_eq!(eps[5].ip_prefix(), Ok(Some(("1.2.3.4".parse().unwrap(), 32))));
        assert_eq!(eps[2].ip_prefix(), Ok(Some(("192.168.1.5".parse().unwrap(), 32))));
        assert_eq!(p.to_string(), text);
        assert_eq!(p.to_string().parse::<NetPolicy>().unwrap(), p);

        // Bits below the prefix are accepted and cleared.
        let p = "10.1.2.3/8:443,[fd12:3456::1/16]:*".parse::<NetPolicy>().unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8:443,[fd12::/16]:*");
        let p = "172.16.255.255/12:*".parse::<NetPolicy>().unwrap();
        assert_eq!(p.to_string(), "172.16.0.0/12:*");

        // Older JSON has no prefix; a plain entry serializes as before.
        let old: NetPolicy =
            serde_json::from_str(r#"{"mode":"allow_list","endpoints":[{"host":"1.2.3.4","port":80}]}"#)
                .unwrap();
        assert_eq!(old.to_string(), "1.2.3.4:80");
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"mode":"allow_list","endpoints":[{"host":"1.2.3.4","port":80}]}"#
        );
        let cidr: NetPolicy = "10.0.0.0/8:*".parse().unwrap();
        let json = serde_json::to_string(&cidr).unwrap();
        assert!(json.contains(r#""prefix":8"#), "{json}");
        assert_eq!(serde_json::from_str::<NetPolicy>(&json).unwrap(), cidr);

        // What a caller may send without the parser: checked again where it is used.
        let bad = NetEndpoint { host: "example.com".into(), port: 80, prefix: Some(24) };
        assert!(bad.ip_prefix().unwrap_err().contains("host name"));
        let bad = NetEndpoint { host: "1.2.3.4".into(), port: 80, prefix: Some(33) };
        assert!(bad.ip_prefix().unwrap_err().contains("/33"));
        assert_eq!(NetEndpoint { host: "example.com".into(), port: 80, prefix: None }.ip_prefix(), Ok(None));
    }

    #[test]
    fn wildcard_names() {
        let p: NetPolicy = "*.githubusercontent.com:443,api.example.com:*".parse().unwrap();
        let NetPolicy::AllowList(eps) = p else { panic!("{p:?}") };
        assert_eq!(eps[0], NetEndpoint { host: "*.githubusercontent.com".into(), port: 443, prefix: None });
        assert_eq!(eps[0].ip_prefix(), Ok(None));
        assert_eq!(eps[1].port, 0);
    }

    #[test]
    fn bad_net_policies_name_the_bad_part() {
        for (bad, needle) in [
            ("", "empty"),
            ("127.0.0.1", "missing ':PORT'"),
            ("127.0.0.1:0", "port \"0\""),
            ("127.0.0.1:99999", "port \"99999\""),
            ("::1:80", "brackets"),
            ("[::1:80", "unclosed"),
            ("bad host:80", "neither"),
            ("1.2.3.4:80,", "\"\""),
            ("10.0.0.0/33:80", "/33 is longer than the 32 bits of an IPv4"),
            ("[fd00::/129]:80", "/129 is longer than the 128 bits of an IPv6"),
            ("example.com/24:443", "needs an IP address, not the host name \"example.com\""),
            ("10.0.0.0/x:80", "prefix length \"x\""),
            ("10.0.0.0/:80", "prefix length \"\""),
            ("10.0.0.0/-1:80", "prefix length \"-1\""),
            ("10.0.0.0/300:80", "prefix length \"300\""),
            ("[fd00::/8:80", "unclosed"),
            ("fd00::/8:80", "brackets"),
            ("[zz::/8]:80", "\"zz::\" is not an IPv6"),
            ("*.com:443", "a wildcard is"),
            ("*.*.example.com:443", "a wildcard is"),
            ("*.example.com/8:443", "a wildcard is"),
            ("*:443", "neither"),
            ("a.*.example.com:443", "neither"),
        ] {
            let e = bad.parse::<NetPolicy>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn file_grants() {
        let g: FileGrant = "/srv/a:read,write".parse().unwrap();
        assert_eq!(g.path, PathBuf::from("/srv/a"));
        assert_eq!(g.ops, Ops(Ops::READ.0 | Ops::WRITE.0));
        assert_eq!(g.ttl_secs, None);
        let g: FileGrant = "/srv/a:read:5s".parse().unwrap();
        assert_eq!(g.ttl_secs, Some(5));
        let g: FileGrant = "/odd:dir/x:exec".parse().unwrap();
        assert_eq!(g.path, PathBuf::from("/odd:dir/x"));
        for (bad, needle) in [
            ("/srv/a", "missing ':OPS'"),
            ("srv/a:read", "absolute"),
            ("/srv/a:fly", "unknown operation \"fly\""),
            ("/srv/a:read:5y", "unknown unit"),
            (":read", "empty path"),
        ] {
            let e = bad.parse::<FileGrant>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn ops_round_trip() {
        let ops: Ops = "delete,read".parse().unwrap();
        assert_eq!(ops.to_string(), "read,delete");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172800));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        for bad in ["", "h", "5x", "10m5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
