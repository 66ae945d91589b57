//! Endpoints as keys see them: ids in paths templated away, so
//! `/v1/orders/8812` and `/v1/orders/9120` are one endpoint, and the
//! model's sensitive-endpoint patterns matched against the templates.

/// Replaces id-like path segments (numbers, UUIDs, long tokens with digits)
/// with `{id}` and drops the query string, so `/v1/orders/8812?x=1` and
/// `/v1/orders/9120` are one endpoint. Returns the input itself when nothing
/// changes, so the common case copies nothing.
pub fn normalize_endpoint<'a>(endpoint: &'a str, scratch: &'a mut String) -> &'a str {
    // One pass over the bytes, classing each by a table: nothing is copied
    // until the first id segment, and then only what is needed. Runs on
    // every event. The inner loop walks a segment without a branch on the
    // byte's class (digits and other bytes are summed), so ids mixing
    // digits and letters cost no mispredictions. `/`, `?` and `#` are
    // ASCII, so every cut is at a char boundary.
    let bytes = endpoint.as_bytes();
    let mut templated = false;
    let mut start = 0;
    loop {
        let mut at = start;
        let mut digits = 0;
        let mut others = 0;
        let class = loop {
            let class = bytes.get(at).map_or(CUT, |&byte| BYTE_CLASS[usize::from(byte)]);
            if class >= SLASH {
                break class;
            }
            digits += usize::from(class == DIGIT);
            others += usize::from(class == OTHER);
            at += 1;
        };
        let segment = &endpoint[start..at];
        if others == 0 && is_id_segment(segment, digits) {
            if !templated {
                templated = true;
                scratch.clear();
                scratch.push_str(&endpoint[..start]);
            }
            scratch.push_str("{id}");
        } else if templated {
            scratch.push_str(segment);
        }
        if class == CUT {
            return if templated { scratch.as_str() } else { &endpoint[..at] };
        }
        if templated {
            scratch.push('/');
        }
        start = at + 1;
    }
}

/// Byte classes for [`normalize_endpoint`]: a digit; a token character
/// (ASCII letters and `-_.:`); anything else inside a segment; a segment's
/// end (`/`); the path's end (`?`, `#`). The two ends are the largest.
const DIGIT: u8 = 0;
const TOKEN: u8 = 1;
const OTHER: u8 = 2;
const SLASH: u8 = 3;
const CUT: u8 = 4;

const BYTE_CLASS: [u8; 256] = {
    let mut classes = [OTHER; 256];
    let mut byte = 0;
    while byte < 256 {
        let value = byte as u8;
        classes[byte] = match value {
            b'0'..=b'9' => DIGIT,
            b'a'..=b'z' | b'A'..=b'Z' | b'-' | b'_' | b'.' | b':' => TOKEN,
            b'/' => SLASH,
            b'?' | b'#' => CUT,
            _ => OTHER,
        };
        byte += 1;
    }
    classes
};

/// Whether a segment made only of digits and token characters, `digits`
/// of them digits, is an id.
fn is_id_segment(segment: &str, digits: usize) -> bool {
    let length = segment.len();
    if length == 0 {
        return false;
    }
    if digits == length || (length >= 8 && digits > 0) {
        return true;
    }
    // The tail below is part of the segment and needs 10 bytes: most
    // path words end here.
    if length < 10 {
        return false;
    }
    // Prefixed random ids without digits (`vol_KTTwLGYFdxSfHB`): a long
    // tail after the last separator mixing upper and lower case, which
    // words in paths (`payment-methods`, `getUser`) do not.
    let tail = segment.rsplit(['_', '-']).next().unwrap_or(segment);
    let upper = tail.bytes().filter(u8::is_ascii_uppercase).count();
    let lower = tail.bytes().filter(u8::is_ascii_lowercase).count();
    tail.len() >= 10
        && upper >= 2
        && lower >= 2
        && upper + lower == tail.len()
        && (tail.len() < segment.len() || upper >= 4)
}

/// Case-insensitive glob patterns (`*` matches any run of characters).
pub struct SensitiveMatcher {
    patterns: Vec<Vec<String>>,
}

impl SensitiveMatcher {
    pub fn new(patterns: &[String]) -> SensitiveMatcher {
        SensitiveMatcher {
            patterns: patterns
                .iter()
                .map(|pattern| pattern.to_ascii_lowercase().split('*').map(str::to_string).collect())
                .collect(),
        }
    }

    pub fn matches(&self, endpoint: &str) -> bool {
        let endpoint = endpoint.to_ascii_lowercase();
        self.patterns.iter().any(|parts| glob_match(parts, &endpoint))
    }
}

fn glob_match(parts: &[String], text: &str) -> bool {
    let (first, rest) = match parts.split_first() {
        Some(split) => split,
        None => return text.is_empty(),
    };
    if !text.starts_with(first.as_str()) {
        return false;
    }
    let mut position = first.len();
    if rest.is_empty() {
        return position == text.len();
    }
    for (index, part) in rest.iter().enumerate() {
        let last = index == rest.len() - 1;
        if last {
            return part.is_empty()
                || (text.len() >= position + part.len() && text[position..].ends_with(part.as_str()));
        }
        match text[position..].find(part.as_str()) {
            Some(found) => position += found + part.len(),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The templating as first written, segment by segment: the reference
    /// the one-pass version is held to. The rule for a segment's tail is
    /// the same function; what is checked is the walk that classes bytes
    /// and cuts segments.
    fn reference_template(endpoint: &str) -> String {
        let is_id = |segment: &str| {
            let token = segment
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b':'));
            let digits = segment.bytes().filter(u8::is_ascii_digit).count();
            token && is_id_segment(segment, digits)
        };
        let path = endpoint.split(['?', '#']).next().unwrap_or("");
        path.split('/')
            .map(|segment| if is_id(segment) { "{id}" } else { segment })
            .collect::<Vec<_>>()
            .join("/")
    }

    proptest::proptest! {
        #[test]
        fn one_pass_templating_equals_the_segment_by_segment_reference(
            parts in proptest::collection::vec(
                proptest::sample::select(vec![
                    "/", "/", "?", "#", "v1", "orders", "8812", "0", "a1b2c3d4", "3f2a9c1e-0b6d",
                    "vol_", "KTTwLGYFdxSfHB", "ABCDEFGHIJ", "payment-methods", "getUser", "x=1",
                    "é", "%20", " ", "-", "_", ".", ":", "", "12345678", "abc.def", "Ab", "CDEFghij",
                ]),
                0..12,
            )
        ) {
            let endpoint: String = parts.concat();
            let mut scratch = String::new();
            proptest::prop_assert_eq!(normalize_endpoint(&endpoint, &mut scratch), reference_template(&endpoint));
        }
    }

    #[test]
    fn endpoints_are_templated() {
        let mut scratch = String::new();
        assert_eq!(
            normalize_endpoint("/v1/orders/8812?x=1", &mut scratch),
            "/v1/orders/{id}"
        );
        assert_eq!(
            normalize_endpoint("/v1/users/3f2a9c1e-0b6d-4c1e-9d7a-1b2c3d4e5f60/roles", &mut scratch),
            "/v1/users/{id}/roles"
        );
        assert_eq!(normalize_endpoint("/v2/items", &mut scratch), "/v2/items");
        assert_eq!(
            normalize_endpoint("iam:CreateAccessKey", &mut scratch),
            "iam:CreateAccessKey"
        );
        assert_eq!(
            normalize_endpoint("/v1/volumes/vol_KTTwLGYFdxSfHB", &mut scratch),
            "/v1/volumes/{id}"
        );
        assert_eq!(
            normalize_endpoint("/v1/payment-methods/getUserProfile", &mut scratch),
            "/v1/payment-methods/getUserProfile"
        );
    }

    /// The one-pass templating gives what templating each segment on its
    /// own gives, on paths with ids anywhere, empty segments and queries.
    #[test]
    fn one_pass_templating_matches_segment_by_segment() {
        let by_segment = reference_template;
        let mut scratch = String::new();
        for endpoint in [
            "",
            "/",
            "//",
            "8812",
            "8812/",
            "/8812",
            "/v1/8812/x/9120?y=1#z",
            "a/b/c",
            "/v1/orders/8812//refund/",
            "/v1/volumes/vol_KTTwLGYFdxSfHB/attach#frag",
            "?only=query",
            "/v1/caf\u{e9}/12345678",
        ] {
            assert_eq!(
                normalize_endpoint(endpoint, &mut scratch),
                by_segment(endpoint),
                "{endpoint:?}"
            );
        }
    }

    #[test]
    fn sensitive_globs() {
        let matcher = SensitiveMatcher::new(&["*admin*".into(), "iam:*".into(), "*/export".into()]);
        assert!(matcher.matches("/v1/Admin/users"));
        assert!(matcher.matches("iam:CreateAccessKey"));
        assert!(matcher.matches("/v1/reports/export"));
        assert!(!matcher.matches("/v1/reports/export/list"));
        assert!(!matcher.matches("s3:GetObject"));
    }
}
