//! `rush-bench meter`: what the metering proxy adds to a streamed model API answer, side by
//! side in one run, alternating, on warm (kept-alive) connections as SDKs pool them:
//! - direct: the client speaks HTTP/1.1 over TLS to the API (what an SDK does unmetered);
//! - metered: the client speaks plain HTTP/1.1 to the agent's meter on loopback, which
//!   forwards over its pooled TLS connection (HTTP/2 by ALPN), reads the SSE usage on the
//!   way and charges it.
//!
//! The API is in-process (hyper on rustls, the test certificate of testdata/tls) and
//! streams `EVENTS` server-sent events of ~`EVENT_BYTES` each, the first at once:
//! time-to-first-token is the time to the first event's bytes; throughput is the whole
//! answer's bytes over its time.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rush_agentd::services::meter::{self, MeterConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};

const ROUNDS: usize = 300;
const EVENTS: usize = 2000;
const EVENT_BYTES: usize = 256;

fn tls_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/tls"))
}

#[allow(deprecated)] // ring: see rush-agentd's meter/proxy.rs.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SSE answer: an Anthropic-style stream, usage in its first and last events.
fn events() -> Vec<Bytes> {
    let pad = "x".repeat(EVENT_BYTES - 120);
    let mut out = vec![Bytes::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-bench\",\
         \"usage\":{\"input_tokens\":100,\"output_tokens\":1}}}\n\n",
    )];
    for _ in 0..EVENTS {
        out.push(Bytes::from(format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"delta\":{{\"text\":\"{pad}\"}}}}\n\n"
        )));
    }
    out.push(Bytes::from(format!(
        "event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{EVENTS}}}}}\n\n"
    )));
    out
}

async fn api() -> SocketAddr {
    let certs =
        CertificateDer::pem_file_iter(tls_dir().join("localhost.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(tls_dir().join("localhost.key")).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(events());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let answer = answer.clone();
                    async move {
                        // `?paced`: the first event, then a pause before the rest, so the
                        // first event's time is not hidden in write buffering.
                        let paced = req.uri().query() == Some("paced");
                        let _ = req.into_body().collect().await;
                        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(64);
                        tokio::spawn(async move {
                            for (i, event) in answer.iter().enumerate() {
                                if tx.send_data(event.clone()).await.is_err() {
                                    return;
                                }
                                if i == 0 && paced {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                            }
                        });
                        let mut resp = Response::new(body);
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
    addr
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A kept-alive HTTP/1.1 connection: over TLS to the API, or plain to the meter.
async fn connect(addr: SocketAddr, tls: bool) -> Sender {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    if tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(tls_dir().join("ca.pem")).unwrap()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let stream = conn.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let (send, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(c);
        send
    } else {
        let (send, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(c);
        send
    }
}

/// One streamed call: (time to the first bytes, total time, bytes).
async fn call(send: &mut Sender, path: &str) -> (Duration, Duration, usize) {
    let req = Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"model":"claude-bench","stream":true}"#)))
        .unwrap();
    let start = Instant::now();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (mut first, mut bytes) = (None, 0);
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            first.get_or_insert_with(|| start.elapsed());
            bytes += d.len();
        }
    }
    (first.unwrap(), start.elapsed(), bytes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let api = api().await;
        let cfg: MeterConfig = toml::from_str(&format!(
            "ca_file = {:?}\n[routes.anthropic]\nupstream = \"https://localhost:{}\"\n\
             prices = {{ default = {{ input = 3, output = 15 }} }}\n",
            tls_dir().join("ca.pem"),
            api.port()
        ))
        .unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let m = meter::start(Arc::new(cfg), "bench".into(), u64::MAX, tx).await.unwrap();
        let (mut direct, mut metered) = (connect(api, true).await, connect(m.addr, false).await);
        let (mut ttft, mut rate) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
        for round in 0..ROUNDS + 20 {
            let first = [
                call(&mut direct, "/v1/messages?paced").await.0,
                call(&mut metered, "/anthropic/v1/messages?paced").await.0,
            ];
            let bulk =
                [call(&mut direct, "/v1/messages").await, call(&mut metered, "/anthropic/v1/messages").await];
            if round < 20 {
                continue; // warm-up: pools, TLS sessions, allocators
            }
            for i in 0..2 {
                ttft[i].push(first[i].as_secs_f64() * 1e6);
                rate[i].push(bulk[i].2 as f64 / bulk[i].1.as_secs_f64() / 1e6);
            }
        }
        let calls = m.ledger.calls();
        assert_eq!(calls as usize, 2 * (ROUNDS + 20), "every metered call was charged");
        let [t_direct, t_metered] = ttft.map(median);
        let [r_direct, r_metered] = rate.map(median);
        let size = events().iter().map(Bytes::len).sum::<usize>();
        println!(
            "\n## The meter on a streamed answer: metered vs direct (median of {ROUNDS} alternated calls \
             each, {EVENTS} SSE events, {} KiB, warm connections)\n",
            size / 1024
        );
        println!(
            "time to first token: the first event, then 5 ms before the rest; throughput: all at once.\n"
        );
        println!("| measure | direct (TLS to the API) | metered (agent → meter → TLS) | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| time to first token | {t_direct:.0} µs | {t_metered:.0} µs | {:.2}x |",
            t_metered / t_direct
        );
        println!(
            "| stream throughput | {r_direct:.0} MB/s | {r_metered:.0} MB/s | {:.2}x |",
            r_direct / r_metered
        );
        println!(
            "\nadded to the first token: {:.0} µs per call (a model API's own time to first token is \
             hundreds of ms); throughput ratio = direct / metered (below 1: the meter is faster, \
             TLS work moved off the client's thread)",
            t_metered - t_direct
        );
        println!("\ncharged: {calls} calls, {}", meter::usd(m.ledger.used_micro_usd()));
    });
}
