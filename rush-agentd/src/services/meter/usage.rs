//! Token usage as the model APIs report it, and what it costs.
//!
//! OpenAI chat/completions report `usage.prompt_tokens`/`completion_tokens`; OpenAI's
//! Responses API and Anthropic report `usage.input_tokens`/`output_tokens`, Anthropic
//! with prompt-cache tokens apart (`cache_creation_input_tokens`,
//! `cache_read_input_tokens`), which are charged as input. OpenAI's cached and reasoning
//! token counts are already inside its totals, so they are not added again.
//!
//! Streams (`text/event-stream`) carry usage in events: Anthropic's `message_start`
//! (input, under `message`) and `message_delta` (output so far), OpenAI chat's last chunk
//! (with `stream_options.include_usage`), OpenAI Responses' `response.completed` (under
//! `response`). Counts in later events are running totals, so a stream's usage is the
//! largest count seen for each side.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// The most of a plain (non-stream) response body kept for reading its usage; beyond it
/// the body is still relayed, but unmetered.
const MAX_JSON_BODY: usize = 16 << 20;
/// The longest stream line kept; a longer one is skipped.
const MAX_SSE_LINE: usize = 1 << 20;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    fn max(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.max(other.input_tokens),
            output_tokens: self.output_tokens.max(other.output_tokens),
        }
    }
}

/// The places a usage object (and the model beside it) sits in the styles above.
const NESTS: [&str; 3] = ["", "/message", "/response"];

/// The usage reported in one response body or stream event, if any.
pub fn usage_of(v: &Value) -> Option<Usage> {
    NESTS.iter().filter_map(|p| v.pointer(p)?.get("usage")).find_map(parse_usage)
}

/// The model named in one response body or stream event, if any.
pub fn model_of(v: &Value) -> Option<&str> {
    NESTS.iter().filter_map(|p| v.pointer(p)?.get("model")).find_map(Value::as_str)
}

fn parse_usage(u: &Value) -> Option<Usage> {
    let n = |k: &str| u.get(k).and_then(Value::as_u64);
    let input = n("prompt_tokens").or_else(|| n("input_tokens"));
    let output = n("completion_tokens").or_else(|| n("output_tokens"));
    if input.is_none() && output.is_none() {
        return None;
    }
    let cache = n("cache_creation_input_tokens")
        .unwrap_or(0)
        .saturating_add(n("cache_read_input_tokens").unwrap_or(0));
    Some(Usage { input_tokens: input.unwrap_or(0).saturating_add(cache), output_tokens: output.unwrap_or(0) })
}

/// What a response body reported, read while it is relayed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reported {
    pub usage: Option<Usage>,
    pub model: Option<String>,
}

/// Reads usage from a response body fed to it piece by piece.
#[derive(Debug)]
pub enum BodyMeter {
    /// A plain body, kept whole and parsed at its end.
    Json {
        body: Vec<u8>,
        overflow: bool,
    },
    Sse(SseMeter),
}

impl BodyMeter {
    /// The reader for a response of this Content-Type.
    pub fn for_content_type(content_type: Option<&str>) -> BodyMeter {
        let media = content_type.and_then(|c| c.split(';').next()).unwrap_or("").trim();
        if media.eq_ignore_ascii_case("text/event-stream") {
            BodyMeter::Sse(SseMeter::default())
        } else {
            BodyMeter::Json { body: Vec::new(), overflow: false }
        }
    }

    pub fn feed(&mut self, piece: &[u8]) {
        match self {
            BodyMeter::Json { body, overflow } => {
                if body.len() + piece.len() > MAX_JSON_BODY {
                    *overflow = true;
                    *body = Vec::new();
                }
                if !*overflow {
                    body.extend_from_slice(piece);
                }
            }
            BodyMeter::Sse(s) => s.feed(piece),
        }
    }

    /// What the body reported; Err with the reason when it could not be read at all.
    pub fn finish(self) -> Result<Reported, &'static str> {
        match self {
            BodyMeter::Json { overflow: true, .. } => Err("body too large to read its usage"),
            BodyMeter::Json { body, .. } => {
                let v: Value = serde_json::from_slice(&body).map_err(|_| "body is not JSON")?;
                Ok(Reported { usage: usage_of(&v), model: model_of(&v).map(str::to_owned) })
            }
            BodyMeter::Sse(s) => Ok(s.finish()),
        }
    }
}

/// Server-sent events: `data:` lines gathered per event, each event parsed as JSON.
#[derive(Debug, Default)]
pub struct SseMeter {
    line: Vec<u8>,
    skipping_line: bool,
    data: Vec<u8>,
    reported: Reported,
}

impl SseMeter {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let end = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &[][..]),
            };
            if !self.skipping_line {
                if self.line.len() + part.len() > MAX_SSE_LINE {
                    self.skipping_line = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            if end.is_some() {
                if !std::mem::take(&mut self.skipping_line) {
                    let line = std::mem::take(&mut self.line);
                    self.on_line(line.strip_suffix(b"\r").unwrap_or(&line));
                }
                self.line.clear();
            }
            bytes = rest;
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
        } else if let Some(d) = line.strip_prefix(b"data:") {
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
        }
        // `event:`, `id:`, `retry:` and comments carry nothing to meter.
    }

    fn dispatch(&mut self) {
        let data = std::mem::take(&mut self.data);
        let Ok(v) = serde_json::from_slice::<Value>(&data) else { return };
        if let Some(u) = usage_of(&v) {
            self.reported.usage = Some(self.reported.usage.map_or(u, |seen| seen.max(u)));
        }
        if self.reported.model.is_none() {
            self.reported.model = model_of(&v).map(str::to_owned);
        }
    }

    pub fn finish(mut self) -> Reported {
        // A stream may end without the blank line after its last event.
        if !self.skipping_line && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.on_line(line.strip_suffix(b"\r").unwrap_or(&line));
        }
        self.dispatch();
        self.reported
    }
}

/// A model's price in USD per million tokens (which is micro-dollars per token).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

/// The largest price accepted, USD per million tokens: keeps the cost arithmetic far from
/// overflow.
const MAX_PRICE: f64 = 1_000_000.0;

impl Price {
    /// Nano-dollars per token, the unit costs are summed in before rounding.
    fn nano(p: f64) -> u128 {
        (p * 1000.0).round() as u128
    }

    /// The cost of `usage` in micro-dollars, rounded up: a call that used tokens never
    /// costs nothing because its price is fractional.
    pub fn cost_micro_usd(&self, usage: Usage) -> u64 {
        let nano = u128::from(usage.input_tokens) * Self::nano(self.input)
            + u128::from(usage.output_tokens) * Self::nano(self.output);
        u64::try_from(nano.div_ceil(1000)).unwrap_or(u64::MAX)
    }
}

/// How a model's price was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriceMatch {
    Exact,
    /// Through the `prefix*` key named.
    Prefix(String),
    Default,
    /// Unknown model and no `default`: the highest input and output prices configured.
    Highest,
}

/// `[meter.prices]`: model name (or `prefix*`) → price; the key `default` prices models
/// no other key matches.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(try_from = "BTreeMap<String, Price>")]
pub struct Prices {
    exact: BTreeMap<String, Price>,
    /// Longest prefix first, so the most specific key wins.
    prefixes: Vec<(String, Price)>,
    default: Option<Price>,
    highest: Option<Price>,
}

impl TryFrom<BTreeMap<String, Price>> for Prices {
    type Error = String;

    fn try_from(table: BTreeMap<String, Price>) -> Result<Prices, String> {
        let mut prices = Prices::default();
        for (key, price) in table {
            for (side, p) in [("input", price.input), ("output", price.output)] {
                if !(0.0..=MAX_PRICE).contains(&p) {
                    return Err(format!(
                        "meter.prices.{key:?}: {side} = {p} is not a price in USD per million tokens \
                         (0 to {MAX_PRICE})"
                    ));
                }
            }
            let highest = prices.highest.get_or_insert(price);
            highest.input = highest.input.max(price.input);
            highest.output = highest.output.max(price.output);
            match key.find('*') {
                _ if key == "default" => prices.default = Some(price),
                None => {
                    prices.exact.insert(key, price);
                }
                Some(i) if i + 1 == key.len() => prices.prefixes.push((key[..i].to_owned(), price)),
                Some(_) => {
                    return Err(format!(
                        "meter.prices.{key:?}: `*` may only end a key (a model name prefix)"
                    ));
                }
            }
        }
        prices.prefixes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(prices)
    }
}

impl Prices {
    pub fn is_empty(&self) -> bool {
        self.highest.is_none()
    }

    /// The price of `model`; None only when no price is configured at all.
    pub fn lookup(&self, model: &str) -> Option<(Price, PriceMatch)> {
        if let Some(p) = self.exact.get(model) {
            return Some((*p, PriceMatch::Exact));
        }
        if let Some((prefix, p)) = self.prefixes.iter().find(|(prefix, _)| model.starts_with(prefix.as_str()))
        {
            return Some((*p, PriceMatch::Prefix(format!("{prefix}*"))));
        }
        if let Some(p) = self.default {
            return Some((p, PriceMatch::Default));
        }
        self.highest.map(|p| (p, PriceMatch::Highest))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn prices(toml_text: &str) -> Result<Prices, String> {
        toml::from_str::<BTreeMap<String, Prices>>(&format!("[p]\n{toml_text}"))
            .map(|mut m| m.remove("p").unwrap())
            .map_err(|e| e.message().to_owned())
    }

    const TABLE: &str = r#"
        "gpt-4o" = { input = 2.5, output = 10 }
        "gpt-4o*" = { input = 5, output = 20 }
        "gpt-4o-mini*" = { input = 0.15, output = 0.6 }
        "claude-3-5-sonnet*" = { input = 3, output = 15 }
    "#;

    #[test]
    fn lookup_exact_then_longest_prefix_then_default() {
        let p = prices(&format!("{TABLE}\ndefault = {{ input = 1, output = 2 }}")).unwrap();
        let (price, how) = p.lookup("gpt-4o").unwrap();
        assert_eq!((price.input, how), (2.5, PriceMatch::Exact));
        let (price, how) = p.lookup("gpt-4o-2024-08-06").unwrap();
        assert_eq!((price.input, how), (5.0, PriceMatch::Prefix("gpt-4o*".into())));
        let (price, how) = p.lookup("gpt-4o-mini-2024-07-18").unwrap();
        assert_eq!((price.output, how), (0.6, PriceMatch::Prefix("gpt-4o-mini*".into())));
        let (price, how) = p.lookup("claude-3-5-sonnet-20241022").unwrap();
        assert_eq!((price.output, how), (15.0, PriceMatch::Prefix("claude-3-5-sonnet*".into())));
        let (price, how) = p.lookup("llama").unwrap();
        assert_eq!((price.input, price.output, how), (1.0, 2.0, PriceMatch::Default));
    }

    #[test]
    fn unknown_model_without_default_pays_the_highest_prices() {
        let p = prices(TABLE).unwrap();
        let (price, how) = p.lookup("mystery").unwrap();
        assert_eq!((price.input, price.output, how), (5.0, 20.0, PriceMatch::Highest));
        assert!(prices("").unwrap().lookup("x").is_none());
        assert!(prices("").unwrap().is_empty());
    }

    #[test]
    fn bad_price_tables_are_refused() {
        assert!(prices(r#""a*b" = { input = 1, output = 1 }"#).unwrap_err().contains("only end a key"));
        assert!(prices(r#"m = { input = -1, output = 1 }"#).unwrap_err().contains("input = -1"));
        assert!(prices(r#"m = { input = 1, output = nan }"#).unwrap_err().contains("output"));
        assert!(prices(r#"m = { input = 1 }"#).is_err());
        assert!(prices(r#"m = { input = 1, output = 1, cache = 1 }"#).is_err());
    }

    #[test]
    fn cost_is_in_micro_dollars_rounded_up() {
        let p = Price { input: 3.0, output: 15.0 };
        assert_eq!(p.cost_micro_usd(Usage { input_tokens: 1000, output_tokens: 500 }), 3000 + 7500);
        let cheap = Price { input: 0.15, output: 0.6 };
        assert_eq!(cheap.cost_micro_usd(Usage { input_tokens: 1, output_tokens: 0 }), 1);
        assert_eq!(cheap.cost_micro_usd(Usage { input_tokens: 1_000_000, output_tokens: 0 }), 150_000);
        assert_eq!(cheap.cost_micro_usd(Usage::default()), 0);
        let huge = Price { input: MAX_PRICE, output: MAX_PRICE };
        assert_eq!(huge.cost_micro_usd(Usage { input_tokens: u64::MAX, output_tokens: u64::MAX }), u64::MAX);
    }

    fn usage(i: u64, o: u64) -> Option<Usage> {
        Some(Usage { input_tokens: i, output_tokens: o })
    }

    #[test]
    fn usage_in_each_body_style() {
        let openai_chat = json!({"model": "gpt-4o-2024-08-06", "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19,
                      "prompt_tokens_details": {"cached_tokens": 5}}});
        assert_eq!(usage_of(&openai_chat), usage(12, 7));
        assert_eq!(model_of(&openai_chat), Some("gpt-4o-2024-08-06"));
        let openai_responses = json!({"object": "response", "model": "o4-mini",
            "usage": {"input_tokens": 30, "output_tokens": 40,
                      "output_tokens_details": {"reasoning_tokens": 25}}});
        assert_eq!(usage_of(&openai_responses), usage(30, 40));
        let anthropic = json!({"type": "message", "model": "claude-3-5-sonnet-20241022",
            "usage": {"input_tokens": 10, "output_tokens": 20,
                      "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000}});
        assert_eq!(usage_of(&anthropic), usage(1110, 20));
        let embeddings = json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}});
        assert_eq!(usage_of(&embeddings), usage(8, 0));
        assert_eq!(usage_of(&json!({"usage": null})), None);
        assert_eq!(usage_of(&json!({"usage": {"total_tokens": 3}})), None);
        assert_eq!(usage_of(&json!([1, 2])), None);
    }

    fn meter(content_type: &str, body: &[u8], piece: usize) -> Result<Reported, &'static str> {
        let mut m = BodyMeter::for_content_type(Some(content_type));
        body.chunks(piece).for_each(|p| m.feed(p));
        m.finish()
    }

    const ANTHROPIC_SSE: &str = "event: message_start\r\n\
        data: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-3-5-haiku\",\"usage\":\
        {\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n\
        event: content_block_delta\r\n\
        data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"text\":\"Hi\"}}\r\n\r\n\
        : a comment\r\n\r\n\
        event: message_delta\r\n\
        data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\r\n\r\n\
        event: message_stop\r\n\
        data: {\"type\":\"message_stop\"}\r\n\r\n";

    const OPENAI_SSE: &str = "data: {\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n\
        data: {\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3}}\n\n\
        data: [DONE]\n\n";

    const RESPONSES_SSE: &str = "event: response.created\n\
        data: {\"type\":\"response.created\",\"response\":{\"model\":\"o4-mini\",\"usage\":null}}\n\n\
        event: response.completed\n\
        data: {\"type\":\"response.completed\",\"response\":{\"model\":\"o4-mini\",\
        \"usage\":{\"input_tokens\":11,\"output_tokens\":22}}}";

    #[test]
    fn usage_in_each_stream_style_whatever_the_piece_boundaries() {
        for piece in [1, 3, 7, 64, 100_000] {
            let r = meter("text/event-stream; charset=utf-8", ANTHROPIC_SSE.as_bytes(), piece).unwrap();
            assert_eq!(r, Reported { usage: usage(30, 15), model: Some("claude-3-5-haiku".into()) });
            let r = meter("text/event-stream", OPENAI_SSE.as_bytes(), piece).unwrap();
            assert_eq!(r, Reported { usage: usage(9, 3), model: Some("gpt-4o-mini".into()) });
            let r = meter("Text/Event-Stream", RESPONSES_SSE.as_bytes(), piece).unwrap();
            assert_eq!(r, Reported { usage: usage(11, 22), model: Some("o4-mini".into()) });
        }
    }

    #[test]
    fn multi_line_data_and_overlong_lines() {
        let two_lines = "data: {\"usage\":\ndata: {\"input_tokens\":4,\"output_tokens\":2}}\n\n";
        assert_eq!(meter("text/event-stream", two_lines.as_bytes(), 5).unwrap().usage, usage(4, 2));
        let long = format!(
            "data: {{\"pad\":\"{}\",\"usage\":{{\"input_tokens\":1,\"output_tokens\":1}}}}\n\n{OPENAI_SSE}",
            "x".repeat(MAX_SSE_LINE)
        );
        assert_eq!(meter("text/event-stream", long.as_bytes(), 4096).unwrap().usage, usage(9, 3));
    }

    #[test]
    fn plain_bodies() {
        let body = br#"{"model":"m","usage":{"input_tokens":1,"output_tokens":2}}"#;
        assert_eq!(meter("application/json", body, 4).unwrap().usage, usage(1, 2));
        let mut m = BodyMeter::for_content_type(None);
        m.feed(b"<html>");
        assert_eq!(m.finish(), Err("body is not JSON"));
        let no_usage = meter("application/json", br#"{"error":{"type":"x"}}"#, 100).unwrap();
        assert_eq!(no_usage, Reported::default());
        let mut m = BodyMeter::for_content_type(Some("application/json"));
        m.feed(&vec![b' '; MAX_JSON_BODY]);
        m.feed(body);
        assert_eq!(m.finish(), Err("body too large to read its usage"));
    }
}
