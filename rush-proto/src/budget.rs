//! `--budget cpu:1h,mem:2G,pids:256,net:1G,api:500,cost:$5,cpu-rate:50%`: what an agent may
//! consume, and how much of it it has used.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, parse_duration};
use crate::wire::wire_enum;

/// Limits on what an agent may consume; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Cumulative CPU time (all the agent's processes, all cores), in milliseconds. At the
    /// limit the agent is frozen until the operator raises it (`rush agent resume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// CPU bandwidth as a percentage of one core (150 = one and a half cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_rate_pct: Option<u32>,
    /// Memory, in bytes: above it the kernel reclaims, then OOM-kills inside the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_bytes: Option<u64>,
    /// Processes and threads at once: fork and clone fail with EAGAIN beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Network bytes sent plus received; at the limit packets are dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_bytes: Option<u64>,
    /// Model API calls (connects to the configured API endpoints); beyond it connect fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_calls: Option<u64>,
    /// Model API spend in micro-dollars, charged from the usage the API reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_micro_usd: Option<u64>,
}

/// The keys of a budget string, in display order (the spellings of [`BudgetResource`]).
pub const BUDGET_KEYS: [&str; 7] = ["cpu", "cpu-rate", "mem", "pids", "net", "api", "cost"];

wire_enum! {
    /// One budgeted resource, as `--budget` names it.
    pub enum BudgetResource as "BudgetUsage.resource / budget_exceeded.resource / api_refused.resource" {
        /// Cumulative CPU time.
        Cpu = "cpu",
        /// CPU bandwidth (a ceiling, never used up).
        CpuRate = "cpu-rate",
        Mem = "mem",
        Pids = "pids",
        /// Network bytes sent plus received.
        Net = "net",
        /// Model API calls.
        Api = "api",
        /// Model API spend.
        Cost = "cost",
    }
}

impl Budget {
    pub fn is_empty(&self) -> bool {
        *self == Budget::default()
    }

    /// `self` with every limit that `over` sets replaced by `over`'s.
    pub fn overridden_by(&self, over: &Budget) -> Budget {
        Budget {
            cpu_ms: over.cpu_ms.or(self.cpu_ms),
            cpu_rate_pct: over.cpu_rate_pct.or(self.cpu_rate_pct),
            mem_bytes: over.mem_bytes.or(self.mem_bytes),
            pids: over.pids.or(self.pids),
            net_bytes: over.net_bytes.or(self.net_bytes),
            api_calls: over.api_calls.or(self.api_calls),
            cost_micro_usd: over.cost_micro_usd.or(self.cost_micro_usd),
        }
    }
}

impl FromStr for Budget {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        let err =
            |part: &str, why: String| SpecError::Budget { input: s.to_owned(), part: part.to_owned(), why };
        let mut b = Budget::default();
        if s.trim().is_empty() {
            return Err(err("", "empty".into()));
        }
        let mut seen = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            let Some((key, value)) = part.split_once(':') else {
                return Err(err(part, "expected KEY:VALUE".into()));
            };
            if seen.contains(&key) {
                return Err(err(part, format!("{key:?} is given twice")));
            }
            seen.push(key);
            let bad = |why: String| err(part, why);
            match key {
                "cpu" => b.cpu_ms = Some(parse_cpu_time(value).map_err(bad)?),
                "cpu-rate" => b.cpu_rate_pct = Some(parse_percent(value).map_err(bad)?),
                "mem" => b.mem_bytes = Some(parse_size(value).map_err(bad)?),
                "pids" => b.pids = Some(parse_count(value, 1).map_err(bad)?),
                "net" => b.net_bytes = Some(parse_size(value).map_err(bad)?),
                "api" => b.api_calls = Some(parse_count(value, 0).map_err(bad)?),
                "cost" => b.cost_micro_usd = Some(parse_usd(value).map_err(bad)?),
                _ => {
                    return Err(bad(format!("unknown resource {key:?} (known: {})", BUDGET_KEYS.join(", "))));
                }
            }
        }
        Ok(b)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = self.cpu_ms {
            parts.push(format!("cpu:{}", format_cpu_ms(v)));
        }
        if let Some(v) = self.cpu_rate_pct {
            parts.push(format!("cpu-rate:{v}%"));
        }
        if let Some(v) = self.mem_bytes {
            parts.push(format!("mem:{}", format_size(v)));
        }
        if let Some(v) = self.pids {
            parts.push(format!("pids:{v}"));
        }
        if let Some(v) = self.net_bytes {
            parts.push(format!("net:{}", format_size(v)));
        }
        if let Some(v) = self.api_calls {
            parts.push(format!("api:{v}"));
        }
        if let Some(v) = self.cost_micro_usd {
            parts.push(format!("cost:{}", format_usd(v)));
        }
        f.write_str(&parts.join(","))
    }
}

/// `2s`, `500ms`, `1h30m`: a duration as milliseconds.
fn parse_cpu_time(v: &str) -> Result<u64, String> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse::<u64>().map_err(|_| format!("{v:?} is not a duration")).and_then(nonzero);
    }
    parse_duration(v).map(|d| d.as_millis() as u64).map_err(|e| e.to_string()).and_then(nonzero)
}

fn nonzero(v: u64) -> Result<u64, String> {
    if v == 0 { Err("must be more than zero".into()) } else { Ok(v) }
}

fn parse_percent(v: &str) -> Result<u32, String> {
    let n = v.strip_suffix('%').ok_or_else(|| format!("{v:?} lacks a '%' (e.g. 50%)"))?;
    match n.parse::<u32>() {
        Ok(p) if (1..=100_000).contains(&p) => Ok(p),
        _ => Err(format!("{v:?} is not a percentage from 1% to 100000%")),
    }
}

fn parse_count(v: &str, min: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!("{v:?} is not a whole number of at least {min}")),
    }
}

/// `512M`, `2G`, `1.5G`, `100K`, `4096`: bytes, with binary (1024) multiples.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let bad = || format!("{v:?} is not a size (e.g. 4096, 512K, 512M, 2G, 1T)");
    let body = v.strip_suffix("iB").or_else(|| v.strip_suffix('B')).unwrap_or(v);
    let (num, mult) = match body.chars().last() {
        Some(c @ ('K' | 'k' | 'M' | 'm' | 'G' | 'g' | 'T' | 't')) => {
            let exp = "KMGT".find(c.to_ascii_uppercase()).unwrap_or(0) as u32 + 1;
            (&body[..body.len() - 1], 1024u64.pow(exp))
        }
        _ => (body, 1),
    };
    let bytes = parse_decimal(num, mult).ok_or_else(bad)?;
    nonzero(bytes)
}

/// `$5`, `5`, `$0.01`, `0.5$`: dollars as micro-dollars (6 decimal places at most).
pub fn parse_usd(v: &str) -> Result<u64, String> {
    let body = v.strip_prefix('$').or_else(|| v.strip_suffix('$')).unwrap_or(v);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if frac.len() > 6 {
        return Err(format!("{v:?} has more than 6 decimal places"));
    }
    parse_decimal(body, 1_000_000)
        .filter(|_| !int.is_empty() || !frac.is_empty())
        .ok_or_else(|| format!("{v:?} is not an amount in dollars (e.g. $5, $0.50)"))
        .and_then(nonzero)
}

/// `num` (digits, optionally one '.') times `mult`, rounded down; None if malformed or too large.
fn parse_decimal(num: &str, mult: u64) -> Option<u64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || !(int.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac = &frac[..frac.len().min(18)];
    let frac_part = if frac.is_empty() {
        0
    } else {
        let digits: u128 = frac.parse().ok()?;
        (digits * u128::from(mult) / 10u128.pow(frac.len() as u32)) as u64
    };
    int.checked_mul(mult)?.checked_add(frac_part)
}

pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    let mut unit = "";
    let mut div = 1u64;
    for (i, u) in UNITS.iter().enumerate() {
        let d = 1024u64.pow(i as u32 + 1);
        if bytes >= d {
            unit = u;
            div = d;
        }
    }
    if div == 1 {
        return bytes.to_string();
    }
    let whole = bytes / div;
    let tenths = (bytes % div) * 10 / div;
    if tenths == 0 { format!("{whole}{unit}") } else { format!("{whole}.{tenths}{unit}") }
}

pub fn format_usd(micro: u64) -> String {
    let cents_exact = micro.is_multiple_of(10_000);
    if cents_exact {
        format!("${}.{:02}", micro / 1_000_000, (micro % 1_000_000) / 10_000)
    } else {
        let s = format!("${}.{:06}", micro / 1_000_000, micro % 1_000_000);
        s.trim_end_matches('0').to_owned()
    }
}

pub fn format_cpu_ms(ms: u64) -> String {
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if sec > 0 || out.is_empty() {
        out += &format!("{sec}s");
    }
    out
}

/// One budgeted resource of a running agent, as `rush agent status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetUsage {
    pub resource: BudgetResource,
    pub unit: BudgetUnit,
    pub used: u64,
    /// None = no limit set (usage is still shown where the kernel counts it).
    pub limit: Option<u64>,
    /// What happens at the limit, e.g. "frozen until resumed with a raised budget".
    pub at_limit: String,
    /// The limit has been reached (and the action taken).
    #[serde(default)]
    pub exceeded: bool,
}

impl BudgetUsage {
    /// Percent of the limit used, if there is one.
    pub fn percent(&self) -> Option<f64> {
        self.limit.map(|l| if l == 0 { 100.0 } else { self.used as f64 * 100.0 / l as f64 })
    }

    pub fn format(&self, v: u64) -> String {
        match self.unit {
            BudgetUnit::Millis => format!("{:.1}s", v as f64 / 1000.0),
            BudgetUnit::Bytes => format_size(v),
            BudgetUnit::Count => v.to_string(),
            BudgetUnit::MicroUsd => format_usd(v),
            BudgetUnit::Percent => format!("{v}%"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetUnit {
    Millis,
    Bytes,
    Count,
    MicroUsd,
    Percent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_resource() {
        let b: Budget = "cpu:1h,mem:2G,pids:256,net:1G,api:500,cost:$5,cpu-rate:50%".parse().unwrap();
        assert_eq!(b.cpu_ms, Some(3_600_000));
        assert_eq!(b.mem_bytes, Some(2 << 30));
        assert_eq!(b.pids, Some(256));
        assert_eq!(b.net_bytes, Some(1 << 30));
        assert_eq!(b.api_calls, Some(500));
        assert_eq!(b.cost_micro_usd, Some(5_000_000));
        assert_eq!(b.cpu_rate_pct, Some(50));
        assert_eq!(b.to_string(), "cpu:1h,cpu-rate:50%,mem:2G,pids:256,net:1G,api:500,cost:$5.00");
        assert_eq!(b.to_string().parse::<Budget>().unwrap(), b);
    }

    #[test]
    fn small_and_fractional_values() {
        let b: Budget = "cpu:2s,mem:1.5G,net:100K,cost:$0.01,api:0".parse().unwrap();
        assert_eq!(b.cpu_ms, Some(2000));
        assert_eq!(b.mem_bytes, Some(3 << 29));
        assert_eq!(b.net_bytes, Some(100 * 1024));
        assert_eq!(b.cost_micro_usd, Some(10_000));
        assert_eq!(b.api_calls, Some(0));
        assert_eq!("cpu:750ms".parse::<Budget>().unwrap().cpu_ms, Some(750));
        assert_eq!(parse_usd("0.000001").unwrap(), 1);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(format_usd(12_345), "$0.012345");
        assert_eq!(format_size(1536), "1.5K");
    }

    #[test]
    fn bad_budgets_name_the_bad_part() {
        for (bad, needle) in [
            ("", "empty"),
            ("cpu", "\"cpu\": expected KEY:VALUE"),
            ("cpu:1h,mem:lots", "\"mem:lots\": \"lots\" is not a size"),
            ("disk:1G", "unknown resource \"disk\""),
            ("pids:0", "at least 1"),
            ("pids:-3", "\"-3\" is not a whole number"),
            ("cost:five", "not an amount in dollars"),
            ("cost:$0.0000001", "more than 6 decimal places"),
            ("cost:$0", "more than zero"),
            ("cpu:1h,cpu:2h", "given twice"),
            ("cpu-rate:50", "lacks a '%'"),
            ("cpu:10y", "unknown unit"),
            ("mem:99999999999T", "not a size"),
            ("net:1G,", "\"\": expected KEY:VALUE"),
        ] {
            let e = bad.parse::<Budget>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e:?} lacks {needle:?}");
            assert!(e.contains("--budget"), "{e}");
        }
    }

    #[test]
    fn budget_keys_are_the_resources() {
        let names: Vec<&str> = BudgetResource::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, BUDGET_KEYS);
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let preset: Budget = "cpu:10m,mem:1G,api:100".parse().unwrap();
        let flags: Budget = "mem:4G,cost:$1".parse().unwrap();
        let b = preset.overridden_by(&flags);
        assert_eq!(b.to_string(), "cpu:10m,mem:4G,api:100,cost:$1.00");
    }
}
