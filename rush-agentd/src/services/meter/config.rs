//! `[meter]` of the daemon's config: where each provider's calls go and what they cost.
//!
//! One meter per agent serves every route: a call to `http://127.0.0.1:PORT/anthropic/v1/messages`
//! goes to the `anthropic` route's upstream as `/v1/messages`; calls no named route's path
//! covers go to the default route (`[meter] upstream`), when there is one. The agent's
//! environment points each SDK at its route (`ANTHROPIC_BASE_URL=http://127.0.0.1:PORT/anthropic`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Deserialize;

use super::MeterError;
use super::usage::Prices;

/// The variables the default route sets when no named route claims them.
pub const DEFAULT_ROUTE_ENV: [&str; 2] = ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"];

/// Always set to the meter's root URL.
pub const METER_URL_ENV: &str = "RUSH_METER_URL";

/// `[meter]` of the daemon's config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeterConfig {
    /// The default route's upstream.
    pub upstream: Option<Upstream>,
    /// The default route's prices, and the prices of named routes that give none.
    pub prices: Prices,
    /// Named routes: `[meter.routes.NAME]`.
    pub routes: BTreeMap<String, RouteConfig>,
    /// PEM certificates trusted for upstreams besides the system's roots (a test CA, a
    /// corporate proxy's).
    pub ca_file: Option<PathBuf>,
    pub connect_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub include_stream_usage: bool,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            upstream: None,
            prices: Prices::default(),
            routes: BTreeMap::new(),
            ca_file: None,
            connect_timeout_secs: 10,
            idle_timeout_secs: 600,
            include_stream_usage: true,
        }
    }
}

/// `[meter.routes.NAME]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub upstream: Upstream,
    /// The path prefix on the meter's port; default `/NAME`.
    #[serde(default)]
    pub path: Option<String>,
    /// Variables set to this route's URL in the agent's environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// This route's prices; default `[meter.prices]`.
    #[serde(default)]
    pub prices: Prices,
}

/// A route, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// `default` for `[meter] upstream`.
    pub name: String,
    /// Empty for the default route, else `/SEGMENT[/...]` without a trailing slash.
    pub path: String,
    pub upstream: Upstream,
    pub prices: Prices,
    pub env: Vec<String>,
}

impl Route {
    /// The path (and query) upstream when this route covers `path`: on a segment boundary.
    pub fn strip(&self, path: &str) -> Option<String> {
        if self.path.is_empty() {
            return Some(path.to_owned());
        }
        let rest = path.strip_prefix(self.path.as_str())?;
        match rest.as_bytes().first() {
            None => Some("/".into()),
            Some(b'/') => Some(rest.into()),
            Some(b'?') => Some(format!("/{rest}")),
            Some(_) => None,
        }
    }
}

fn env_name_ok(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_uppercase() || c == b'_')
        && b.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
}

impl MeterConfig {
    /// Whether a meter can run: at least one route, each with prices, and a readable
    /// `ca_file`.
    pub fn check(&self) -> Result<(), MeterError> {
        self.routes()?;
        super::proxy::upstream_client(self).map(|_| ())
    }

    /// The routes, longest path first (the default route, path "", last).
    pub fn routes(&self) -> Result<Vec<Route>, MeterError> {
        let bad = |route: &str, why: String| MeterError::Route { route: route.to_owned(), why };
        let mut out = Vec::new();
        let mut claimed = BTreeSet::new();
        for (name, r) in &self.routes {
            if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)) {
                return Err(bad(name, "a route name is letters, digits, '-', '_' and '.'".into()));
            }
            let path = r.path.clone().unwrap_or_else(|| format!("/{name}"));
            let path = path.trim_end_matches('/').to_owned();
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) || path.contains("//") {
                return Err(bad(name, format!("path {path:?} must be /SEGMENT[/...] (no query, no spaces)")));
            }
            if let Some(other) = out.iter().find(|o: &&Route| o.path == path) {
                return Err(bad(name, format!("path {path} is route {}'s too", other.name)));
            }
            for var in &r.env {
                if !env_name_ok(var) {
                    return Err(bad(name, format!("env {var:?} is not a variable name (A-Z, 0-9, _)")));
                }
                if var == METER_URL_ENV || !claimed.insert(var.clone()) {
                    return Err(bad(name, format!("env {var} is set by another route or by the meter")));
                }
            }
            let prices = if r.prices.is_empty() { self.prices.clone() } else { r.prices.clone() };
            if prices.is_empty() {
                return Err(bad(name, "no prices: give [meter.routes.NAME.prices] or [meter.prices]".into()));
            }
            out.push(Route {
                name: name.clone(),
                path,
                upstream: r.upstream.clone(),
                prices,
                env: r.env.clone(),
            });
        }
        if let Some(up) = &self.upstream {
            if self.prices.is_empty() {
                return Err(MeterError::NoPrices);
            }
            let env =
                DEFAULT_ROUTE_ENV.iter().filter(|v| !claimed.contains(**v)).map(|v| v.to_string()).collect();
            out.push(Route {
                name: "default".into(),
                path: String::new(),
                upstream: up.clone(),
                prices: self.prices.clone(),
                env,
            });
        }
        if out.is_empty() {
            return Err(MeterError::NoUpstream);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
        Ok(out)
    }

    /// Every upstream a route forwards to.
    pub fn upstreams(&self) -> Vec<Upstream> {
        self.upstream.iter().cloned().chain(self.routes.values().map(|r| r.upstream.clone())).collect()
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// `http[s]://HOST[:PORT][/PREFIX]`: where calls go; PREFIX is put before each call's path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Upstream {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Empty, or starts with `/` and does not end with one.
    pub prefix: String,
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(s: &str) -> Result<Upstream, String> {
        let bad = |why: &str| Err(format!("meter upstream {s:?}: {why}"));
        let (scheme, rest) = if let Some(r) = s.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return bad("must be http[s]://HOST[:PORT][/PREFIX]");
        };
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return bad("credentials do not belong in the URL");
        }
        if prefix.contains(['?', '#']) {
            return bad("a query or fragment cannot be a path prefix");
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => match port.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return bad("bad IPv6 authority"),
                },
                None => return bad("bad IPv6 authority"),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = match port.map(str::parse::<u16>) {
            None => scheme.default_port(),
            Some(Ok(p)) if p > 0 => p,
            Some(_) => return bad("bad port"),
        };
        if host.is_empty() {
            return bad("no host");
        }
        if host.contains(|c: char| c.is_whitespace() || c == '%') {
            return bad("bad host");
        }
        Ok(Upstream { scheme, host: host.to_owned(), port, prefix: prefix.trim_end_matches('/').to_owned() })
    }
}

impl TryFrom<String> for Upstream {
    type Error = String;

    fn try_from(s: String) -> Result<Upstream, String> {
        s.parse()
    }
}

impl Upstream {
    /// HOST[:PORT], the port left out when it is the scheme's.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        if self.port == self.scheme.default_port() { host } else { format!("{host}:{}", self.port) }
    }

    /// The URL a call to `path` (with its query) goes to.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}{path}", self.scheme.as_str(), self.authority(), self.prefix)
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}{}", self.scheme.as_str(), self.authority(), self.prefix)
    }
}
