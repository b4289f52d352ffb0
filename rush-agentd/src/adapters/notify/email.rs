//! E-mail out: approval digests sent over SMTP with lettre (blocking: the service sends from
//! a blocking thread), TLS by rustls with the system's roots plus an optional CA file.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Message, SmtpTransport, Transport};

use super::{clip, escape_html};

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SmtpTls {
    /// STARTTLS, and no mail if the server does not offer it (submission, port 587).
    #[default]
    #[serde(rename = "starttls")]
    StartTlsRequired,
    /// STARTTLS when offered, else plain text: anyone on the path can strip the offer, so no
    /// credentials are sent this way except to a loopback server.
    #[serde(rename = "starttls-opportunistic")]
    StartTlsOpportunistic,
    /// Plain text: only sensible to a relay on this host.
    #[serde(rename = "none")]
    None,
    /// TLS from the first byte (submissions, port 465).
    #[serde(rename = "implicit")]
    Implicit,
}

impl SmtpTls {
    /// The usual port for this mode: 587, 25 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::StartTlsRequired | SmtpTls::StartTlsOpportunistic => 587,
            SmtpTls::None => 25,
            SmtpTls::Implicit => 465,
        }
    }
}

/// The SMTP server mail is submitted to, and as whom.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    /// Also the name its certificate must have.
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// With `password`: AUTH PLAIN or LOGIN, whichever the server offers.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The From address, e.g. `Rush <rush@example.com>`.
    pub from: String,
    /// PEM certificates trusted besides the system's roots (a self-hosted relay, the tests).
    pub ca_file: Option<PathBuf>,
    /// Bounds the connect and each read and write.
    pub timeout: Duration,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("from", &self.from)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    #[error("e-mail address {address:?}: {why}")]
    Address { address: String, why: String },
    #[error("SMTP server {server}: {why}")]
    Config { server: String, why: String },
    #[error("SMTP server {server}: CA file {path}: {why}")]
    CaFile { server: String, path: String, why: String },
    #[error("e-mail to {to}: cannot build the message: {why}")]
    Message { to: String, why: String },
    /// The server refused, or the connection, TLS or authentication failed. `permanent`: a 5xx
    /// answer, which a retry would get again.
    #[error("SMTP server {server}: {why}")]
    Smtp { server: String, permanent: bool, why: String },
}

impl EmailError {
    /// Whether sending the same message again cannot help (bad address, refused credentials,
    /// a 5xx answer); connection failures and 4xx answers are worth a retry.
    pub fn is_permanent(&self) -> bool {
        match self {
            EmailError::Smtp { permanent, .. } => *permanent,
            _ => true,
        }
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The name this host gives in EHLO: its hostname when it looks like one (lettre's default
/// without its `hostname` feature is `localhost`, which some relays refuse).
fn hello_name() -> ClientId {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok { ClientId::Domain(name.to_owned()) } else { ClientId::default() }
}

/// A random Message-ID on the From address's domain (lettre adds none by itself).
fn message_id(from: &Mailbox) -> String {
    let mut bytes = [0u8; 16];
    let rng = ring::rand::SystemRandom::new();
    // On failure (no getrandom) the ID is all zeros but the Date makes the mail unique enough.
    let _ = ring::rand::SecureRandom::fill(&rng, &mut bytes);
    format!("<{}@{}>", data_encoding::HEXLOWER.encode(&bytes), from.email.domain())
}

/// A subject on one line: control characters (a summary's newlines) become spaces.
fn one_line(s: &str) -> String {
    let spaced: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    clip(spaced.trim(), 200)
}

/// Sends one message to `to`: `text`, and with `html` a multipart/alternative of both.
pub fn send(
    cfg: &SmtpConfig,
    to: &str,
    subject: &str,
    text: &str,
    html: Option<&str>,
) -> Result<(), EmailError> {
    let server = format!("{}:{}", cfg.host, cfg.port);
    let address = |address: &str| {
        address
            .parse::<Mailbox>()
            .map_err(|e| EmailError::Address { address: address.to_owned(), why: e.to_string() })
    };
    let (from, recipient) = (address(&cfg.from)?, address(to)?);
    let builder = Message::builder()
        .message_id(Some(message_id(&from)))
        .from(from)
        .to(recipient)
        .subject(one_line(subject))
        // RFC 3834: no vacation auto-replies to a machine.
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ));
    let message = match html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(text.to_owned(), html.to_owned())),
        None => {
            builder.singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text.to_owned()))
        }
    }
    .map_err(|e| EmailError::Message { to: to.to_owned(), why: e.to_string() })?;
    transport(cfg, &server)?.send(&message).map(|_| ()).map_err(|e| EmailError::Smtp {
        server,
        // Client errors (STARTTLS or no AUTH mechanism offered) are configuration: as permanent.
        permanent: e.is_permanent() || e.is_client(),
        why: e.to_string(),
    })
}

fn transport(cfg: &SmtpConfig, server: &str) -> Result<SmtpTransport, EmailError> {
    let config = |why: &str| EmailError::Config { server: server.to_owned(), why: why.to_owned() };
    let credentials = match (&cfg.username, &cfg.password) {
        (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.clone())),
        (None, None) => None,
        _ => return Err(config("username and password go together")),
    };
    let in_clear = matches!(cfg.tls, SmtpTls::None | SmtpTls::StartTlsOpportunistic);
    if credentials.is_some() && in_clear && !is_loopback(&cfg.host) {
        return Err(config("credentials would be sent without TLS; use tls = starttls or implicit"));
    }
    let tls = match cfg.tls {
        SmtpTls::None => Tls::None,
        mode => {
            let mut params = TlsParameters::builder(cfg.host.clone());
            if let Some(path) = &cfg.ca_file {
                let bad = |why: String| EmailError::CaFile {
                    server: server.to_owned(),
                    path: path.display().to_string(),
                    why,
                };
                let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(bad("no PEM certificate in it".into()));
                }
                params =
                    params.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| bad(e.to_string()))?);
            }
            let params = params.build_rustls().map_err(|e| config(&format!("TLS setup: {e}")))?;
            match mode {
                SmtpTls::StartTlsOpportunistic => Tls::Opportunistic(params),
                SmtpTls::Implicit => Tls::Wrapper(params),
                _ => Tls::Required(params),
            }
        }
    };
    let mut builder = SmtpTransport::builder_dangerous(&cfg.host)
        .port(cfg.port)
        .tls(tls)
        .hello_name(hello_name())
        .timeout(Some(cfg.timeout));
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials).authentication(vec![Mechanism::Plain, Mechanism::Login]);
    }
    Ok(builder.build())
}

/// A pending item of a digest, with the links of its confirmation pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestItem {
    pub id: u64,
    pub summary: String,
    /// Shown as name: value lines (agent, session, priority, deadline, risk, ...).
    pub fields: Vec<(String, String)>,
    pub approve_link: String,
    pub reject_link: String,
}

/// The digest of `items` pending: (subject, plain text, HTML).
pub fn digest(items: &[DigestItem]) -> (String, String, String) {
    let subject = match items {
        [one] => one_line(&format!("Rush: approval needed: #{} {}", one.id, one.summary)),
        _ => format!("Rush: {} requests await your decision", items.len()),
    };
    let intro = match items.len() {
        1 => "A request awaits your decision.".to_owned(),
        n => format!("{n} requests await your decision."),
    };
    let note = "Each link opens a page asking you to confirm: nothing is decided until you press its button.";

    let mut text = format!("{intro}\n\n");
    for item in items {
        text.push_str(&format!("#{}  {}\n", item.id, item.summary));
        for (name, value) in &item.fields {
            text.push_str(&format!("    {name}: {value}\n"));
        }
        text.push_str(&format!("    Approve: {}\n    Reject:  {}\n\n", item.approve_link, item.reject_link));
    }
    text.push_str(&format!("{note}\n-- \nrush-agentd\n"));

    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\
         <body style=\"font-family:system-ui,sans-serif;color:#222\">\n<p>{}</p>\n",
        escape_html(&subject),
        escape_html(&intro)
    );
    let link = |href: &str, label: &str, color: &str| {
        format!(
            "<a href=\"{}\" style=\"display:inline-block;padding:6px 14px;margin-right:8px;border-radius:4px;\
             color:#fff;background:{color};text-decoration:none\">{label}</a>",
            escape_html(href)
        )
    };
    for item in items {
        html.push_str(&format!(
            "<div style=\"margin:16px 0;padding:12px;border:1px solid #ddd;border-radius:6px\">\n\
             <p style=\"margin:0 0 8px\"><strong>#{}</strong> {}</p>\n",
            item.id,
            escape_html(&item.summary)
        ));
        if !item.fields.is_empty() {
            html.push_str("<table style=\"border-collapse:collapse;margin-bottom:8px\">\n");
            for (name, value) in &item.fields {
                html.push_str(&format!(
                    "<tr><td style=\"padding:0 12px 0 0;color:#666\">{}</td><td>{}</td></tr>\n",
                    escape_html(name),
                    escape_html(value)
                ));
            }
            html.push_str("</table>\n");
        }
        html.push_str(&format!(
            "<p style=\"margin:0\">{}{}</p>\n</div>\n",
            link(&item.approve_link, "Approve", "#2e7d32"),
            link(&item.reject_link, "Reject", "#c62828")
        ));
    }
    html.push_str(&format!("<p><small>{}</small></p>\n</body></html>\n", escape_html(note)));
    (subject, text, html)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use super::*;

    fn items() -> Vec<DigestItem> {
        vec![
            DigestItem {
                id: 12,
                summary: "rm -rf <build>\nthen push".into(),
                fields: vec![("agent".into(), "coder-1".into()), ("risk".into(), "high & rising".into())],
                approve_link: "https://rush.example/email/tok12?decision=approve".into(),
                reject_link: "https://rush.example/email/tok12?decision=reject".into(),
            },
            DigestItem {
                id: 13,
                summary: "open port 8080".into(),
                fields: vec![],
                approve_link: "https://rush.example/email/tok13?decision=approve&x=\"1\"".into(),
                reject_link: "https://rush.example/email/tok13?decision=reject".into(),
            },
        ]
    }

    #[test]
    fn digest_renders_every_item_with_its_links() {
        let (subject, text, html) = digest(&items());
        assert_eq!(subject, "Rush: 2 requests await your decision");
        assert!(
            text.starts_with("2 requests await your decision.\n\n#12  rm -rf <build>\nthen push\n"),
            "{text}"
        );
        assert!(text.contains("    agent: coder-1\n    risk: high & rising\n"), "{text}");
        assert!(text.contains("    Approve: https://rush.example/email/tok12?decision=approve\n"), "{text}");
        assert!(text.contains("    Reject:  https://rush.example/email/tok13?decision=reject\n"), "{text}");
        assert!(text.contains("nothing is decided until you press its button"), "{text}");
        // HTML: escaped text and attributes, both links of each item.
        assert!(html.contains("<strong>#12</strong> rm -rf &lt;build&gt;"), "{html}");
        assert!(html.contains("<td>high &amp; rising</td>"), "{html}");
        assert!(
            html.contains("href=\"https://rush.example/email/tok13?decision=approve&amp;x=&quot;1&quot;\""),
            "{html}"
        );
        assert_eq!(html.matches(">Approve</a>").count(), 2);
        assert_eq!(html.matches(">Reject</a>").count(), 2);
        assert!(!html.contains("<build>"));

        let (subject, text, _) = digest(&items()[..1]);
        assert_eq!(subject, "Rush: approval needed: #12 rm -rf <build> then push");
        assert!(text.starts_with("A request awaits your decision."));
    }

    #[test]
    fn plaintext_credentials_refused_off_loopback() {
        let cfg = SmtpConfig {
            host: "mail.example.com".into(),
            port: 25,
            tls: SmtpTls::None,
            username: Some("u".into()),
            password: Some("p".into()),
            from: "rush@example.com".into(),
            ca_file: None,
            timeout: Duration::from_secs(1),
        };
        let e = send(&cfg, "a@example.com", "s", "t", None).unwrap_err();
        assert!(matches!(e, EmailError::Config { .. }), "{e}");
        assert!(
            e.to_string().contains("mail.example.com:25") && e.to_string().contains("without TLS"),
            "{e}"
        );
        let e = send(
            &SmtpConfig { tls: SmtpTls::StartTlsOpportunistic, ..cfg.clone() },
            "a@example.com",
            "s",
            "t",
            None,
        )
        .unwrap_err();
        assert!(matches!(e, EmailError::Config { .. }), "{e}");
        let e = send(&cfg, "not an address", "s", "t", None).unwrap_err();
        assert!(matches!(e, EmailError::Address { .. }) && e.to_string().contains("not an address"), "{e}");
        assert!(is_loopback("localhost") && is_loopback("127.0.0.1") && is_loopback("[::1]"));
        assert!(!is_loopback("10.0.0.1") && !is_loopback("localhost.example.com"));
    }

    #[test]
    fn tls_modes_parse_from_config_names() {
        #[derive(serde::Deserialize)]
        struct C {
            tls: SmtpTls,
        }
        for (name, mode) in [
            ("starttls", SmtpTls::StartTlsRequired),
            ("starttls-opportunistic", SmtpTls::StartTlsOpportunistic),
            ("none", SmtpTls::None),
            ("implicit", SmtpTls::Implicit),
        ] {
            assert_eq!(toml::from_str::<C>(&format!("tls = \"{name}\"")).unwrap().tls, mode);
        }
        assert_eq!(SmtpTls::default(), SmtpTls::StartTlsRequired);
        assert_eq!(SmtpTls::Implicit.default_port(), 465);
    }

    // --- Against kernel-tests/fixtures/smtp_sink.py (aiosmtpd), a real SMTP server ---

    fn repo() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
    }

    /// The SDK venv's python (as kernel-tests' `cached("RUSH_SDK_VENV", "sdk-venv")`), when it
    /// has aiosmtpd.
    fn smtp_python() -> Option<PathBuf> {
        let set = |v: &str| std::env::var_os(v).filter(|v| !v.is_empty()).map(PathBuf::from);
        let venv = set("RUSH_SDK_VENV").unwrap_or_else(|| {
            set("RUSH_CACHE_DIR")
                .unwrap_or_else(|| set("HOME").unwrap_or_else(|| "/root".into()).join(".cache/rush"))
                .join("sdk-venv")
        });
        let py = venv.join("bin/python");
        let ok = Command::new(&py)
            .args(["-c", "import aiosmtpd"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(py)
    }

    struct Sink {
        child: Child,
        port: u16,
        maildir: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Sink {
        fn start(py: &Path, tls: bool, auth: Option<(&str, &str)>) -> Sink {
            let dir = tempfile::tempdir().unwrap();
            let (port_file, maildir) = (dir.path().join("port"), dir.path().join("mail"));
            let mut cmd = Command::new(py);
            cmd.arg(repo().join("kernel-tests/fixtures/smtp_sink.py"))
                .arg("--port-file")
                .arg(&port_file)
                .arg("--maildir")
                .arg(&maildir)
                .stdout(Stdio::null());
            if tls {
                let t = repo().join("testdata/tls");
                cmd.arg("--tls-cert")
                    .arg(t.join("localhost.pem"))
                    .arg("--tls-key")
                    .arg(t.join("localhost.key"));
            }
            if let Some((user, password)) = auth {
                cmd.args(["--user", user, "--password", password]);
            }
            let child = cmd.spawn().expect("smtp_sink.py");
            let mut sink = Sink { child, port: 0, maildir, _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(15);
            while !port_file.exists() {
                assert!(Instant::now() < deadline, "smtp_sink.py did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            sink.port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
            sink
        }

        fn messages(&self) -> Vec<(String, serde_json::Value)> {
            let mut n = 1;
            let mut out = Vec::new();
            while let Ok(eml) = std::fs::read_to_string(self.maildir.join(format!("{n}.eml"))) {
                let envelope = std::fs::read_to_string(self.maildir.join(format!("{n}.json"))).unwrap();
                out.push((eml, serde_json::from_str(&envelope).unwrap()));
                n += 1;
            }
            out
        }
    }

    impl Drop for Sink {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn skip(test: &str, why: &str) {
        use std::io::Write;
        // Straight to stderr: libtest captures the print macros of passing tests.
        let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    }

    fn config(port: u16, tls: SmtpTls, auth: Option<(&str, &str)>) -> SmtpConfig {
        SmtpConfig {
            host: "localhost".into(),
            port,
            tls,
            username: auth.map(|a| a.0.to_owned()),
            password: auth.map(|a| a.1.to_owned()),
            from: "Rush <rush@example.com>".into(),
            ca_file: Some(repo().join("testdata/tls/ca.pem")),
            timeout: Duration::from_secs(10),
        }
    }

    const NO_AIOSMTPD: &str = "no python with aiosmtpd (cargo xtask setup installs it in the SDK venv)";

    #[test]
    fn sends_over_starttls_with_auth() {
        let Some(py) = smtp_python() else { return skip("sends_over_starttls_with_auth", NO_AIOSMTPD) };
        let sink = Sink::start(&py, true, Some(("rush", "s3cret")));
        let (subject, text, html) = digest(&items());
        let cfg = config(sink.port, SmtpTls::StartTlsRequired, Some(("rush", "s3cret")));
        send(&cfg, "Ops <ops@example.com>", &subject, &text, Some(&html)).unwrap();
        let got = sink.messages();
        assert_eq!(got.len(), 1);
        let (eml, envelope) = &got[0];
        assert_eq!(envelope["mail_from"], "rush@example.com");
        assert_eq!(envelope["rcpt_tos"], serde_json::json!(["ops@example.com"]));
        assert!(eml.contains("Subject: Rush: 2 requests await your decision\r\n"), "{eml}");
        assert!(eml.contains("Auto-Submitted: auto-generated\r\n"), "{eml}");
        assert!(eml.contains("Message-ID: <") && eml.contains("@example.com>"), "{eml}");
        assert!(eml.contains("multipart/alternative"), "{eml}");
        assert!(eml.contains("text/html") && eml.contains("text/plain"), "{eml}");
    }

    #[test]
    fn wrong_password_names_the_server() {
        let Some(py) = smtp_python() else { return skip("wrong_password_names_the_server", NO_AIOSMTPD) };
        let sink = Sink::start(&py, true, Some(("rush", "s3cret")));
        let cfg = config(sink.port, SmtpTls::StartTlsRequired, Some(("rush", "guess")));
        let e = send(&cfg, "ops@example.com", "s", "t", None).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format!("localhost:{}", sink.port)) && text.contains("535"), "{text}");
        assert!(e.is_permanent(), "{e:?}");
        assert!(sink.messages().is_empty());
    }

    #[test]
    fn starttls_required_but_not_offered() {
        let Some(py) = smtp_python() else { return skip("starttls_required_but_not_offered", NO_AIOSMTPD) };
        let sink = Sink::start(&py, false, None);
        let e = send(&config(sink.port, SmtpTls::StartTlsRequired, None), "ops@example.com", "s", "t", None)
            .unwrap_err();
        assert!(e.to_string().contains(&format!("localhost:{}", sink.port)), "{e}");
        assert!(sink.messages().is_empty());
        // Opportunistic goes on in plain text (no credentials, so that is allowed), as does None.
        send(&config(sink.port, SmtpTls::StartTlsOpportunistic, None), "ops@example.com", "s", "t", None)
            .unwrap();
        send(&config(sink.port, SmtpTls::None, None), "ops@example.com", "s2", "t", None).unwrap();
        assert_eq!(sink.messages().len(), 2);
    }

    #[test]
    fn untrusted_certificate_refused() {
        let Some(py) = smtp_python() else { return skip("untrusted_certificate_refused", NO_AIOSMTPD) };
        let sink = Sink::start(&py, true, None);
        let cfg = SmtpConfig { ca_file: None, ..config(sink.port, SmtpTls::StartTlsRequired, None) };
        let e = send(&cfg, "ops@example.com", "s", "t", None).unwrap_err();
        assert!(e.to_string().contains(&format!("localhost:{}", sink.port)), "{e}");
        assert!(sink.messages().is_empty());
    }
}
