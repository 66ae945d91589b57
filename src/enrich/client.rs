//! Client families: the part of a user agent that names the software, so a
//! new version of a key's usual SDK is not a new client.

/// The family of a user agent: its first product token without version, as
/// written (`aws-cli/2.15.0 Python/3.11` is `aws-cli`), `(none)` for none.
pub fn client_family(user_agent: &str) -> &str {
    let trimmed = user_agent.trim();
    // The delimiters are ASCII, so the first byte that is one is the first
    // such char, at a char boundary: a byte search, not a char-by-char one.
    let end = trimmed
        .bytes()
        .position(|byte| matches!(byte, b'/' | b' ' | b'(' | b';'))
        .unwrap_or(trimmed.len());
    let family = &trimmed[..end];
    if family.is_empty() { "(none)" } else { family }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_drop_versions() {
        assert_eq!(client_family("aws-cli/2.15.0 Python/3.11"), "aws-cli");
        assert_eq!(client_family("python-requests/2.31.0"), "python-requests");
        assert_eq!(client_family("Mozilla/5.0 (X11)"), "Mozilla");
        assert_eq!(client_family("curl"), "curl");
        assert_eq!(client_family(""), "(none)");
        assert_eq!(client_family(" \u{2003}"), "(none)");
        assert_eq!(client_family("/2.0"), "(none)");
        assert_eq!(client_family("\u{2003}édge\u{2003}/1.0"), "édge\u{2003}");
        assert_eq!(client_family("sdk;v=2"), "sdk");
        assert_eq!(client_family("sdk(x)"), "sdk");
    }
}
