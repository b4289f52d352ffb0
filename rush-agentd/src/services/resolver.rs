//! Per-agent DNS forwarders: what keeps host-name allow lists true.
//!
//! An allow list that names hosts cannot be turned into addresses once at spawn: names move.
//! So each agent whose `--net` list names hosts gets its own small DNS server on loopback, and
//! the kernel redirects the agent's port-53 traffic to it; which socket a query arrives on says
//! which agent asked. A query for a name on the list goes upstream unchanged, and every address
//! the answer gives for that name is allowed to that agent (on the pattern's port) for the
//! answer's TTL plus a grace. Any other name is REFUSED without asking upstream, which also
//! closes DNS tunnelling through names of the agent's choosing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{debug, warn};

/// UDP queries of one agent being answered at once; more are dropped (the client retries), so
/// one agent cannot pile up tasks and upstream sockets in the daemon.
const MAX_UDP_IN_FLIGHT: usize = 64;
/// TCP connections of one agent open at once; more are closed on accept.
const MAX_TCP_CONNECTIONS: usize = 16;
/// A TCP client that sends nothing for this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Tries at finding a port free for both UDP and TCP.
const BIND_TRIES: u32 = 8;
/// Longest CNAME chain followed in an answer (resolvers give up well before this).
const MAX_CHAIN: usize = 16;
/// The EDNS payload size of our own lookups (the DNS flag day 2020 value: no fragmentation).
const EDNS_PAYLOAD: u16 = 1232;
const HEADER_LEN: usize = 12;

/// One allowed name of an agent's --net list: `host` lowercase, no trailing dot; may start
/// with "*." (any name below, not the apex); `port` 0 = any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    pub host: String,
    pub port: u16,
}

impl NamePattern {
    /// Case-insensitive, ignores one trailing '.'; "*.example.com" matches "a.example.com"
    /// and "a.b.example.com" but not "example.com".
    pub fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        let labels: Vec<&[u8]> =
            if name.is_empty() { Vec::new() } else { name.split('.').map(str::as_bytes).collect() };
        self.matches_labels(&labels)
    }

    /// Compares label by label, not as text: a wire name's label may itself hold a '.', and
    /// `x\.example.com` (labels "x.example", "com") is not below example.com.
    fn matches_labels(&self, labels: &[&[u8]]) -> bool {
        let host = self.host.strip_suffix('.').unwrap_or(&self.host);
        let (wildcard, suffix) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host),
        };
        let suffix: Vec<&[u8]> = suffix.split('.').map(str::as_bytes).collect();
        let fits = if wildcard { labels.len() > suffix.len() } else { labels.len() == suffix.len() };
        fits && labels[labels.len() - suffix.len()..]
            .iter()
            .zip(&suffix)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    fn matches_name(&self, name: &Name) -> bool {
        let labels: Vec<&[u8]> = name.iter().collect();
        self.matches_labels(&labels)
    }

    fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
    }
}

/// Where learned addresses go (the kernel's per-agent allow map; a fake in tests).
pub trait LearnSink: Send + Sync + 'static {
    /// Allow `ip` on `port` (0 = any) for agent `cgroup_id` until `valid_for` from now.
    fn learn(&self, cgroup_id: u64, ip: IpAddr, port: u16, valid_for: Duration);
}

pub struct ResolverConfig {
    /// The DNS server queries are forwarded to (the daemon's own, from /etc/resolv.conf, or config).
    pub upstream: SocketAddr,
    /// Added to each answer's TTL, so connections opened just before the TTL ran out still connect.
    pub grace: Duration,
    /// TTLs above this are cut to it (a name cannot pin an address for days).
    pub max_ttl: Duration,
    /// How long one upstream exchange may take.
    pub timeout: Duration,
}

impl ResolverConfig {
    /// The first `nameserver` of `resolv_conf` text (IPv4 or IPv6, port 53), None if none.
    /// A link-local IPv6 server with a named zone (`fe80::1%eth0`) is skipped: only a numeric
    /// zone can be turned into a scope id without asking the kernel.
    pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
        text.lines()
            .filter_map(|line| {
                let line = line.split(['#', ';']).next().unwrap_or_default();
                let mut words = line.split_whitespace();
                (words.next() == Some("nameserver")).then(|| words.next())?
            })
            .find_map(parse_nameserver)
    }

    fn valid_for(&self, ttl: u32) -> Duration {
        Duration::from_secs(ttl.into()).min(self.max_ttl) + self.grace
    }
}

fn parse_nameserver(word: &str) -> Option<SocketAddr> {
    if let Ok(ip) = word.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 53));
    }
    let (ip, zone) = word.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope: u32 = zone.parse().ok()?;
    Some(SocketAddr::V6(std::net::SocketAddrV6::new(ip, 53, 0, scope)))
}

#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("cannot bind the agent's DNS forwarder to {proto} {addr}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no port on {ip} was free for both UDP and TCP in {tries} tries")]
    NoPort { ip: IpAddr, tries: u32 },
    #[error("{name:?} is not a valid DNS name: {reason}")]
    BadName { name: String, reason: String },
    #[error("looking up {name} at {upstream}: {reason}")]
    Upstream { name: String, upstream: SocketAddr, reason: String },
    #[error("{name} has no A or AAAA record at {upstream}")]
    NoAddress { name: String, upstream: SocketAddr },
}

/// An agent's running resolver; dropping it stops it (aborts its tasks, closes its sockets).
pub struct AgentResolver {
    port4: u16,
    port6: Option<u16>,
    // Dropping a JoinSet aborts its tasks; each server task owns its socket and its own
    // JoinSet of per-query tasks, so those go too.
    _tasks: JoinSet<()>,
}

impl AgentResolver {
    /// UDP and TCP on 127.0.0.1:port4 (same port number for both), and UDP+TCP on
    /// [::1]:port6 if IPv6 loopback exists (None otherwise).
    pub async fn start(
        cfg: Arc<ResolverConfig>,
        cgroup_id: u64,
        names: Vec<NamePattern>,
        sink: Arc<dyn LearnSink>,
    ) -> Result<AgentResolver, ResolverError> {
        let (udp4, tcp4, port4) = bind_pair(IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
        let pair6 = match bind_pair(IpAddr::V6(Ipv6Addr::LOCALHOST)).await {
            Ok(pair) => Some(pair),
            Err(ResolverError::Bind { source, .. }) if ipv6_unavailable(&source) => {
                debug!(cgroup_id, error = %source, "no IPv6 loopback: DNS forwarder on 127.0.0.1 only");
                None
            }
            Err(e) => return Err(e),
        };
        let agent = Arc::new(Agent { cfg, cgroup_id, names, sink });
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(agent.clone(), udp4));
        tasks.spawn(serve_tcp(agent.clone(), tcp4));
        let port6 = pair6.map(|(udp6, tcp6, port6)| {
            tasks.spawn(serve_udp(agent.clone(), udp6));
            tasks.spawn(serve_tcp(agent, tcp6));
            port6
        });
        Ok(AgentResolver { port4, port6, _tasks: tasks })
    }

    pub fn port4(&self) -> u16 {
        self.port4
    }

    pub fn port6(&self) -> Option<u16> {
        self.port6
    }
}

/// Binds UDP on an ephemeral port of `ip`, then TCP on the same port, retrying with a new
/// UDP port when another TCP socket already has that one.
async fn bind_pair(ip: IpAddr) -> Result<(UdpSocket, TcpListener, u16), ResolverError> {
    for _ in 0..BIND_TRIES {
        let addr = SocketAddr::new(ip, 0);
        let udp_err = |source| ResolverError::Bind { proto: "UDP", addr, source };
        let udp = UdpSocket::bind(addr).await.map_err(udp_err)?;
        let port = udp.local_addr().map_err(udp_err)?.port();
        let addr = SocketAddr::new(ip, port);
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp, port)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(source) => {
                return Err(ResolverError::Bind { proto: "TCP", addr, source });
            }
        }
    }
    Err(ResolverError::NoPort { ip, tries: BIND_TRIES })
}

/// ::1 missing (IPv6 disabled, or no address on lo) or no IPv6 in the kernel at all.
fn ipv6_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

struct Agent {
    cfg: Arc<ResolverConfig>,
    cgroup_id: u64,
    names: Vec<NamePattern>,
    sink: Arc<dyn LearnSink>,
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

impl Agent {
    /// The reply to one query, or None to send nothing (UDP) or hang up (TCP).
    async fn answer(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let cgroup_id = self.cgroup_id;
        // Too short to answer, or itself a response (replying to a response could loop).
        if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
            debug!(cgroup_id, len = query.len(), "dropping a DNS message that is not a query");
            return None;
        }
        let request = match Message::from_vec(query) {
            Ok(request) => request,
            Err(e) => {
                debug!(cgroup_id, error = %e, "malformed DNS query");
                return format_error(query);
            }
        };
        if request.metadata.op_code != OpCode::Query {
            debug!(cgroup_id, op_code = ?request.metadata.op_code, "DNS opcode not forwarded");
            return error_reply(&request, ResponseCode::NotImp);
        }
        let [question] = request.queries.as_slice() else {
            debug!(cgroup_id, questions = request.queries.len(), "DNS query without exactly one question");
            return error_reply(&request, ResponseCode::FormErr);
        };
        let ports = self.ports_for(question.name());
        if ports.is_empty() {
            debug!(cgroup_id, name = %question.name(), "refused: name not on the agent's list");
            return error_reply(&request, ResponseCode::Refused);
        }
        match exchange(self.cfg.upstream, transport, query, &request, self.cfg.timeout).await {
            Ok((bytes, reply)) => {
                for (ip, ttl) in addresses(&reply, question) {
                    let valid_for = self.cfg.valid_for(ttl);
                    for &port in &ports {
                        self.sink.learn(cgroup_id, ip, port, valid_for);
                    }
                }
                Some(bytes)
            }
            Err(e) => {
                debug!(cgroup_id, name = %question.name(), upstream = %self.cfg.upstream, error = %e,
                    "upstream DNS exchange failed: SERVFAIL");
                error_reply(&request, ResponseCode::ServFail)
            }
        }
    }

    fn ports_for(&self, name: &Name) -> Vec<u16> {
        ports_matching(&self.names, |p| p.matches_name(name))
    }
}

/// The ports of the patterns that match; just [0] if one of them allows any port.
fn ports_matching(names: &[NamePattern], matches: impl Fn(&NamePattern) -> bool) -> Vec<u16> {
    let mut ports = Vec::new();
    for pattern in names.iter().filter(|p| matches(p)) {
        if pattern.port == 0 {
            return vec![0];
        }
        if !ports.contains(&pattern.port) {
            ports.push(pattern.port);
        }
    }
    ports
}

/// Our own answer to `request`: its id, opcode, RD and CD, the question echoed, RA set.
fn error_reply(request: &Message, code: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    // RD and CD copied from the query, as RFC 6895 says.
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.queries = request.queries.clone();
    encode(&reply)
}

/// FORMERR to a query that did not parse, from what its header says.
fn format_error(query: &[u8]) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([query[0], query[1]]);
    let mut reply = Message::error_msg(id, OpCode::from_u8((query[2] >> 3) & 0x0f), ResponseCode::FormErr);
    reply.metadata.recursion_desired = query[2] & 0x01 != 0;
    reply.metadata.recursion_available = true;
    encode(&reply)
}

fn encode(reply: &Message) -> Option<Vec<u8>> {
    reply.to_vec().inspect_err(|e| warn!(error = %e, "cannot encode a DNS reply")).ok()
}

/// The A and AAAA records of `reply` that answer `question`'s name, directly or through a
/// CNAME chain from it, with their TTLs. Nothing if the reply does not echo the question.
fn addresses(reply: &Message, question: &Query) -> Vec<(IpAddr, u32)> {
    if !matches!(reply.queries.as_slice(), [q] if same_question(q, question)) {
        return Vec::new();
    }
    let mut chain: Vec<&Name> = vec![question.name()];
    while chain.len() < MAX_CHAIN {
        let next = reply.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if chain.contains(&&r.name) && !chain.contains(&&target.0) => {
                Some(&target.0)
            }
            _ => None,
        });
        match next {
            Some(target) => chain.push(target),
            None => break,
        }
    }
    reply
        .answers
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN && chain.contains(&&r.name))
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(aaaa) => Some((IpAddr::V6(aaaa.0), r.ttl)),
            _ => None,
        })
        .collect()
}

/// Names compare case-insensitively: resolvers may echo a 0x20-randomised name.
fn same_question(a: &Query, b: &Query) -> bool {
    a.name() == b.name() && a.query_type() == b.query_type() && a.query_class() == b.query_class()
}

/// Sends `query` (the bytes of `request`) to `upstream` and returns the first reply that
/// answers it, as received and parsed. A reply that does not parse is an error.
async fn exchange(
    upstream: SocketAddr,
    transport: Transport,
    query: &[u8],
    request: &Message,
    limit: Duration,
) -> Result<(Vec<u8>, Message), String> {
    let attempt = async {
        match transport {
            Transport::Udp => exchange_udp(upstream, query, request).await,
            Transport::Tcp => exchange_tcp(upstream, query, request).await,
        }
    };
    match timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer over {transport:?} within {limit:?}")),
    }
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &[u8],
    request: &Message,
) -> Result<(Vec<u8>, Message), String> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // A fresh socket per query, connected: a random source port, and the kernel drops
    // datagrams from anyone but the upstream.
    let sock = UdpSocket::bind(local).await.map_err(|e| format!("UDP socket: {e}"))?;
    sock.connect(upstream).await.map_err(|e| format!("UDP connect: {e}"))?;
    sock.send(query).await.map_err(|e| format!("UDP send: {e}"))?;
    let mut buf = vec![0u8; u16::MAX.into()];
    loop {
        let n = sock.recv(&mut buf).await.map_err(|e| format!("UDP receive: {e}"))?;
        let reply = parse_reply(&buf[..n])?;
        if answers(&reply, request) {
            buf.truncate(n);
            return Ok((buf, reply));
        }
        debug!(upstream = %upstream, "ignoring an upstream DNS reply to another query");
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &[u8],
    request: &Message,
) -> Result<(Vec<u8>, Message), String> {
    let mut stream = TcpStream::connect(upstream).await.map_err(|e| format!("TCP connect: {e}"))?;
    write_framed(&mut stream, query).await.map_err(|e| format!("TCP send: {e}"))?;
    let bytes = read_framed(&mut stream).await.map_err(|e| format!("TCP receive: {e}"))?;
    let reply = parse_reply(&bytes)?;
    if !answers(&reply, request) {
        return Err("the TCP reply answers another query".into());
    }
    Ok((bytes, reply))
}

fn parse_reply(bytes: &[u8]) -> Result<Message, String> {
    Message::from_vec(bytes).map_err(|e| format!("malformed reply: {e}"))
}

/// A response with the query's id, echoing its question (some servers echo none on errors;
/// nothing is learned from those).
fn answers(reply: &Message, request: &Message) -> bool {
    reply.metadata.message_type == hickory_proto::op::MessageType::Response
        && reply.metadata.id == request.metadata.id
        && match (reply.queries.as_slice(), request.queries.as_slice()) {
            ([], _) => true,
            ([a], [b]) => same_question(a, b),
            _ => false,
        }
}

/// One DNS message over TCP: a two-byte length, then the message.
async fn read_framed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut buf = vec![0u8; len.into()];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "DNS message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

async fn serve_udp(agent: Arc<Agent>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let in_flight = Arc::new(Semaphore::new(MAX_UDP_IN_FLIGHT));
    let mut queries = JoinSet::new();
    let mut buf = vec![0u8; u16::MAX.into()];
    loop {
        let (n, client) = match sock.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) => {
                debug!(cgroup_id = agent.cgroup_id, error = %e, "DNS forwarder UDP receive");
                // Whatever it was, do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while queries.try_join_next().is_some() {}
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            debug!(cgroup_id = agent.cgroup_id, "DNS query dropped: too many in flight");
            continue;
        };
        let query = buf[..n].to_vec();
        let (agent, sock) = (agent.clone(), sock.clone());
        queries.spawn(async move {
            let _permit = permit;
            if let Some(reply) = agent.answer(&query, Transport::Udp).await
                && let Err(e) = sock.send_to(&reply, client).await
            {
                debug!(cgroup_id = agent.cgroup_id, error = %e, %client, "DNS reply not sent");
            }
        });
    }
}

async fn serve_tcp(agent: Arc<Agent>, listener: TcpListener) {
    let open = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(cgroup_id = agent.cgroup_id, error = %e, "DNS forwarder TCP accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let Ok(permit) = open.clone().try_acquire_owned() else {
            debug!(cgroup_id = agent.cgroup_id, "DNS TCP connection closed: too many open");
            continue;
        };
        let agent = agent.clone();
        connections.spawn(async move {
            let _permit = permit;
            serve_tcp_connection(&agent, stream).await;
        });
    }
}

/// Queries one after another on one connection, until the client closes it, goes idle, or
/// sends something that gets no reply.
async fn serve_tcp_connection(agent: &Agent, mut stream: TcpStream) {
    loop {
        let query = match timeout(TCP_IDLE, read_framed(&mut stream)).await {
            Ok(Ok(query)) => query,
            Ok(Err(_)) | Err(_) => return,
        };
        let Some(reply) = agent.answer(&query, Transport::Tcp).await else {
            return;
        };
        if !matches!(timeout(TCP_IDLE, write_framed(&mut stream, &reply)).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// Spawn-time warm-up: asks upstream for A and AAAA of each non-wildcard name and returns what
/// was learned (also passing each to `sink`), so the agent's first connect does not depend on
/// its own lookup having happened. A name with no answer is an error naming it (the caller
/// decides whether to fall back to the system resolver, e.g. for /etc/hosts names).
///
/// Names are looked up in order and the first that fails ends the call; what was learned
/// before it has reached `sink`. Each address is learned for every pattern matching the
/// name (as the per-agent server does), so one name listed twice is asked once.
pub async fn resolve_now(
    cfg: &ResolverConfig,
    cgroup_id: u64,
    names: &[NamePattern],
    sink: &dyn LearnSink,
) -> Result<Vec<(IpAddr, u16, Duration)>, ResolverError> {
    let mut learned = Vec::new();
    let mut asked: Vec<&str> = Vec::new();
    for pattern in names.iter().filter(|p| !p.is_wildcard()) {
        let host = pattern.host.strip_suffix('.').unwrap_or(&pattern.host);
        if asked.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            continue;
        }
        asked.push(host);
        let name = Name::from_ascii(format!("{host}."))
            .map_err(|e| ResolverError::BadName { name: host.to_owned(), reason: e.to_string() })?;
        let (a, aaaa) = tokio::join!(lookup(cfg, &name, RecordType::A), lookup(cfg, &name, RecordType::AAAA));
        let mut found = Vec::new();
        let mut failure = None;
        for result in [a, aaaa] {
            match result {
                Ok(addrs) => found.extend(addrs),
                Err(reason) => {
                    failure.get_or_insert(reason);
                }
            }
        }
        if found.is_empty() {
            return Err(match failure {
                Some(reason) => {
                    ResolverError::Upstream { name: host.to_owned(), upstream: cfg.upstream, reason }
                }
                None => ResolverError::NoAddress { name: host.to_owned(), upstream: cfg.upstream },
            });
        }
        let ports = ports_matching(names, |p| p.matches_name(&name));
        for (ip, ttl) in found {
            let valid_for = cfg.valid_for(ttl);
            for &port in &ports {
                sink.learn(cgroup_id, ip, port, valid_for);
                learned.push((ip, port, valid_for));
            }
        }
    }
    Ok(learned)
}

/// One recursive lookup of our own: UDP, then TCP if the answer was truncated. NXDOMAIN and
/// an empty answer are no addresses, not failures.
async fn lookup(cfg: &ResolverConfig, name: &Name, rtype: RecordType) -> Result<Vec<(IpAddr, u32)>, String> {
    let question = Query::query(name.clone(), rtype);
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    request.set_edns(edns);
    let query = request.to_vec().map_err(|e| format!("cannot encode the {rtype} query: {e}"))?;
    let (_, mut reply) = exchange(cfg.upstream, Transport::Udp, &query, &request, cfg.timeout).await?;
    if reply.metadata.truncation {
        (_, reply) = exchange(cfg.upstream, Transport::Tcp, &query, &request, cfg.timeout).await?;
    }
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(addresses(&reply, &question)),
        code => Err(format!("{rtype} query answered {code}")),
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::Mutex;
    use std::time::Instant;

    use hickory_proto::op::MessageType;

    use super::*;

    const CG: u64 = 4242;

    /// Stands in for the kernel's per-agent allow map.
    #[derive(Default)]
    struct Learned(Mutex<Vec<(u64, IpAddr, u16, Duration)>>);

    impl LearnSink for Learned {
        fn learn(&self, cgroup_id: u64, ip: IpAddr, port: u16, valid_for: Duration) {
            self.0.lock().unwrap().push((cgroup_id, ip, port, valid_for));
        }
    }

    impl Learned {
        fn take(&self) -> Vec<(u64, IpAddr, u16, Duration)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// A real dnsmasq answering from a hosts file we own, killed on drop.
    struct Dnsmasq {
        child: Child,
        addr: SocketAddr,
        hosts: PathBuf,
        log: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Dnsmasq {
        fn start(hosts: &str, extra: &[&str]) -> Dnsmasq {
            let dir = tempfile::tempdir().unwrap();
            let hosts_path = dir.path().join("hosts");
            let log = dir.path().join("log");
            std::fs::write(&hosts_path, hosts).unwrap();
            for _ in 0..5 {
                let port = free_port();
                let addr = (Ipv4Addr::LOCALHOST, port).into();
                let mut child = Command::new("/usr/sbin/dnsmasq")
                    .arg("--no-daemon")
                    .arg(format!("--port={port}"))
                    .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
                    .args(["--no-resolv", "--no-hosts", "--local=/test/"])
                    .arg(format!("--addn-hosts={}", hosts_path.display()))
                    .args(["--local-ttl=2", "--log-queries"])
                    .arg(format!("--log-facility={}", log.display()))
                    // root: stay root, so the hosts file (0600) can be read again on SIGHUP.
                    .args(["--user=root", "--pid-file=", "-C", "/dev/null"])
                    .args(extra)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(File::create(dir.path().join("stderr")).unwrap())
                    .spawn()
                    .expect("running /usr/sbin/dnsmasq");
                if wait_ready(&mut child, addr) {
                    return Dnsmasq { child, addr, hosts: hosts_path, log, _dir: dir };
                }
                // It exited: someone else took the port between our probe and its bind.
            }
            panic!("dnsmasq did not start");
        }

        fn set_hosts(&self, hosts: &str) {
            std::fs::write(&self.hosts, hosts).unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGHUP,
            )
            .unwrap();
        }

        fn log(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }
    }

    /// Blocking: asks until dnsmasq answers; false if it exited (its port was taken).
    fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
        let sock = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            let _ = sock.send_to(&query(7, "ready.test.", RecordType::A), addr);
            let mut buf = [0u8; 512];
            if sock.recv(&mut buf).is_ok() {
                return true;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("dnsmasq on {addr} did not answer");
    }

    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        let udp = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        udp.local_addr().unwrap().port()
    }

    fn config(upstream: SocketAddr) -> Arc<ResolverConfig> {
        Arc::new(ResolverConfig {
            upstream,
            grace: Duration::from_secs(30),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(700),
        })
    }

    fn pattern(host: &str, port: u16) -> NamePattern {
        NamePattern { host: host.into(), port }
    }

    async fn start(upstream: SocketAddr, names: &[NamePattern]) -> (AgentResolver, Arc<Learned>, SocketAddr) {
        let sink = Arc::new(Learned::default());
        let resolver =
            AgentResolver::start(config(upstream), CG, names.to_vec(), sink.clone()).await.unwrap();
        let addr = (Ipv4Addr::LOCALHOST, resolver.port4()).into();
        (resolver, sink, addr)
    }

    fn query(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        m.set_edns(edns);
        m.to_vec().unwrap()
    }

    async fn ask_udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::LOCALHOST, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::LOCALHOST, 0).into(),
        };
        let sock = UdpSocket::bind(local).await.unwrap();
        sock.send_to(bytes, server).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let (n, _) = timeout(wait, sock.recv_from(&mut buf)).await.ok()?.unwrap();
        buf.truncate(n);
        Some(buf)
    }

    async fn ask_udp(server: SocketAddr, id: u16, name: &str, rtype: RecordType) -> Message {
        let bytes =
            ask_udp_raw(server, &query(id, name, rtype), Duration::from_secs(5)).await.expect("a reply");
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, id);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        reply
    }

    async fn ask_tcp_on(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<Vec<u8>> {
        write_framed(stream, bytes).await?;
        timeout(Duration::from_secs(5), read_framed(stream))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
    }

    fn ips(reply: &Message) -> Vec<IpAddr> {
        reply
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn assert_refused(reply: &Message, name: &str) {
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert!(reply.metadata.recursion_available);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries.len(), 1);
        assert_eq!(reply.queries[0].name(), &Name::from_ascii(name).unwrap());
    }

    const HOSTS: &str = "192.0.2.1 api.test\n2001:db8::1 api.test\n\
        192.0.2.7 a.example.test\n192.0.2.8 example.test\n192.0.2.9 b.a.example.test\n\
        192.0.2.66 other.test\n";

    #[tokio::test]
    async fn resolver_udp_learns_allowed_names_and_relays_the_answer() {
        let many: String = (10..50).map(|i| format!("192.0.2.{i} many.test\n")).collect();
        let dns = Dnsmasq::start(&format!("{HOSTS}{many}"), &["--host-record=long.test,192.0.2.50,7200"]);
        let names = [pattern("api.test", 443), pattern("long.test", 80), pattern("many.test", 0)];
        let (resolver, sink, addr) = start(dns.addr, &names).await;

        let reply = ask_udp(addr, 0x1234, "api.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(ips(&reply), [ip("192.0.2.1")]);
        // TTL 2 (dnsmasq --local-ttl) + 30 s grace.
        assert_eq!(sink.take(), [(CG, ip("192.0.2.1"), 443, secs(32))]);

        // A TTL over max_ttl (60 s) is cut to it.
        let reply = ask_udp(addr, 2, "LONG.test.", RecordType::A).await;
        assert_eq!(ips(&reply), [ip("192.0.2.50")]);
        assert_eq!(sink.take(), [(CG, ip("192.0.2.50"), 80, secs(90))]);

        // An answer over 512 bytes (the client offered 4096 with EDNS) comes back whole.
        let bytes = ask_udp_raw(addr, &query(3, "many.test.", RecordType::A), secs(5)).await.unwrap();
        assert!(bytes.len() > 512, "{} bytes", bytes.len());
        let reply = Message::from_vec(&bytes).unwrap();
        assert!(!reply.metadata.truncation);
        assert_eq!(ips(&reply).len(), 40);
        let learned = sink.take();
        assert_eq!(learned.len(), 40);
        assert!(learned.iter().all(|&(cg, _, port, _)| cg == CG && port == 0));

        // The same over IPv6 loopback, where there is one.
        if let Some(port6) = resolver.port6() {
            let addr6 = (Ipv6Addr::LOCALHOST, port6).into();
            let reply = ask_udp(addr6, 4, "api.test.", RecordType::AAAA).await;
            assert_eq!(ips(&reply), [ip("2001:db8::1")]);
            assert_eq!(sink.take(), [(CG, ip("2001:db8::1"), 443, secs(32))]);
        }

        // Dropping it closes its sockets.
        drop(resolver);
        let deadline = Instant::now() + secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still listening after drop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn resolver_refuses_unlisted_names_without_asking_upstream() {
        let dns = Dnsmasq::start(HOSTS, &[]);
        let (_resolver, sink, addr) = start(dns.addr, &[pattern("api.test", 443)]).await;

        let reply = ask_udp(addr, 77, "other.test.", RecordType::A).await;
        assert_refused(&reply, "other.test.");
        assert!(reply.metadata.recursion_desired);
        // The tunnelling shape: data in the labels of a name nobody listed.
        let reply = ask_udp(addr, 78, "c2VjcmV0.api.test.", RecordType::TXT).await;
        assert_refused(&reply, "c2VjcmV0.api.test.");
        assert!(sink.take().is_empty());

        // A listed name reaches dnsmasq's log, so the log is being written...
        ask_udp(addr, 79, "api.test.", RecordType::A).await;
        let deadline = Instant::now() + secs(5);
        while !dns.log().contains("query[A] api.test") {
            assert!(Instant::now() < deadline, "dnsmasq log: {}", dns.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ...and the refused ones never got there.
        assert!(!dns.log().contains("other.test"), "{}", dns.log());
        assert!(!dns.log().contains("c2VjcmV0"), "{}", dns.log());
    }

    #[tokio::test]
    async fn resolver_wildcard_learns_below_but_refuses_the_apex() {
        let dns = Dnsmasq::start(HOSTS, &[]);
        let (_resolver, sink, addr) = start(dns.addr, &[pattern("*.example.test", 443)]).await;

        let reply = ask_udp(addr, 1, "a.example.test.", RecordType::A).await;
        assert_eq!(ips(&reply), [ip("192.0.2.7")]);
        assert_eq!(sink.take(), [(CG, ip("192.0.2.7"), 443, secs(32))]);

        let reply = ask_udp(addr, 2, "b.a.example.test.", RecordType::A).await;
        assert_eq!(ips(&reply), [ip("192.0.2.9")]);
        assert_eq!(sink.take(), [(CG, ip("192.0.2.9"), 443, secs(32))]);

        let reply = ask_udp(addr, 3, "example.test.", RecordType::A).await;
        assert_refused(&reply, "example.test.");
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn resolver_tcp_answers_several_queries_per_connection() {
        let dns = Dnsmasq::start(HOSTS, &[]);
        let (_resolver, sink, addr) = start(dns.addr, &[pattern("api.test", 443)]).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();

        let bytes = ask_tcp_on(&mut stream, &query(11, "api.test.", RecordType::A)).await.unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, 11);
        assert_eq!(ips(&reply), [ip("192.0.2.1")]);
        assert_eq!(sink.take(), [(CG, ip("192.0.2.1"), 443, secs(32))]);

        let bytes = ask_tcp_on(&mut stream, &query(12, "other.test.", RecordType::A)).await.unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, 12);
        assert_refused(&reply, "other.test.");
        assert!(sink.take().is_empty());

        let bytes = ask_tcp_on(&mut stream, &query(13, "api.test.", RecordType::AAAA)).await.unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, 13);
        assert_eq!(ips(&reply), [ip("2001:db8::1")]);
        assert_eq!(sink.take(), [(CG, ip("2001:db8::1"), 443, secs(32))]);
    }

    #[tokio::test]
    async fn resolver_follows_cnames_with_the_question_names_port() {
        let dns = Dnsmasq::start(HOSTS, &["--cname=alias.test,api.test"]);
        let names = [pattern("alias.test", 8443), pattern("api.test", 80)];
        let (_resolver, sink, addr) = start(dns.addr, &names).await;

        let reply = ask_udp(addr, 21, "alias.test.", RecordType::A).await;
        assert!(reply.answers.iter().any(|r| matches!(r.data, RData::CNAME(_))));
        assert_eq!(ips(&reply), [ip("192.0.2.1")]);
        // Learned for alias.test's pattern only: api.test's port comes with asking for api.test.
        let learned = sink.take();
        assert_eq!(learned.len(), 1, "{learned:?}");
        assert_eq!(learned[0].1, ip("192.0.2.1"));
        assert_eq!(learned[0].2, 8443);
    }

    #[tokio::test]
    async fn resolver_learns_the_new_address_after_the_name_moves() {
        let dns = Dnsmasq::start(HOSTS, &[]);
        let (_resolver, sink, addr) = start(dns.addr, &[pattern("api.test", 443)]).await;

        let reply = ask_udp(addr, 31, "api.test.", RecordType::A).await;
        assert_eq!(ips(&reply), [ip("192.0.2.1")]);
        assert_eq!(sink.take(), [(CG, ip("192.0.2.1"), 443, secs(32))]);

        dns.set_hosts("192.0.2.2 api.test\n");
        let deadline = Instant::now() + secs(10);
        loop {
            let reply = ask_udp(addr, 32, "api.test.", RecordType::A).await;
            if ips(&reply) == [ip("192.0.2.2")] {
                break;
            }
            assert!(Instant::now() < deadline, "dnsmasq still answers {reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let learned = sink.take();
        assert_eq!(learned.last(), Some(&(CG, ip("192.0.2.2"), 443, secs(32))), "{learned:?}");
    }

    #[tokio::test]
    async fn resolver_survives_malformed_queries() {
        let dns = Dnsmasq::start(HOSTS, &[]);
        let (_resolver, sink, addr) = start(dns.addr, &[pattern("api.test", 443)]).await;
        let short = Duration::from_millis(300);

        // Shorter than a header: nothing to answer.
        assert_eq!(ask_udp_raw(addr, b"hello", short).await, None);
        // A header promising a question that is not there: FORMERR with its id.
        let mut truncated = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        let reply = ask_udp_raw(addr, &truncated, secs(5)).await.unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.id, 0xabcd);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        // Random-looking junk.
        truncated.extend((0..200u16).map(|i| (i * 37 % 251) as u8));
        let _ = ask_udp_raw(addr, &truncated, short).await;
        // A response sent to us is not answered.
        let mut response = query(5, "api.test.", RecordType::A);
        response[2] |= 0x80;
        assert_eq!(ask_udp_raw(addr, &response, short).await, None);

        // Two questions, even both listed: FORMERR.
        let mut two = Message::new(41, MessageType::Query, OpCode::Query);
        two.add_query(Query::query(Name::from_ascii("api.test.").unwrap(), RecordType::A));
        two.add_query(Query::query(Name::from_ascii("api.test.").unwrap(), RecordType::AAAA));
        let bytes = ask_udp_raw(addr, &two.to_vec().unwrap(), secs(5)).await.unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, 41);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);

        // Over TCP: junk gets FORMERR or the connection closed, never a crash.
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if let Ok(bytes) = ask_tcp_on(&mut stream, b"\x00\x01\x02").await {
            panic!("an answer to 3 bytes: {bytes:?}");
        }
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let bytes = ask_tcp_on(&mut stream, &two.to_vec().unwrap()).await.unwrap();
        assert_eq!(Message::from_vec(&bytes).unwrap().metadata.response_code, ResponseCode::FormErr);
        assert!(sink.take().is_empty());

        // Still serving, on both.
        let reply = ask_udp(addr, 42, "api.test.", RecordType::A).await;
        assert_eq!(ips(&reply), [ip("192.0.2.1")]);
        let bytes = ask_tcp_on(&mut stream, &query(43, "api.test.", RecordType::A)).await.unwrap();
        assert_eq!(ips(&Message::from_vec(&bytes).unwrap()), [ip("192.0.2.1")]);
        assert_eq!(sink.take().len(), 2);
    }

    #[tokio::test]
    async fn resolver_answers_servfail_when_upstream_is_down() {
        let names = [pattern("api.test", 443)];
        // Closed: refused at once.
        let closed = (Ipv4Addr::LOCALHOST, free_port()).into();
        let (_resolver, sink, addr) = start(closed, &names).await;
        let started = Instant::now();
        let reply = ask_udp(addr, 51, "api.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.queries.len(), 1);
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let bytes = ask_tcp_on(&mut stream, &query(52, "api.test.", RecordType::A)).await.unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, 52);
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert!(started.elapsed() < secs(3));

        // Silent: SERVFAIL once the timeout (700 ms) has passed.
        let silent = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let (_resolver, _, addr) = start(silent.local_addr().unwrap(), &names).await;
        let started = Instant::now();
        let reply = ask_udp(addr, 53, "api.test.", RecordType::A).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(650) && took < secs(3), "{took:?}");
        assert!(sink.take().is_empty());
    }

    #[tokio::test]
    async fn resolve_now_learns_each_plain_name_and_names_the_missing_one() {
        let dns = Dnsmasq::start(HOSTS, &[]);
        let cfg = config(dns.addr);
        let sink = Learned::default();
        let names = [
            pattern("api.test", 443),
            pattern("API.test", 443),
            pattern("*.test", 80),
            pattern("a.example.test", 0),
        ];
        let mut learned = resolve_now(&cfg, CG, &names, &sink).await.unwrap();
        learned.sort();
        let mut want = vec![
            (ip("192.0.2.1"), 443, secs(32)),
            (ip("192.0.2.1"), 80, secs(32)),
            (ip("2001:db8::1"), 443, secs(32)),
            (ip("2001:db8::1"), 80, secs(32)),
            (ip("192.0.2.7"), 0, secs(32)),
        ];
        want.sort();
        assert_eq!(learned, want);
        let mut passed: Vec<_> = sink
            .take()
            .into_iter()
            .map(|(cg, ip, port, valid_for)| {
                assert_eq!(cg, CG);
                (ip, port, valid_for)
            })
            .collect();
        passed.sort();
        assert_eq!(passed, want);

        let names = [pattern("api.test", 443), pattern("missing.test", 443)];
        let err = resolve_now(&cfg, CG, &names, &sink).await.unwrap_err();
        assert!(matches!(&err, ResolverError::NoAddress { name, .. } if name == "missing.test"), "{err:?}");
        assert!(err.to_string().contains("missing.test"), "{err}");

        let down = config((Ipv4Addr::LOCALHOST, free_port()).into());
        let err = resolve_now(&down, CG, &[pattern("api.test", 443)], &sink).await.unwrap_err();
        assert!(matches!(&err, ResolverError::Upstream { name, .. } if name == "api.test"), "{err:?}");
    }

    #[test]
    fn name_pattern_matching() {
        let exact = pattern("api.example.com", 443);
        assert!(exact.matches("api.example.com"));
        assert!(exact.matches("API.Example.COM."));
        assert!(!exact.matches("api.example.com.."));
        assert!(!exact.matches("x.api.example.com"));
        assert!(!exact.matches("example.com"));
        assert!(!exact.matches("api.example.co"));
        assert!(!exact.matches("xapi.example.com"));
        assert!(!exact.matches(""));

        let wild = pattern("*.example.com", 0);
        assert!(wild.matches("a.example.com"));
        assert!(wild.matches("A.B.example.com."));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("example.com."));
        assert!(!wild.matches("aexample.com"));
        assert!(!wild.matches("a.example.org"));

        // Wire names compare by label: "x.example" as one label is not below example.com.
        let mut tricky = Name::from_labels(vec![&b"x.example"[..], b"com"]).unwrap();
        tricky.set_fqdn(true);
        assert!(!wild.matches_name(&tricky));
        assert!(!exact.matches_name(&tricky));
        assert!(wild.matches_name(&Name::from_ascii("q.Example.com.").unwrap()));
    }

    #[test]
    fn resolv_conf_first_nameserver() {
        let v4 = "# generated\nsearch example.com\nnameserver 192.0.2.53 # first\nnameserver 192.0.2.54\n";
        assert_eq!(ResolverConfig::upstream_from_resolv_conf(v4), Some("192.0.2.53:53".parse().unwrap()));
        assert_eq!(
            ResolverConfig::upstream_from_resolv_conf("  nameserver\t2001:db8::53\n"),
            Some("[2001:db8::53]:53".parse().unwrap())
        );
        assert_eq!(
            ResolverConfig::upstream_from_resolv_conf(
                "; nameserver 192.0.2.99\nnameserver fe80::1%eth0\nnameserver 127.0.0.53\n"
            ),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            ResolverConfig::upstream_from_resolv_conf("nameserver fe80::1%2\n"),
            Some("[fe80::1%2]:53".parse().unwrap())
        );
        assert_eq!(
            ResolverConfig::upstream_from_resolv_conf("nameserver bogus\nnameservers 192.0.2.1\n"),
            None
        );
        assert_eq!(ResolverConfig::upstream_from_resolv_conf(""), None);
        assert_eq!(ResolverConfig::upstream_from_resolv_conf("search x\noptions ndots:2\n"), None);
    }
}
