//! Host names in agents' `--net` allow lists, kept true: an agent whose list names hosts
//! gets its own resolver in the daemon (`services::resolver`); the kernel sends the
//! agent's DNS (any server, port 53) there, and the addresses its answers give for listed
//! names are allowed for their TTL (plus a grace). At spawn each plain name is asked once,
//! so the agent's first connect does not depend on its own lookup; a name the DNS does
//! not know but the system resolver does (/etc/hosts) is allowed as resolved then.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rush_proto::{NetEndpoint, NetPolicy};

use super::{AgentError, AgentManager};
use crate::adapters::bpf::KernelPolicy;
use crate::core::{Fault, boot_time_ns, error_chain};
use crate::services::resolver::{AgentResolver, LearnSink, NamePattern, resolve_now};

/// Writes learned addresses into the kernel's per-agent map.
struct KernelLearn(Arc<dyn KernelPolicy>);

/// Whether a DNS answer may open `ip`. Not loopback, link-local, unspecified, multicast
/// or broadcast: whoever controls a listed name's DNS could otherwise point it at this
/// machine's own services (DNS rebinding) or the cloud metadata endpoint
/// (169.254.169.254). Such addresses are allowed only by IP in `--net`.
pub(super) fn learnable(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local())
        }
    }
}

impl LearnSink for KernelLearn {
    fn learn(&self, cgroup_id: u64, ip: IpAddr, port: u16, valid_for: Duration) {
        if !learnable(ip) {
            tracing::warn!(cgroup_id, %ip, "a DNS answer for a listed name gave a loopback or link-local address: not allowed (list it by IP)");
            return;
        }
        let until = boot_time_ns().saturating_add(u64::try_from(valid_for.as_nanos()).unwrap_or(u64::MAX));
        if let Err(e) = self.0.learn_address(cgroup_id, ip, port, until) {
            tracing::error!(cgroup_id, %ip, port, error = %error_chain(&e), "learned address not allowed");
        }
    }
}

/// The names of a `--net` list (entries that are not IP literals), as resolver patterns.
pub(super) fn names_of(net: &NetPolicy) -> Vec<NamePattern> {
    let NetPolicy::AllowList(eps) = net else { return Vec::new() };
    eps.iter()
        .filter(|ep| is_name(ep))
        .map(|ep| NamePattern { host: ep.host.trim_end_matches('.').to_ascii_lowercase(), port: ep.port })
        .collect()
}

pub(super) fn is_name(ep: &NetEndpoint) -> bool {
    ep.prefix.is_none() && ep.host.parse::<IpAddr>().is_err()
}

impl AgentManager {
    /// Starts agent `name`'s resolver and points its DNS at it; with `warm`, asks for each
    /// plain name first (a spawn; an adopted agent's addresses are still in the kernel).
    /// Fails (and the spawn with it) if a name resolves nowhere.
    pub(super) async fn start_resolver(
        &self,
        name: &str,
        cgroup_id: u64,
        names: Vec<NamePattern>,
        warm: bool,
    ) -> Result<AgentResolver, AgentError> {
        let Some(cfg) = self.dns.clone() else {
            return Err(AgentError::new(
                Fault::Unsupported,
                "host names in --net need the daemon's DNS resolver, and it has none: no [dns] upstream \
                 and no nameserver in /etc/resolv.conf",
            ));
        };
        let sink: Arc<dyn LearnSink> = Arc::new(KernelLearn(Arc::clone(&self.kernel)));
        let resolver = AgentResolver::start(Arc::clone(&cfg), cgroup_id, names.clone(), Arc::clone(&sink))
            .await
            .map_err(|e| AgentError::new(Fault::Internal, format!("agent {name}'s DNS resolver: {e}")))?;
        let ports = (resolver.port4(), resolver.port6().unwrap_or(0));
        self.kernel.set_dns_resolver(cgroup_id, Some(ports)).map_err(|e| {
            AgentError::new(Fault::Internal, format!("agent {name}'s DNS redirect: {}", error_chain(&e)))
        })?;
        if !warm {
            return Ok(resolver);
        }
        for pattern in names.iter().filter(|p| !p.host.starts_with("*.")) {
            let one = std::slice::from_ref(pattern);
            let dns = match resolve_now(&cfg, cgroup_id, one, &*sink).await {
                Ok(learned) if !learned.is_empty() => continue,
                Ok(_) => "no addresses".to_owned(),
                Err(e) => e.to_string(),
            };
            // Not in the DNS: the system resolver (/etc/hosts), as resolved now.
            let found: Vec<IpAddr> = tokio::net::lookup_host((pattern.host.as_str(), pattern.port))
                .await
                .map(|addrs| addrs.map(|a| a.ip()).collect())
                .unwrap_or_default();
            if found.is_empty() {
                return Err(AgentError::new(
                    Fault::Invalid,
                    format!(
                        "--net {}:{}: cannot resolve {:?}: {dns}",
                        pattern.host,
                        port_text(pattern.port),
                        pattern.host
                    ),
                ));
            }
            for ip in found {
                self.kernel.learn_address(cgroup_id, ip, pattern.port, u64::MAX).map_err(|e| {
                    AgentError::new(Fault::Internal, format!("--net {}: {}", pattern.host, error_chain(&e)))
                })?;
            }
        }
        Ok(resolver)
    }

    /// A re-adopted agent's resolver again (the old daemon's went with it); until it is
    /// up, the agent's DNS finds nothing listening.
    pub(super) fn restart_resolver(self: &Arc<Self>, name: String, cgroup_id: u64, net: &NetPolicy) {
        let names = names_of(net);
        if names.is_empty() {
            return;
        }
        let mgr = Arc::clone(self);
        tokio::spawn(async move {
            match mgr.start_resolver(&name, cgroup_id, names, false).await {
                Ok(r) => match mgr.registry().agents.get_mut(&name) {
                    Some(a) if a.cgroup.id == cgroup_id => a.resolver = Some(r),
                    _ => {}
                },
                Err(e) => {
                    tracing::error!(agent = %name, error = %e.message, "no DNS resolver: its host names resolve to nothing")
                }
            }
        });
    }
}

fn port_text(port: u16) -> String {
    if port == 0 { "*".into() } else { port.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_cannot_open_this_machine_or_the_metadata_endpoint() {
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!learnable(bad.parse().unwrap()), "{bad}");
        }
        for good in ["198.18.0.2", "10.1.2.3", "140.82.112.3", "2606:4700::1", "::ffff:8.8.8.8"] {
            assert!(learnable(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn names_are_the_entries_that_are_not_addresses() {
        let net: NetPolicy =
            "127.0.0.1:80,Api.Example.com:443,*.cdn.example.com:*,10.0.0.0/8:22".parse().unwrap();
        assert_eq!(
            names_of(&net),
            vec![
                NamePattern { host: "api.example.com".into(), port: 443 },
                NamePattern { host: "*.cdn.example.com".into(), port: 0 },
            ]
        );
        assert!(names_of(&NetPolicy::Allow).is_empty());
    }
}
