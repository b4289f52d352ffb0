//! `rush-test-api`: a fake model API and a client for it, for cost-budget tests on hosts
//! and in minimal guests (which have no curl or python). Plain blocking sockets.
//!
//! `rush-test-api serve [--listen ADDR] [--style openai|anthropic] [--input-tokens N]
//! [--output-tokens M] [--model NAME] [--stream] [--port-file PATH]`
//!   Listens on ADDR (default 127.0.0.1:0), prints `listening PORT` and writes PORT to
//!   PATH (whole, by rename). Answers every request, one per connection, with a 200 in the
//!   style's JSON carrying `model` and `usage` (N input, M output tokens; defaults 1000,
//!   500, model `rush-test-model`); as server-sent events with `--stream` or when the
//!   request body has `"stream": true`. Prints `request K METHOD TARGET` per request.
//!   On SIGTERM or SIGINT prints `served K` and exits 0.
//!
//! `rush-test-api call URL [--count N] [--model NAME] [--stream] [--json]`
//!   N (default 1) sequential POSTs of a small chat request to `http://HOST:PORT/PATH`,
//!   each on a new TCP connection (so each call is one connect()). One line per call:
//!   `ok STATUS` (2xx), `http STATUS` (any other status), `refused ERRNO` (connect()
//!   failed, e.g. `refused EPERM`) or `broken REASON` (the exchange failed after
//!   connecting); then `summary calls=N ok=A http=B refused=C broken=D`. With `--json`,
//!   the same as JSON objects, one a line, each call's with the answer's body.
//!   Exit: 0 every call got a 2xx; 4 some connect() failed; else 3 some got 402 or 429
//!   (a budget's refusal); else 5 some other failure; 2 bad usage.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

const USAGE: &str = "usage: rush-test-api serve [--listen ADDR] [--style openai|anthropic] [--input-tokens N] \
     [--output-tokens M] [--model NAME] [--stream] [--port-file PATH]\n       \
     rush-test-api call URL [--count N] [--model NAME] [--stream] [--json]\n\
     call exits 0 if every call got a 2xx, 4 if some connect() failed, else 3 if some got 402/429, \
     else 5 on other failures";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => Opts::parse(&args[1..]).and_then(serve),
        Some("call") => Opts::parse(&args[1..]).and_then(call),
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => Err(String::new()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("rush-test-api: {e}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

#[derive(Debug)]
struct Opts {
    url: Option<String>,
    listen: String,
    anthropic: bool,
    input_tokens: u64,
    output_tokens: u64,
    model: String,
    stream: bool,
    port_file: Option<String>,
    count: u32,
    json: bool,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            url: None,
            listen: "127.0.0.1:0".into(),
            anthropic: false,
            input_tokens: 1000,
            output_tokens: 500,
            model: "rush-test-model".into(),
            stream: false,
            port_file: None,
            count: 1,
            json: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
            let number = |v: String| v.parse::<u64>().map_err(|_| format!("{a}: {v:?} is not a number"));
            match a.as_str() {
                "--listen" => o.listen = value()?,
                "--style" => {
                    o.anthropic = match value()?.as_str() {
                        "openai" => false,
                        "anthropic" => true,
                        s => return Err(format!("--style {s:?}: openai or anthropic")),
                    }
                }
                "--input-tokens" => o.input_tokens = number(value()?)?,
                "--output-tokens" => o.output_tokens = number(value()?)?,
                "--model" => o.model = value()?,
                "--port-file" => o.port_file = Some(value()?),
                "--count" => o.count = u32::try_from(number(value()?)?).map_err(|_| "--count too large")?,
                "--stream" => o.stream = true,
                "--json" => o.json = true,
                s if !s.starts_with('-') && o.url.is_none() => o.url = Some(s.to_owned()),
                s => return Err(format!("unknown argument {s:?}")),
            }
        }
        Ok(o)
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn serve(o: Opts) -> Result<ExitCode, String> {
    let listener = TcpListener::bind(&o.listen).map_err(|e| format!("cannot listen on {}: {e}", o.listen))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    if let Some(path) = &o.port_file {
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, format!("{port}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_stop), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("sigaction: {e}"))?;
    }
    println!("listening {port}");
    let _ = std::io::stdout().flush();

    let o = Arc::new(o);
    let served = Arc::new(AtomicU64::new(0));
    while !STOP.load(Ordering::SeqCst) {
        // Wait in poll(), which a signal interrupts, not in accept(), which std restarts.
        let mut fd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut fd, 1, 200) } <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else { continue };
        let (o, served) = (o.clone(), served.clone());
        std::thread::spawn(move || {
            if let Err(e) = answer(&o, stream, &served) {
                eprintln!("rush-test-api: request failed: {e}");
            }
        });
    }
    println!("served {}", served.load(Ordering::SeqCst));
    Ok(ExitCode::SUCCESS)
}

/// Reads one request and answers it, closing the connection after.
fn answer(o: &Opts, stream: TcpStream, served: &AtomicU64) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut rd = BufReader::new(stream.try_clone()?);
    let (head, body) = read_message(&mut rd)?;
    let n = served.fetch_add(1, Ordering::SeqCst) + 1;
    println!(
        "request {n} {}",
        head.first().map_or("", |l| l.rsplit_once(' ').map_or(l.as_str(), |(a, _)| a))
    );
    let _ = std::io::stdout().flush();
    let asked_stream = serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["stream"] == Value::Bool(true));
    let (content_type, payload) = if o.stream || asked_stream {
        ("text/event-stream", stream_body(o, n))
    } else {
        ("application/json", json_body(o, n))
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    out.write_all(payload.as_bytes())?;
    out.flush()
}

fn json_body(o: &Opts, n: u64) -> String {
    let (i, out, m) = (o.input_tokens, o.output_tokens, &o.model);
    if o.anthropic {
        json!({"id": format!("msg_rush_{n}"), "type": "message", "role": "assistant", "model": m,
               "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
               "usage": {"input_tokens": i, "output_tokens": out}})
    } else {
        json!({"id": format!("chatcmpl-rush-{n}"), "object": "chat.completion", "created": 0, "model": m,
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": i, "completion_tokens": out, "total_tokens": i + out}})
    }
    .to_string()
}

fn stream_body(o: &Opts, n: u64) -> String {
    let (i, out, m) = (o.input_tokens, o.output_tokens, &o.model);
    let events: Vec<(Option<&str>, Value)> = if o.anthropic {
        vec![
            (
                Some("message_start"),
                json!({"type": "message_start", "message": {"id": format!("msg_rush_{n}"),
                "type": "message", "role": "assistant", "model": m, "content": [],
                "usage": {"input_tokens": i, "output_tokens": 1}}}),
            ),
            (
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            (
                Some("content_block_delta"),
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": "ok"}}),
            ),
            (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})),
            (
                Some("message_delta"),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": out}}),
            ),
            (Some("message_stop"), json!({"type": "message_stop"})),
        ]
    } else {
        let id = format!("chatcmpl-rush-{n}");
        vec![
            (
                None,
                json!({"id": id, "object": "chat.completion.chunk", "model": m,
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}], "usage": null}),
            ),
            (
                None,
                json!({"id": id, "object": "chat.completion.chunk", "model": m, "choices": [],
                "usage": {"prompt_tokens": i, "completion_tokens": out, "total_tokens": i + out}}),
            ),
        ]
    };
    let mut s = String::new();
    for (event, data) in events {
        if let Some(e) = event {
            s += &format!("event: {e}\n");
        }
        s += &format!("data: {data}\n\n");
    }
    if !o.anthropic {
        s += "data: [DONE]\n\n";
    }
    s
}

/// A message's head lines and its body (Content-Length or chunked; else none for a
/// request, or up to the close for a response when `to_close`).
fn read_message(rd: &mut impl BufRead) -> std::io::Result<(Vec<String>, Vec<u8>)> {
    read_message_framed(rd, false)
}

fn read_message_framed(rd: &mut impl BufRead, to_close: bool) -> std::io::Result<(Vec<String>, Vec<u8>)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line)? == 0 {
            return Err(bad("connection closed mid-head"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        head.push(line.to_owned());
    }
    let field = |name: &str| {
        head.iter().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let mut body = Vec::new();
    if field("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked")) {
        loop {
            let mut line = String::new();
            rd.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                loop {
                    line.clear();
                    if rd.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            rd.read_exact(&mut body[start..])?;
            rd.read_line(&mut line)?;
        }
    } else if let Some(n) = field("content-length") {
        let n: usize = n.parse().map_err(|_| bad("bad Content-Length"))?;
        body.resize(n, 0);
        rd.read_exact(&mut body)?;
    } else if to_close {
        rd.read_to_end(&mut body)?;
    }
    Ok((head, body))
}

enum Outcome {
    Ok(u16, Vec<u8>),
    Http(u16, Vec<u8>),
    Refused(String),
    Broken(String),
}

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string().replace(' ', "_"),
    }
}

fn call(o: Opts) -> Result<ExitCode, String> {
    let url = o.url.as_deref().ok_or("call needs a URL")?;
    let rest = url.strip_prefix("http://").ok_or(format!("{url:?}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(format!("{authority:?} is not HOST:PORT"))?;
    let mut request = json!({"model": o.model, "max_tokens": 16,
                             "messages": [{"role": "user", "content": "hi"}]});
    if o.stream {
        request["stream"] = Value::Bool(true);
    }
    let body = request.to_string();
    let anthropic = if path.ends_with("/messages") { "anthropic-version: 2023-06-01\r\n" } else { "" };
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n{anthropic}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );

    let (mut ok, mut http, mut budget, mut refused, mut broken) = (0u32, 0u32, 0u32, 0u32, 0u32);
    for k in 1..=o.count {
        let outcome = match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Err(e) => Outcome::Refused(errno_name(&e)),
            Ok(s) => exchange(s, raw.as_bytes()),
        };
        let line = match &outcome {
            Outcome::Ok(status, b) | Outcome::Http(status, b) => {
                let kind = if matches!(outcome, Outcome::Ok(..)) { "ok" } else { "http" };
                if o.json {
                    let body = serde_json::from_slice::<Value>(b)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()));
                    json!({"call": k, "outcome": kind, "status": status, "body": body}).to_string()
                } else {
                    format!("{kind} {status}")
                }
            }
            Outcome::Refused(e) | Outcome::Broken(e) => {
                let kind = if matches!(outcome, Outcome::Refused(_)) { "refused" } else { "broken" };
                if o.json {
                    json!({"call": k, "outcome": kind, "error": e}).to_string()
                } else {
                    format!("{kind} {e}")
                }
            }
        };
        println!("{line}");
        let _ = std::io::stdout().flush();
        match outcome {
            Outcome::Ok(..) => ok += 1,
            Outcome::Http(status, _) => {
                http += 1;
                budget += u32::from(status == 402 || status == 429);
            }
            Outcome::Refused(_) => refused += 1,
            Outcome::Broken(_) => broken += 1,
        }
    }
    if o.json {
        let s = json!({"summary": {"calls": o.count, "ok": ok, "http": http, "refused": refused, "broken": broken}});
        println!("{s}");
    } else {
        println!("summary calls={} ok={ok} http={http} refused={refused} broken={broken}", o.count);
    }
    Ok(ExitCode::from(if refused > 0 {
        4
    } else if budget > 0 {
        3
    } else if ok < o.count {
        5
    } else {
        0
    }))
}

fn exchange(mut s: TcpStream, raw: &[u8]) -> Outcome {
    let result = (|| {
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        s.write_all(raw)?;
        read_message_framed(&mut BufReader::new(s), true)
    })();
    let (head, body) = match result {
        Ok(m) => m,
        Err(e) => return Outcome::Broken(errno_name(&e)),
    };
    let status = head.first().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(s) if (200..300).contains(&s) => Outcome::Ok(s, body),
        Some(s) => Outcome::Http(s, body),
        None => Outcome::Broken("bad_status_line".into()),
    }
}
