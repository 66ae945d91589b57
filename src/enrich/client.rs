//! Client families: the part of a user agent that names the software, so a
//! new version of a key's usual SDK is not a new client.

/// The family of a user agent: its first product token without version, as
/// written (`aws-cli/2.15.0 Python/3.11` is `aws-cli`), `(none)` for none.
pub fn client_family(user_agent: &str) -> &str {
    let trimmed = user_agent.trim();
    if trimmed.is_empty() {
        return "(none)";
    }
    let end = trimmed.find(['/', ' ', '(', ';']).unwrap_or(trimmed.len());
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
    }
}
