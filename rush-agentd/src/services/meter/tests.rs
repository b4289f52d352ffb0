//! The meter end to end, against fake model APIs served in the test.

use std::future::Future;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::timeout;

use super::http::{self, BodyReader, Framing, RequestHead, ResponseHead};
use super::usage::PriceMatch;
use super::*;

fn config(upstream: SocketAddr) -> Arc<MeterConfig> {
    let text = format!(
        r#"
        upstream = "http://{upstream}/v1/"
        [prices]
        "gpt-test*" = {{ input = 1, output = 2 }}
        default = {{ input = 10, output = 10 }}
        "#
    );
    Arc::new(toml::from_str(&text).unwrap())
}

/// Runs a test body with a deadline, so a proxy that holds back a stream fails rather
/// than hangs.
async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(Duration::from_secs(20), f).await.expect("test timed out")
}

struct Fake {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<(RequestHead, Vec<u8>)>,
}

impl Fake {
    fn requests(&mut self) -> Vec<(RequestHead, Vec<u8>)> {
        std::iter::from_fn(|| self.seen.try_recv().ok()).collect()
    }
}

/// A model API answering each call (one per connection) with the raw pieces `answer`
/// makes, closing after; with `gate`, it waits for a notification after the first piece.
async fn fake_api(
    answer: impl Fn(&RequestHead, &[u8]) -> Vec<Vec<u8>> + Send + Sync + 'static,
    gate: Option<Arc<Notify>>,
) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, seen) = mpsc::unbounded_channel();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (answer, tx, gate) = (answer.clone(), tx.clone(), gate.clone());
            tokio::spawn(async move {
                let (rd, mut wr) = stream.into_split();
                let mut rd = BufReader::new(rd);
                let head = http::read_request_head(&mut rd).await.unwrap();
                let framing = http::request_framing(&head).unwrap();
                let body = http::read_body(&mut rd, framing, 1 << 20).await.unwrap();
                let pieces = answer(&head, &body);
                tx.send((head, body)).unwrap();
                for (i, piece) in pieces.iter().enumerate() {
                    wr.write_all(piece).await.unwrap();
                    if let (0, Some(gate)) = (i, &gate) {
                        gate.notified().await;
                    }
                }
                // Dropping the write half shuts it down: close-delimited bodies end here.
            });
        }
    });
    Fake { addr, seen }
}

fn json_answer(status: &str, body: &str) -> Vec<Vec<u8>> {
    vec![
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    ]
}

fn openai_body(model: &str, input: u64, output: u64) -> String {
    json!({"object": "chat.completion", "model": model, "choices": [],
           "usage": {"prompt_tokens": input, "completion_tokens": output}})
    .to_string()
}

fn post(path: &str, body: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: meter\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Client {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let (rd, wr) = TcpStream::connect(addr).await.unwrap().into_split();
        Client { rd: BufReader::new(rd), wr }
    }

    async fn head(&mut self, request: &[u8]) -> ResponseHead {
        self.wr.write_all(request).await.unwrap();
        http::read_response_head(&mut self.rd).await.unwrap()
    }

    async fn body(&mut self, head: &ResponseHead) -> Vec<u8> {
        let framing = http::response_framing("POST", head).unwrap();
        http::read_body(&mut self.rd, framing, 1 << 20).await.unwrap()
    }

    async fn call(&mut self, request: &[u8]) -> (ResponseHead, Value) {
        let head = self.head(request).await;
        let body = self.body(&head).await;
        (head, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

/// One call on a connection of its own.
async fn call(addr: SocketAddr, request: &[u8]) -> (u16, Value) {
    let (head, body) = Client::connect(addr).await.call(request).await;
    (head.status, body)
}

fn events(rx: &mut mpsc::UnboundedReceiver<MeterEvent>) -> Vec<MeterEvent> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

#[tokio::test]
async fn charges_each_call_refuses_past_the_limit_and_resumes() {
    within(async {
        let mut api =
            fake_api(|_, _| json_answer("200 OK", &openai_body("gpt-test-1", 1000, 500)), None).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Each call costs 1000 × $1/M + 500 × $2/M = 2000 µ$; the third crosses 5000 µ$.
        let meter = start(config(api.addr), "a1".into(), 5000, tx).await.unwrap();
        let req = post("/chat/completions", r#"{"model":"gpt-test"}"#, "Authorization: Bearer k\r\n");
        for _ in 0..3 {
            assert_eq!(call(meter.addr, &req).await.0, 200);
        }
        assert_eq!((meter.ledger.used_micro_usd(), meter.ledger.calls()), (6000, 3));

        let (status, body) = call(meter.addr, &req).await;
        assert_eq!(status, 402);
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert!(body["error"]["message"].as_str().unwrap().contains("$0.006000 used of $0.005000"), "{body}");
        assert_eq!(
            body["rush_budget"],
            json!({"agent": "a1", "used_micro_usd": 6000, "limit_micro_usd": 5000})
        );
        assert_eq!(meter.ledger.refused_calls(), 1);

        let charged = MeterEvent::Charged {
            agent: "a1".into(),
            model: "gpt-test-1".into(),
            input_tokens: 1000,
            output_tokens: 500,
            micro_usd: 2000,
        };
        let (used, limit) = (6000, 5000);
        assert_eq!(
            events(&mut rx),
            [
                charged.clone(),
                charged.clone(),
                charged.clone(),
                MeterEvent::Exceeded { agent: "a1".into(), used_micro_usd: used, limit_micro_usd: limit },
                MeterEvent::Refused { agent: "a1".into(), used_micro_usd: used, limit_micro_usd: limit },
            ]
        );
        let forwarded = api.requests();
        assert_eq!(forwarded.len(), 3, "the refused call reached the API");
        let (head, body) = &forwarded[0];
        assert_eq!(head.target, "/v1/chat/completions");
        assert_eq!(head.headers.get("host"), Some(api.addr.to_string().as_str()));
        assert_eq!(head.headers.get("authorization"), Some("Bearer k"));
        assert_eq!(head.headers.get("accept-encoding"), Some("identity"));
        assert_eq!(body, br#"{"model":"gpt-test"}"#);

        meter.ledger.set_limit(10_000);
        assert_eq!(call(meter.addr, &req).await.0, 200);
        assert_eq!(meter.ledger.used_micro_usd(), 8000);
        assert_eq!(events(&mut rx), [charged]);
    })
    .await
}

#[tokio::test]
async fn refusals_in_anthropic_style_keep_the_connection() {
    within(async {
        let mut api = fake_api(|_, _| json_answer("200 OK", "{}"), None).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let meter = start(config(api.addr), "a2".into(), 0, tx).await.unwrap();
        let mut client = Client::connect(meter.addr).await;
        let req = post("/v1/messages", r#"{"model":"claude"}"#, "anthropic-version: 2023-06-01\r\n");
        for _ in 0..2 {
            let (head, body) = client.call(&req).await;
            assert_eq!((head.status, head.reason.as_str()), (402, "Payment Required"));
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], "budget_exceeded_error");
        }
        // A client that closes after one call, as rush-test-api does, still reads the answer.
        let (status, body) =
            call(meter.addr, &post("/v1/chat/completions", "{}", "Connection: close\r\n")).await;
        assert_eq!((status, &body["error"]["code"]), (402, &json!("insufficient_quota")));
        assert_eq!(meter.ledger.refused_calls(), 3);
        assert_eq!(events(&mut rx).len(), 3);
        assert!(api.requests().is_empty());
    })
    .await
}

#[tokio::test]
async fn chunked_request_and_answer_model_from_the_request() {
    within(async {
        // The answer names no model, and comes in chunks splitting its JSON.
        let answer = r#"{"usage":{"input_tokens":100,"output_tokens":10}}"#;
        let mut api = fake_api(
            move |_, _| {
                let (a, b) = answer.split_at(20);
                let head =
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                vec![
                    [head.as_bytes(), &http::chunk(a.as_bytes()), &http::chunk(b.as_bytes()), b"0\r\n\r\n"]
                        .concat(),
                ]
            },
            None,
        )
        .await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let meter = start(config(api.addr), "a3".into(), 1_000_000, tx).await.unwrap();
        let body = r#"{"model":"gpt-test-9","max_tokens":5}"#;
        let req = [
            &b"POST /messages HTTP/1.1\r\nHost: m\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            &http::chunk(&body.as_bytes()[..7]),
            &http::chunk(&body.as_bytes()[7..]),
            http::LAST_CHUNK,
        ]
        .concat();
        let mut client = Client::connect(meter.addr).await;
        let head = client.head(&req).await;
        assert_eq!(head.headers.get("transfer-encoding"), Some("chunked"));
        assert_eq!(client.body(&head).await, answer.as_bytes());
        let (up_head, up_body) = api.requests().remove(0);
        assert_eq!(up_body, body.as_bytes());
        assert_eq!(up_head.headers.get("content-length"), Some(body.len().to_string().as_str()));
        assert_eq!(up_head.headers.get("transfer-encoding"), None);
        // 100 × $1/M + 10 × $2/M at the gpt-test* price.
        assert_eq!(
            events(&mut rx),
            [MeterEvent::Charged {
                agent: "a3".into(),
                model: "gpt-test-9".into(),
                input_tokens: 100,
                output_tokens: 10,
                micro_usd: 120,
            }]
        );
    })
    .await
}

const ANTHROPIC_SSE: [&str; 3] = [
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\
     \"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n\
     event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
];

#[tokio::test]
async fn a_stream_is_relayed_as_it_arrives_then_charged() {
    within(async {
        // Close-delimited, as simple servers stream; held after the first event until the
        // client has it, so a proxy that waited for the end would never finish.
        let gate = Arc::new(Notify::new());
        let api = fake_api(
            |_, _| {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
                let mut pieces = vec![[head, ANTHROPIC_SSE[0]].concat().into_bytes()];
                pieces.extend(ANTHROPIC_SSE[1..].iter().map(|s| s.as_bytes().to_vec()));
                pieces
            },
            Some(gate.clone()),
        )
        .await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let meter = start(config(api.addr), "a4".into(), 1_000_000, tx).await.unwrap();
        let mut client = Client::connect(meter.addr).await;
        let req = post("/v1/messages", r#"{"model":"claude-x","stream":true}"#, "");
        let head = client.head(&req).await;
        assert_eq!(head.headers.get("content-type"), Some("text/event-stream"));
        // Re-framed in chunks, so the connection can carry on.
        assert_eq!(head.headers.get("transfer-encoding"), Some("chunked"));
        assert_eq!(head.headers.get("connection"), None);
        let mut reader = BodyReader::new(Framing::Chunked);
        let mut got = Vec::new();
        while got.len() < ANTHROPIC_SSE[0].len() {
            got.extend(reader.next(&mut client.rd).await.unwrap().unwrap());
        }
        gate.notify_one();
        while let Some(piece) = reader.next(&mut client.rd).await.unwrap() {
            got.extend(piece);
        }
        assert_eq!(String::from_utf8(got).unwrap(), ANTHROPIC_SSE.concat());
        // 30 input (cache included) × $10/M + 15 output × $10/M by the default price.
        assert_eq!(
            events(&mut rx),
            [MeterEvent::Charged {
                agent: "a4".into(),
                model: "claude-x".into(),
                input_tokens: 30,
                output_tokens: 15,
                micro_usd: 450,
            }]
        );

        // The same connection takes another call.
        gate.notify_one();
        let head = client.head(&req).await;
        assert_eq!(head.status, 200);
        client.body(&head).await;
        assert_eq!(meter.ledger.used_micro_usd(), 900);
    })
    .await
}

#[tokio::test]
async fn openai_streams_are_asked_for_their_usage() {
    within(async {
        let mut api = fake_api(|_, _| json_answer("200 OK", "{}"), None).await;
        let (tx, _rx) = mpsc::unbounded_channel();
        let meter = start(config(api.addr), "a5".into(), 1_000_000, tx).await.unwrap();
        for (path, body) in [
            ("/chat/completions", r#"{"model":"m","stream":true}"#),
            ("/chat/completions", r#"{"model":"m","stream":true,"stream_options":null}"#),
            ("/messages", r#"{"model":"m","stream":true}"#),
            ("/chat/completions", r#"{"model":"m"}"#),
        ] {
            call(meter.addr, &post(path, body, "")).await;
        }
        let bodies: Vec<Value> =
            api.requests().iter().map(|(_, b)| serde_json::from_slice(b).unwrap()).collect();
        assert_eq!(bodies[0]["stream_options"], json!({"include_usage": true}));
        assert_eq!(bodies[1]["stream_options"], json!({"include_usage": true}));
        assert_eq!(bodies[2].get("stream_options"), None);
        assert_eq!(bodies[3].get("stream_options"), None);
        // Answers without usage: successful ones count as unmetered.
        assert_eq!((meter.ledger.calls(), meter.ledger.unmetered_calls()), (4, 4));
    })
    .await
}

#[tokio::test]
async fn unreadable_answers_are_relayed_uncharged() {
    within(async {
        let api = fake_api(
            |head, _| match head.target.as_str() {
                "/v1/html" => {
                    vec![b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hi</html>".to_vec()]
                }
                _ => json_answer("500 Internal Server Error", r#"{"error":{"type":"server_error"}}"#),
            },
            None,
        )
        .await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let meter = start(config(api.addr), "a6".into(), 1_000_000, tx).await.unwrap();
        // An HTTP/1.0 client gets the close-delimited body as it came.
        let raw = b"POST /html HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
        let mut client = Client::connect(meter.addr).await;
        let head = client.head(raw).await;
        assert_eq!(client.body(&head).await, b"<html>hi</html>");
        let (status, body) = call(meter.addr, &post("/error", "{}", "")).await;
        assert_eq!((status, &body["error"]["type"]), (500, &json!("server_error")));
        let (head, _) = Client::connect(meter.addr).await.call(b"GET /html HTTP/1.1\r\n\r\n").await;
        assert_eq!(head.status, 200);
        assert_eq!(meter.ledger.used_micro_usd(), 0);
        assert_eq!((meter.ledger.calls(), meter.ledger.unmetered_calls()), (3, 1));
        assert_eq!(
            events(&mut rx),
            [MeterEvent::Unmetered { agent: "a6".into(), status: 200, reason: "body is not JSON".into() }]
        );
    })
    .await
}

#[tokio::test]
async fn upstream_down_is_a_502_and_costs_nothing() {
    within(async {
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let meter = start(config(gone), "a7".into(), 1_000_000, tx).await.unwrap();
        let (status, body) = call(meter.addr, &post("/chat/completions", "{}", "")).await;
        assert_eq!(status, 502);
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("cannot reach the model API at http://{gone}/v1")), "{msg}");
        assert_eq!((meter.ledger.used_micro_usd(), meter.ledger.calls()), (0, 0));
        assert!(events(&mut rx).is_empty());
    })
    .await
}

#[tokio::test]
async fn stopping_closes_the_port_and_its_connections() {
    within(async {
        let api = fake_api(|_, _| json_answer("200 OK", "{}"), None).await;
        let (tx, _rx) = mpsc::unbounded_channel();
        let meter = start(config(api.addr), "a8".into(), 0, tx).await.unwrap();
        let addr = meter.addr;
        // A connection being served (a refusal answered on it, then idle).
        let mut idle = Client::connect(addr).await;
        assert_eq!(idle.call(&post("/chat/completions", "{}", "")).await.0.status, 402);
        let ledger = meter.ledger.clone();
        meter.stop().await;
        assert!(TcpStream::connect(addr).await.is_err());
        let mut rest = Vec::new();
        assert_eq!(idle.rd.read_to_end(&mut rest).await.unwrap(), 0);
        ledger.restore(500, 7);
        assert_eq!((ledger.used_micro_usd(), ledger.calls(), ledger.is_spent()), (500, 7, true));
    })
    .await
}

#[tokio::test]
async fn start_needs_an_upstream_and_prices() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let cfg = Arc::new(MeterConfig::default());
    assert!(matches!(start(cfg, "a".into(), 1, tx.clone()).await, Err(MeterError::NoUpstream)));
    let cfg = MeterConfig { upstream: Some("http://127.0.0.1:1".parse().unwrap()), ..Default::default() };
    assert!(matches!(start(Arc::new(cfg), "a".into(), 1, tx).await, Err(MeterError::NoPrices)));
}

#[test]
fn upstream_urls() {
    let u: Upstream = "http://api.local".parse().unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.prefix.as_str(), u.authority()),
        ("api.local", 80, "", "api.local".into())
    );
    let u: Upstream = "http://10.0.0.1:8080/v1/".parse().unwrap();
    assert_eq!((u.port, u.prefix.as_str(), u.to_string()), (8080, "/v1", "http://10.0.0.1:8080/v1".into()));
    assert_eq!(u.url("/chat/completions?x=1"), "http://10.0.0.1:8080/v1/chat/completions?x=1");
    let u: Upstream = "http://[::1]:9/x".parse().unwrap();
    assert_eq!((u.host.as_str(), u.authority()), ("::1", "[::1]:9".into()));
    let u: Upstream = "https://api.openai.com/v1".parse().unwrap();
    assert_eq!(
        (u.scheme, u.port, u.authority(), u.to_string()),
        (Scheme::Https, 443, "api.openai.com".into(), "https://api.openai.com/v1".into())
    );
    let u: Upstream = "https://gw.corp:8443".parse().unwrap();
    assert_eq!(u.url("/v1/messages"), "https://gw.corp:8443/v1/messages");
    for bad in [
        "ftp://x",
        "http://",
        "https://",
        "http://h:0",
        "http://h:x",
        "http://u@h",
        "http://h/v1?x",
        "http://[::1",
        "api.openai.com",
        "https://h h",
    ] {
        let e = bad.parse::<Upstream>().unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "the error names the input: {e}");
    }
}

#[test]
fn config_table() {
    let cfg: MeterConfig = toml::from_str(
        r#"
        upstream = "http://127.0.0.1:8080/v1"
        idle_timeout_secs = 30
        [prices]
        "gpt-4o" = { input = 2.5, output = 10 }
        "claude-3-5-sonnet*" = { input = 3, output = 15 }
        default = { input = 3, output = 15 }
        "#,
    )
    .unwrap();
    assert_eq!(cfg.upstream.as_ref().unwrap().port, 8080);
    assert_eq!((cfg.idle_timeout_secs, cfg.connect_timeout_secs, cfg.include_stream_usage), (30, 10, true));
    assert_eq!(
        cfg.prices.lookup("claude-3-5-sonnet-latest").unwrap().1,
        PriceMatch::Prefix("claude-3-5-sonnet*".into())
    );
    let routes = cfg.routes().unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!((routes[0].name.as_str(), routes[0].path.as_str()), ("default", ""));
    assert_eq!(routes[0].env, ["OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"]);
    assert_eq!(toml::from_str::<MeterConfig>("").unwrap(), MeterConfig::default());
    assert!(toml::from_str::<MeterConfig>("upstrem = \"http://x\"").is_err());
}

#[test]
fn routes_split_the_meter_by_path_and_env() {
    let cfg: MeterConfig = toml::from_str(
        r#"
        upstream = "https://api.openai.com/v1"
        [prices]
        default = { input = 1, output = 2 }
        [routes.anthropic]
        upstream = "https://api.anthropic.com"
        env = ["ANTHROPIC_BASE_URL"]
        prices = { "claude-*" = { input = 3, output = 15 } }
        [routes.local]
        upstream = "http://127.0.0.1:11434/v1"
        path = "/local/v1/"
        env = ["LOCAL_LLM_URL"]
        "#,
    )
    .unwrap();
    let routes = cfg.routes().unwrap();
    let names: Vec<(&str, &str)> = routes.iter().map(|r| (r.name.as_str(), r.path.as_str())).collect();
    assert_eq!(
        names,
        [("anthropic", "/anthropic"), ("local", "/local/v1"), ("default", "")],
        "longest path first"
    );
    // The default route keeps only the variables no route claims; local falls back to [prices].
    assert_eq!(routes[2].env, ["OPENAI_BASE_URL"]);
    assert_eq!(routes[1].prices, cfg.prices);
    assert_eq!(routes[0].strip("/anthropic/v1/messages").as_deref(), Some("/v1/messages"));
    assert_eq!(routes[0].strip("/anthropic?beta=1").as_deref(), Some("/?beta=1"));
    assert_eq!(routes[0].strip("/anthropic"), Some("/".into()));
    assert_eq!(routes[0].strip("/anthropics/v1"), None, "segment boundaries only");
    assert_eq!(routes[2].strip("/chat/completions").as_deref(), Some("/chat/completions"));
    let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    let env = environment(addr, &routes);
    assert!(
        env.contains(&("ANTHROPIC_BASE_URL".into(), "http://127.0.0.1:4000/anthropic".into())),
        "{env:?}"
    );
    assert!(env.contains(&("OPENAI_BASE_URL".into(), "http://127.0.0.1:4000".into())), "{env:?}");
    assert!(env.contains(&("RUSH_METER_URL".into(), "http://127.0.0.1:4000".into())), "{env:?}");
    assert_eq!(cfg.upstreams().len(), 3);

    let bad = |extra: &str| {
        let text = format!("[prices]\ndefault = {{ input = 1, output = 1 }}\n{extra}");
        toml::from_str::<MeterConfig>(&text).unwrap().routes().unwrap_err().to_string()
    };
    let e = bad("[routes.a]\nupstream = \"http://h\"\npath = \"x\"");
    assert!(e.contains("route a") && e.contains("\"x\""), "{e}");
    let e = bad(
        "[routes.a]\nupstream = \"http://h\"\npath = \"/p\"\n[routes.b]\nupstream = \"http://h\"\npath = \"/p/\"",
    );
    assert!(e.contains("route a's too") || e.contains("route b"), "{e}");
    let e = bad("[routes.a]\nupstream = \"http://h\"\nenv = [\"RUSH_METER_URL\"]");
    assert!(e.contains("RUSH_METER_URL"), "{e}");
    let e = bad("[routes.a]\nupstream = \"http://h\"\nenv = [\"bad-name\"]");
    assert!(e.contains("bad-name"), "{e}");
    let no_prices: MeterConfig = toml::from_str("[routes.a]\nupstream = \"http://h\"").unwrap();
    assert!(no_prices.routes().unwrap_err().to_string().contains("no prices"));
}

#[test]
fn usd_formatting() {
    assert_eq!(usd(0), "$0.000000");
    assert_eq!(usd(10_000), "$0.010000");
    assert_eq!(usd(5_123_456), "$5.123456");
}

mod tls {
    //! Upstreams over TLS (the test CA in testdata/tls), HTTP/2 by ALPN, and agents that
    //! speak HTTP/2 to the meter.

    use std::convert::Infallible;
    use std::path::PathBuf;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response, Version};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/tls").join(name)
    }

    /// An Anthropic-style API on TLS (localhost's certificate, ALPN h2 and http/1.1) that
    /// streams its answer as server-sent events; reports each call's HTTP version.
    async fn tls_api() -> (SocketAddr, mpsc::UnboundedReceiver<(Version, String, Value)>) {
        let certs =
            CertificateDer::pem_file_iter(testdata("localhost.pem")).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(testdata("localhost.key")).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let (version, path) = (req.version(), req.uri().path().to_owned());
                            let body: Value =
                                serde_json::from_slice(&req.into_body().collect().await.unwrap().to_bytes())
                                    .unwrap();
                            tx.send((version, path, body)).unwrap();
                            let sse = concat!(
                                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-test\",",
                                "\"usage\":{\"input_tokens\":100,\"output_tokens\":1}}}\n\n",
                                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,",
                                "\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
                                "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":50}}\n\n",
                                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
                            );
                            let mut resp = Response::new(Full::new(Bytes::from_static(sse.as_bytes())));
                            resp.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (addr, rx)
    }

    fn tls_config(api: SocketAddr, ca: bool) -> Arc<MeterConfig> {
        let ca = if ca { format!("ca_file = {:?}", testdata("ca.pem")) } else { String::new() };
        let text = format!(
            r#"
            {ca}
            [routes.anthropic]
            upstream = "https://localhost:{port}"
            env = ["ANTHROPIC_BASE_URL"]
            prices = {{ "claude-*" = {{ input = 3, output = 15 }} }}
            "#,
            port = api.port()
        );
        Arc::new(toml::from_str(&text).unwrap())
    }

    #[tokio::test]
    async fn a_tls_upstream_is_reached_over_http2_and_its_stream_charged() {
        within(async {
            let (api, mut seen) = tls_api().await;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let meter = start(tls_config(api, true), "t1".into(), 1_000_000, tx).await.unwrap();
            let body = r#"{"model":"claude-test","stream":true,"max_tokens":5}"#;
            for round in 0..2 {
                let mut client = Client::connect(meter.addr).await;
                let head = client
                    .head(&post("/anthropic/v1/messages", body, "anthropic-version: 2023-06-01\r\n"))
                    .await;
                assert_eq!(head.status, 200, "round {round}");
                let got = String::from_utf8(client.body(&head).await).unwrap();
                assert!(
                    got.contains("text_delta") && got.ends_with("{\"type\":\"message_stop\"}\n\n"),
                    "{got}"
                );
                let (version, path, sent) = seen.recv().await.unwrap();
                assert_eq!((version, path.as_str()), (Version::HTTP_2, "/v1/messages"), "ALPN chose h2");
                assert_eq!(sent["model"], "claude-test");
            }
            // 100 input at $3 and 50 output at $15 per million: 300 + 750 µ$, per call.
            assert_eq!((meter.ledger.used_micro_usd(), meter.ledger.calls()), (2100, 2));
            assert!(matches!(
                &events(&mut rx)[..],
                [MeterEvent::Charged { micro_usd: 1050, .. }, MeterEvent::Charged { micro_usd: 1050, .. }]
            ));
            // Calls outside every route are the meter's 404, not forwarded.
            let (status, body) = call(meter.addr, &post("/v1/chat/completions", "{}", "")).await;
            assert_eq!(status, 404, "{body}");
            assert!(body["error"]["message"].as_str().unwrap().contains("/anthropic/"), "{body}");
            assert!(seen.try_recv().is_err());
        })
        .await
    }

    #[tokio::test]
    async fn an_upstream_certificate_nobody_trusts_is_a_502_naming_it() {
        within(async {
            let (api, mut seen) = tls_api().await;
            let (tx, _rx) = mpsc::unbounded_channel();
            let meter = start(tls_config(api, false), "t2".into(), 1_000_000, tx).await.unwrap();
            let (status, body) =
                call(meter.addr, &post("/anthropic/v1/messages", r#"{"model":"claude-test"}"#, "")).await;
            assert_eq!(status, 502, "{body}");
            let msg = body["error"]["message"].as_str().unwrap();
            assert!(msg.contains("https://localhost:") && msg.contains("UnknownIssuer"), "{msg}");
            assert_eq!(body["type"], "error", "in Anthropic's style: {body}");
            assert!(seen.try_recv().is_err(), "nothing reached the API");
            assert_eq!(meter.ledger.used_micro_usd(), 0);
        })
        .await
    }

    #[tokio::test]
    async fn agents_may_speak_http2_to_the_meter() {
        within(async {
            let (api, _seen) = tls_api().await;
            let (tx, _rx) = mpsc::unbounded_channel();
            let meter = start(tls_config(api, true), "t3".into(), 1_000_000, tx).await.unwrap();
            let tcp = TcpStream::connect(meter.addr).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
            tokio::spawn(conn);
            for _ in 0..3 {
                let req = Request::post(format!("http://{}/anthropic/v1/messages", meter.addr))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(br#"{"model":"claude-test","stream":true}"#)))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!((resp.status().as_u16(), resp.version()), (200, Version::HTTP_2));
                let text = resp.into_body().collect().await.unwrap().to_bytes();
                assert!(text.ends_with(b"{\"type\":\"message_stop\"}\n\n"));
            }
            assert_eq!(meter.ledger.used_micro_usd(), 3 * 1050);
            // The budget spent, an HTTP/2 call is refused like any other.
            meter.ledger.set_limit(3000);
            let req = Request::post(format!("http://{}/anthropic/v1/messages", meter.addr))
                .body(Full::new(Bytes::from_static(br#"{"model":"claude-test"}"#)))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), 402);
        })
        .await
    }
}
