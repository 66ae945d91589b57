//! Raw key id to state index, the first lookup of every event.
//!
//! Most key ids are short (an AWS access key id has 20 bytes, a Stripe
//! secret key 32, a GitHub token 40): those are kept inline in the table's
//! slot, so finding one compares bytes already in the slot instead of
//! following a pointer to a separate allocation (a cache miss per event on
//! a large key set, and an allocation of its own per key). Longer ids up to
//! [`INDEXED_KEY_ID_BYTES`] keep a boxed copy; longer still are not
//! indexed (bearer tokens: fingerprinted on every call instead, so a spray
//! of long one-off ids does not cost their length each in memory).
//!
//! Key ids come from outside, so both tables' hashers are randomly seeded:
//! crafted ids cannot collide on purpose. No output depends on their order.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// Key ids up to this length are remembered raw, to skip hashing them on
/// every call.
pub(crate) const INDEXED_KEY_ID_BYTES: usize = 128;
/// Key ids up to this length are stored inline in the table.
const INLINE_KEY_ID_BYTES: usize = 43;

/// A short key id, zero-padded; its length tells `"a"` from `"a\0"`.
///
/// It hashes and compares as its bytes, so the table is searched with the
/// id's bytes as they are ([`Borrow`]), without building one per lookup.
#[derive(Clone, Copy, PartialEq, Eq)]
struct InlineKeyId {
    len: u8,
    bytes: [u8; INLINE_KEY_ID_BYTES],
}

impl InlineKeyId {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Hash for InlineKeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for InlineKeyId {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl InlineKeyId {
    fn new(key_id: &str) -> Option<InlineKeyId> {
        let source = key_id.as_bytes();
        if source.len() > INLINE_KEY_ID_BYTES {
            return None;
        }
        let mut bytes = [0u8; INLINE_KEY_ID_BYTES];
        bytes[..source.len()].copy_from_slice(source);
        Some(InlineKeyId {
            len: source.len() as u8,
            bytes,
        })
    }
}

/// Raw key id to state index (see the module header).
pub(crate) struct KeyIndex {
    short: HashMap<InlineKeyId, u32, ahash::RandomState>,
    long: HashMap<Box<str>, u32, ahash::RandomState>,
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex {
            short: HashMap::with_hasher(ahash::RandomState::new()),
            long: HashMap::with_hasher(ahash::RandomState::new()),
        }
    }
}

impl KeyIndex {
    pub(crate) fn get(&self, key_id: &str) -> Option<u32> {
        if key_id.len() <= INLINE_KEY_ID_BYTES {
            self.short.get(key_id.as_bytes()).copied()
        } else {
            self.long.get(key_id).copied()
        }
    }

    /// Remembers `key_id`'s state index, unless the id is too long to be
    /// indexed.
    pub(crate) fn insert(&mut self, key_id: &str, index: u32) {
        if let Some(short) = InlineKeyId::new(key_id) {
            self.short.insert(short, index);
        } else if key_id.len() <= INDEXED_KEY_ID_BYTES {
            self.long.insert(key_id.into(), index);
        }
    }

    /// Keeps the entries whose index `keep` accepts, after it has had the
    /// chance to rewrite the index.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut u32) -> bool) {
        self.short.retain(|_, index| keep(index));
        self.long.retain(|_, index| keep(index));
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.short.shrink_to_fit();
        self.long.shrink_to_fit();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_differ_only_in_trailing_zero_bytes_or_length_class_are_distinct_entries() {
        let mut index = KeyIndex::default();
        let short = "a".repeat(INLINE_KEY_ID_BYTES);
        let long = "a".repeat(INLINE_KEY_ID_BYTES + 1);
        index.insert("a", 1);
        index.insert("a\0", 2);
        index.insert(&short, 3);
        index.insert(&long, 4);
        assert_eq!(index.get("a"), Some(1));
        assert_eq!(index.get("a\0"), Some(2));
        assert_eq!(index.get(&short), Some(3));
        assert_eq!(index.get(&long), Some(4));
        assert_eq!(index.get(""), None);
        assert_eq!(index.get("a\0\0"), None);
    }

    #[test]
    fn ids_longer_than_the_indexed_bound_are_not_kept() {
        let mut index = KeyIndex::default();
        let bearer = "t".repeat(INDEXED_KEY_ID_BYTES + 1);
        index.insert(&bearer, 7);
        assert_eq!(index.get(&bearer), None);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn retain_rewrites_and_drops_in_both_tables() {
        let mut index = KeyIndex::default();
        let long = "b".repeat(100);
        index.insert("short", 0);
        index.insert(&long, 1);
        index.insert("gone", 2);
        index.retain(|index| {
            *index = match *index {
                0 => 5,
                1 => 6,
                _ => return false,
            };
            true
        });
        assert_eq!(index.get("short"), Some(5));
        assert_eq!(index.get(&long), Some(6));
        assert_eq!(index.get("gone"), None);
        assert_eq!(index.len(), 2);
    }
}
