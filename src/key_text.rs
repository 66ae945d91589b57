//! The two names a key goes by in outputs and state, held without a heap
//! allocation: its [`Fingerprint`] (`kf_` and 32 hex digits, kept as the
//! 128 bits they spell) and its [`Hint`] (`****WXYZ`, kept inline). Every
//! tracked key carries both, so their size is paid per key; both
//! serialise as the text they stand for, so snapshots and outputs read
//! exactly as they would with strings.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of the usual fingerprint text: `kf_` and 32 hex digits.
const FINGERPRINT_TEXT_LEN: usize = 35;

/// A key fingerprint. The usual form (`kf_` and 32 lower-case hex digits,
/// as [`crate::event::Fingerprinter`] makes) is kept as its bits; any other
/// text (hand-written fixtures, foreign snapshots) as the text itself. It
/// compares, orders, prints and serialises as its text.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Fingerprint {
    /// The high and low halves of the 128 bits, so the type needs no
    /// 16-byte alignment.
    Bits([u64; 2]),
    Text(Box<str>),
}

impl Fingerprint {
    pub fn from_bits(bits: u128) -> Fingerprint {
        Fingerprint::Bits([(bits >> 64) as u64, bits as u64])
    }

    /// The fingerprint `text` stands for.
    pub fn new(text: &str) -> Fingerprint {
        match fingerprint_bits(text) {
            Some(bits) if is_lower_hex(&text[3..]) => Fingerprint::from_bits(bits),
            _ => Fingerprint::Text(text.into()),
        }
    }

    /// The 128 bits keys are indexed by: the ones the text spells when it
    /// is `kf_` and 32 hex digits of either case, the first 128 bits of
    /// SHA-256 of the text otherwise.
    pub fn bits(&self) -> u128 {
        match self {
            Fingerprint::Bits([high, low]) => (u128::from(*high) << 64) | u128::from(*low),
            Fingerprint::Text(text) => index_bits(text),
        }
    }

    /// The text, written into `buffer` for the usual form.
    fn text<'a>(&'a self, buffer: &'a mut [u8; FINGERPRINT_TEXT_LEN]) -> &'a str {
        match self {
            Fingerprint::Text(text) => text,
            Fingerprint::Bits(_) => {
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                buffer[..3].copy_from_slice(b"kf_");
                let bits = self.bits();
                for (at, slot) in buffer[3..].iter_mut().enumerate() {
                    let nibble = (bits >> (124 - 4 * at)) & 0xf;
                    *slot = DIGITS[nibble as usize];
                }
                std::str::from_utf8(buffer).expect("hex digits are ASCII")
            }
        }
    }
}

/// A key fingerprint (`kf_` and 32 hex digits) as its 128 bits.
pub fn fingerprint_bits(fingerprint: &str) -> Option<u128> {
    let hex = fingerprint.strip_prefix("kf_")?;
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

/// The 128 bits the fingerprint `text` is indexed by (see
/// [`Fingerprint::bits`]), without making a [`Fingerprint`] of it.
pub fn index_bits(text: &str) -> u128 {
    fingerprint_bits(text).unwrap_or_else(|| {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        u128::from_be_bytes(bytes)
    })
}

/// The fingerprint text of 128 bits.
pub fn fingerprint_text(bits: u128) -> String {
    Fingerprint::from_bits(bits).to_string()
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.text(&mut [0; FINGERPRINT_TEXT_LEN]))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.text(&mut [0; FINGERPRINT_TEXT_LEN]), formatter)
    }
}

impl Ord for Fingerprint {
    /// The order of the texts; two of the usual form compare by their bits,
    /// which is the same order.
    fn cmp(&self, other: &Fingerprint) -> Ordering {
        match (self, other) {
            (Fingerprint::Bits(mine), Fingerprint::Bits(theirs)) => mine.cmp(theirs),
            _ => self
                .text(&mut [0; FINGERPRINT_TEXT_LEN])
                .cmp(other.text(&mut [0; FINGERPRINT_TEXT_LEN])),
        }
    }
}

impl PartialOrd for Fingerprint {
    fn partial_cmp(&self, other: &Fingerprint) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq<str> for Fingerprint {
    fn eq(&self, other: &str) -> bool {
        self.text(&mut [0; FINGERPRINT_TEXT_LEN]) == other
    }
}

impl PartialEq<String> for Fingerprint {
    fn eq(&self, other: &String) -> bool {
        *self == **other
    }
}

impl From<&str> for Fingerprint {
    fn from(text: &str) -> Fingerprint {
        Fingerprint::new(text)
    }
}

impl From<String> for Fingerprint {
    fn from(text: String) -> Fingerprint {
        Fingerprint::new(&text)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text(&mut [0; FINGERPRINT_TEXT_LEN]))
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fingerprint, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(Fingerprint::new(&text))
    }
}

/// Bytes a [`Hint`] holds: `key_hint` makes at most 20 (`****` and four
/// characters of up to four bytes each).
const HINT_CAPACITY: usize = 23;

/// A key hint (`****WXYZ`) held inline, so it costs no allocation in a
/// key's state and an observation carrying it is `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hint {
    bytes: [u8; HINT_CAPACITY],
    len: u8,
}

impl Hint {
    /// Longer hints (never made by `key_hint`) are replaced by `****`.
    pub fn new(text: &str) -> Hint {
        let text = if text.len() <= HINT_CAPACITY { text } else { "****" };
        let mut bytes = [0u8; HINT_CAPACITY];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Hint {
            bytes,
            len: text.len() as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("****")
    }
}

impl std::ops::Deref for Hint {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl fmt::Debug for Hint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), formatter)
    }
}

impl PartialEq<str> for Hint {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl From<&str> for Hint {
    fn from(text: &str) -> Hint {
        Hint::new(text)
    }
}

impl Serialize for Hint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Hint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Hint, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        Ok(Hint::new(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usual_fingerprint_is_kept_as_bits_and_reads_back_as_the_same_text() {
        let text = crate::event::key_fingerprint("sk_live_0000000000000000000001");
        let fingerprint = Fingerprint::new(&text);
        assert!(matches!(fingerprint, Fingerprint::Bits(_)));
        assert_eq!(fingerprint.to_string(), text);
        assert_eq!(fingerprint, text);
        assert_eq!(format!("{fingerprint:?}"), format!("{text:?}"));
        assert_eq!(serde_json::to_string(&fingerprint).unwrap(), format!("\"{text}\""));
        let back: Fingerprint = serde_json::from_str(&format!("\"{text}\"")).unwrap();
        assert_eq!(back, fingerprint);
        assert_eq!(Fingerprint::from_bits(fingerprint.bits()), fingerprint);
    }

    #[test]
    fn other_texts_are_kept_as_they_are_and_indexed_by_the_bits_they_spell_or_a_hash() {
        for text in ["kf_a", "kf_0123456789ABCDEF0123456789abcdef", "custom"] {
            let fingerprint = Fingerprint::new(text);
            assert!(matches!(fingerprint, Fingerprint::Text(_)), "{text}");
            assert_eq!(fingerprint.to_string(), text);
            assert_ne!(fingerprint.bits(), 0);
            assert_eq!(fingerprint.bits(), Fingerprint::new(text).bits());
        }
        let (upper, lower) = (
            Fingerprint::new("kf_0123456789ABCDEF0123456789abcdef"),
            Fingerprint::new("kf_0123456789abcdef0123456789abcdef"),
        );
        assert_ne!(upper, lower, "the text is what a fingerprint is");
        assert_eq!(
            upper.bits(),
            lower.bits(),
            "but either case of the hex names the same key"
        );
    }

    #[test]
    fn fingerprints_order_as_their_texts_whatever_their_form() {
        let mut texts = vec![
            fingerprint_text(u128::MAX),
            fingerprint_text(0),
            "kf_a".to_string(),
            fingerprint_text(1 << 100),
            "kf_".to_string(),
            "kf_zz".to_string(),
            fingerprint_text(7),
        ];
        let mut fingerprints: Vec<Fingerprint> = texts.iter().map(|text| Fingerprint::new(text)).collect();
        texts.sort();
        fingerprints.sort();
        let printed: Vec<String> = fingerprints.iter().map(ToString::to_string).collect();
        assert_eq!(printed, texts);
    }

    #[test]
    fn a_fingerprint_and_a_hint_take_no_more_than_a_string() {
        assert!(std::mem::size_of::<Fingerprint>() <= 24);
        assert!(std::mem::size_of::<Hint>() <= 24);
        assert_eq!(std::mem::align_of::<Fingerprint>(), 8);
    }

    #[test]
    fn a_hint_reads_back_as_written_and_a_longer_one_is_masked_whole() {
        let hint = Hint::new("****wxyz");
        assert_eq!(hint.as_str(), "****wxyz");
        assert_eq!(serde_json::to_string(&hint).unwrap(), "\"****wxyz\"");
        let back: Hint = serde_json::from_str("\"****ÄÖÜß\"").unwrap();
        assert_eq!(back.as_str(), "****ÄÖÜß");
        assert_eq!(Hint::new(&"x".repeat(HINT_CAPACITY + 1)).as_str(), "****");
        assert_eq!(
            Hint::new(&crate::event::key_hint("sk_live_𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘𝔘")).len(),
            20
        );
    }
}
