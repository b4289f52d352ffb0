//! Errors as one line of text.

/// `e` and its sources, joined: for messages that leave the daemon as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        // Errors that print their source themselves (thiserror's `{source}`) would say it twice.
        let text = src.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = src.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("state database {path}")]
        struct Outer {
            path: String,
            #[source]
            source: std::io::Error,
        }
        let e = Outer { path: "/s".into(), source: std::io::Error::other("x") };
        assert_eq!(error_chain(&e), "state database /s: x");
        #[derive(Debug, thiserror::Error)]
        #[error("saving: {0}")]
        struct Twice(#[source] std::io::Error);
        assert_eq!(error_chain(&Twice(std::io::Error::other("disk full"))), "saving: disk full");
    }
}
