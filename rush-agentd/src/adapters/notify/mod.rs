//! Delivery channels of the human attention queue: webhooks out (Slack-compatible messages,
//! retried, optionally signed), the callback listener in (Slack's signed interactive
//! payloads and e-mail links), and e-mail out (SMTP through lettre).
//!
//! Like every adapter it imports no service: it has types of its own ([`webhook::Notice`],
//! [`listener::Callback`], [`email::DigestItem`], ...) and the approvals service maps to them.
//! Decisions come back through [`listener::DecisionSink`], which the service implements.

pub mod email;
pub mod listener;
pub mod webhook;

use std::path::Path;
use std::sync::OnceLock;

use rustls::pki_types::CertificateDer;

/// Errors setting a channel up (delivery failures have types of their own, with the attempts).
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("CA file {path}: {why}")]
    CaFile { path: String, why: String },
    #[error("TLS client setup: {0}")]
    Tls(String),
}

/// The system's trusted roots, read once per process.
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "notify: a system root certificate could not be read");
        }
        found.certs
    })
}

/// Every certificate in the PEM file `path`; an error when there is none.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, NotifyError> {
    use rustls::pki_types::pem::PemObject;
    let bad = |why: String| NotifyError::CaFile { path: path.display().to_string(), why };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// `s` cut to at most `max` characters, with an ellipsis when cut (Slack refuses a message
/// whose texts are over their limits, and a subject line should stay one line).
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Text safe inside HTML elements and quoted attribute values.
fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_counts_characters_not_bytes() {
        assert_eq!(clip("héllo", 5), "héllo");
        assert_eq!(clip("héllo wörld", 6), "héllo…");
        assert_eq!(clip("", 3), "");
    }

    #[test]
    fn escape_html_escapes_markup_and_quotes() {
        assert_eq!(escape_html(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = read_ca_file(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM certificate"), "{e}");
        let e = read_ca_file(&dir.path().join("missing.pem")).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
        let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/tls/ca.pem");
        assert_eq!(read_ca_file(&ca).unwrap().len(), 1);
    }
}
