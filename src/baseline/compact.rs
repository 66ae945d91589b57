//! A per-key list whose length is its capacity: a boxed slice (16 bytes
//! inline, without a `Vec`'s capacity word or spare slots) that grows by
//! one slot at a time. Per-key tables change length seldom (a new country,
//! network, endpoint or client) and are read at every event, so the
//! reallocation on growth costs less than the slack it saves on every key.
//! An empty list holds no allocation. It serialises as a plain list, so
//! snapshots do not change.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, PartialEq, Eq, Default)]
pub struct CompactVec<T>(Box<[T]>);

impl<T> CompactVec<T> {
    pub fn new() -> CompactVec<T> {
        CompactVec(Box::default())
    }

    /// Runs `change` on the items as a `Vec`, then gives the list back
    /// without spare capacity. Taking the slice into a `Vec` and back
    /// copies nothing; only a change of length reallocates.
    fn edit<R>(&mut self, change: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let mut items = std::mem::take(&mut self.0).into_vec();
        let result = change(&mut items);
        self.0 = items.into_boxed_slice();
        result
    }

    /// Appends one item, growing the allocation by exactly one slot.
    pub fn push(&mut self, item: T) {
        self.edit(|items| {
            items.reserve_exact(1);
            items.push(item);
        });
    }

    /// Keeps the items `keep` accepts, in order.
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.edit(|items| items.retain(keep));
    }

    /// Removes and returns the item at `index`, shifting the rest down.
    pub fn remove(&mut self, index: usize) -> T {
        self.edit(|items| items.remove(index))
    }

    /// Empties the list and frees its allocation.
    pub fn clear(&mut self) {
        self.0 = Box::default();
    }

    /// Slots allocated: always the length.
    pub fn capacity(&self) -> usize {
        self.0.len()
    }
}

impl<T> std::ops::Deref for CompactVec<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> std::ops::DerefMut for CompactVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.0
    }
}

impl<T> From<Vec<T>> for CompactVec<T> {
    fn from(items: Vec<T>) -> CompactVec<T> {
        CompactVec(items.into_boxed_slice())
    }
}

impl<T> FromIterator<T> for CompactVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> CompactVec<T> {
        CompactVec(items.into_iter().collect())
    }
}

impl<'a, T> IntoIterator for &'a CompactVec<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut CompactVec<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter_mut()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for CompactVec<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl<T: Serialize> Serialize for CompactVec<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for CompactVec<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<CompactVec<T>, D::Error> {
        Vec::deserialize(deserializer).map(CompactVec::from)
    }
}

impl<T: PartialEq> PartialEq<[T]> for CompactVec<T> {
    fn eq(&self, other: &[T]) -> bool {
        *self.0 == *other
    }
}

impl<T: PartialEq, const N: usize> PartialEq<[T; N]> for CompactVec<T> {
    fn eq(&self, other: &[T; N]) -> bool {
        *self.0 == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_and_removal_keep_the_allocation_at_the_length() {
        let mut list = CompactVec::new();
        for item in 0..10 {
            list.push(item);
            assert_eq!(list.capacity(), list.len());
        }
        list.retain(|item| item % 2 == 0);
        assert_eq!(list, [0, 2, 4, 6, 8]);
        assert_eq!(list.remove(1), 2);
        assert_eq!(list, [0, 4, 6, 8]);
        list.clear();
        assert!(list.is_empty());
    }

    #[test]
    fn serialises_as_the_plain_list() {
        let list: CompactVec<i64> = vec![3, 1, 2].into();
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(json, serde_json::to_string(&vec![3i64, 1, 2]).unwrap());
        let back: CompactVec<i64> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, list);
    }
}
