//! Keeping secrets out of messages: a source URL is only ever quoted with
//! its userinfo hidden.

/// `text` with the userinfo of its authority (`user:password@`) replaced by
/// `***`: `s3://key:secret@bucket/p` shows as `s3://***@bucket/p`. Every error
/// or log line that quotes a source URL as given goes through this.
///
/// Errs on the side of hiding: with userinfo, everything up to the *last* `@`
/// goes (a secret may itself contain `/` or `@`). A URL without userinfo is
/// shown as it is (`nfs://server/export/a@b`).
pub fn redacted_url(text: &str) -> String {
    let (head, rest) = match text.split_once("://") {
        Some((scheme, rest)) if has_userinfo(text) => (format!("{scheme}://"), rest),
        Some(_) => return text.to_string(),
        // Not a URL with an authority: hide whatever precedes an '@'.
        None => (String::new(), text),
    };
    match rest.rfind('@') {
        Some(at) => format!("{head}***{}", &rest[at..]),
        None => text.to_string(),
    }
}

/// True when the URL's authority carries a user or password
/// (`scheme://user[:password]@host/...`), also when a raw `/`, `?` or `#` in
/// the password cuts the authority short (`s3://key:se/cret@bucket`, as AWS
/// secret keys often contain a `/`).
pub fn has_userinfo(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return true;
    }
    if !rest.contains('@') {
        return false;
    }
    // An '@' further on, after an authority with a ':' in it: `user:pass/...@`,
    // unless the ':' is a port (nfs://server:2049/a@b). s3:// and file://
    // URLs never have a port, so there any ':' counts.
    match scheme.to_ascii_lowercase().as_str() {
        "s3" | "file" => authority.contains(':'),
        _ => !is_host_and_port(authority),
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` (or empty): no room for a password.
fn is_host_and_port(authority: &str) -> bool {
    let after_host = if authority.starts_with('[') {
        match authority.find(']') {
            Some(i) => &authority[i + 1..],
            None => return false,
        }
    } else {
        authority.find(':').map_or("", |i| &authority[i..])
    };
    match after_host.strip_prefix(':') {
        Some(port) => port.bytes().all(|b| b.is_ascii_digit()),
        None => after_host.is_empty(),
    }
}

/// Where the credentials of each kind of source belong instead (`None`: not
/// a scheme we support, which is the error to report then).
pub(super) fn credentials_hint(text: &str) -> Option<&'static str> {
    let scheme = text.split_once("://")?.0.to_ascii_lowercase();
    match scheme.as_str() {
        "s3" => Some(
            "give S3 keys in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, \
             AWS_SESSION_TOKEN) or in a shared credentials file (--credentials-file, --profile); \
             with the CSI driver, in the provisioner/node-stage secret",
        ),
        "nfs" => Some(
            "NFSv3 (AUTH_SYS) has no passwords: choose the identity with --uid, --gid and --groups",
        ),
        "file" => Some("a file:// source is a local directory and takes no user or password"),
        _ => None,
    }
}
