//! What a service's failure is (a [`Fault`]) and errors as one line of text.
//!
//! Services return their own error types ([`service_error!`]), never the protocol's:
//! only the edge (`api`) turns a [`Fault`] into a wire error, in one place.

/// What kind of failure a service reports: what its caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself is not usable as sent (a field its form needs is missing).
    Malformed,
    /// A value that cannot be used; the message names it and why.
    Invalid,
    NotFound,
    Exists,
    /// The caller may not do this.
    Forbidden,
    /// The kernel or the system cannot keep what is asked for.
    Unsupported,
    /// Out of room (a full disk, a full snapshot store).
    Exhausted,
    /// The daemon or a system call failed; not the caller's doing.
    Internal,
}

/// Defines a service's error type: a [`Fault`] and one line naming the input or object
/// concerned and why. `name!(Fault::NotFound, "no agent {n:?}")` reads at the call site.
#[macro_export]
macro_rules! service_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[error("{message}")]
        pub struct $name {
            pub fault: $crate::core::error::Fault,
            pub message: String,
        }

        impl $name {
            pub fn new(fault: $crate::core::error::Fault, message: impl Into<String>) -> Self {
                $name { fault, message: message.into() }
            }
        }
    };
}

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
