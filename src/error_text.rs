//! An error and its causes on one line, for messages and logs: what
//! failed, then why. Many errors keep the why in their sources (reqwest
//! says only "error sending request"; the refused connection or the
//! untrusted certificate is below it), and `Display` shows the top alone.

/// `what: cause: cause` (what anyhow's `{:#}` prints).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        // A transparent wrapper shows its cause's text again: skip it.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    /// An error whose text does not include its source's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_spelled_out_once() {
        let inner = std::io::Error::other("invalid peer certificate: UnknownIssuer");
        // io::Error shows its inner error's text and has its source.
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(
            chain(&outer),
            "error sending request: invalid peer certificate: UnknownIssuer"
        );
    }
}
