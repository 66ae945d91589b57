//! Decoded events detached from their record buffers: every string of the
//! events is a range of one text, so keeping events costs a copy of their
//! bytes but no allocation per event, and emptied holders keep what they
//! have allocated for the next batch.

use std::net::IpAddr;

use crate::event::AccessEvent;

/// A string of a packed event, as a range of the holder's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Text {
    start: usize,
    end: usize,
}

/// A decoded event whose strings are ranges of its holder's text.
#[derive(Debug, Clone, Copy)]
struct PackedEvent {
    ts_ms: i64,
    ip: IpAddr,
    status: u16,
    bytes_out: u64,
    key_id: Text,
    method: Text,
    endpoint: Text,
    user_agent: Text,
    request_id: Option<Text>,
    /// Where the event came from, as its holder counts it (a record's line
    /// in a decoded batch, an origin in a merge).
    tag: u64,
}

/// Events packed into one text (see the module header).
#[derive(Debug, Default)]
pub(crate) struct PackedEvents {
    text: String,
    events: Vec<PackedEvent>,
}

impl PackedEvents {
    fn pack(&mut self, text: &str) -> Text {
        let start = self.text.len();
        self.text.push_str(text);
        Text {
            start,
            end: self.text.len(),
        }
    }

    /// Keeps a copy of `event` with `tag`.
    pub(crate) fn push(&mut self, event: &AccessEvent<'_>, tag: u64) {
        self.push_with_texts(event, &event.endpoint, &event.user_agent, tag);
    }

    /// Keeps a copy of `event` with its endpoint and user agent replaced by
    /// `endpoint` and `user_agent` (a decoder's template and family).
    pub(crate) fn push_with_texts(&mut self, event: &AccessEvent<'_>, endpoint: &str, user_agent: &str, tag: u64) {
        let packed = PackedEvent {
            ts_ms: event.ts_ms,
            ip: event.ip,
            status: event.status,
            bytes_out: event.bytes_out,
            key_id: self.pack(&event.key_id),
            method: self.pack(&event.method),
            endpoint: self.pack(endpoint),
            user_agent: self.pack(user_agent),
            request_id: event.request_id.as_deref().map(|id| self.pack(id)),
            tag,
        };
        self.events.push(packed);
    }

    fn text(&self, text: Text) -> &str {
        self.text.get(text.start..text.end).unwrap_or_default()
    }

    /// The `index`th event, borrowing its strings from the holder.
    pub(crate) fn event(&self, index: usize) -> AccessEvent<'_> {
        let packed = &self.events[index];
        AccessEvent {
            ts_ms: packed.ts_ms,
            key_id: self.text(packed.key_id).into(),
            ip: packed.ip,
            method: self.text(packed.method).into(),
            endpoint: self.text(packed.endpoint).into(),
            status: packed.status,
            user_agent: self.text(packed.user_agent).into(),
            bytes_out: packed.bytes_out,
            request_id: packed.request_id.map(|id| self.text(id).into()),
        }
    }

    pub(crate) fn ts_ms(&self, index: usize) -> i64 {
        self.events[index].ts_ms
    }

    pub(crate) fn tag(&self, index: usize) -> u64 {
        self.events[index].tag
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Rewrites every event's tag.
    pub(crate) fn retag(&mut self, mut tag: impl FnMut(u64) -> u64) {
        for event in &mut self.events {
            event.tag = tag(event.tag);
        }
    }

    /// Empties the holder, keeping what it has allocated.
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.events.clear();
    }

    #[cfg(test)]
    pub(crate) fn text_capacity(&self) -> usize {
        self.text.capacity()
    }
}

/// An emptied vector of events, its allocation kept, borrowing for
/// another lifetime: the vector outlives the holders its events borrow.
pub(crate) fn relend<'to>(mut events: Vec<AccessEvent<'_>>) -> Vec<AccessEvent<'to>> {
    events.clear();
    // Collecting an emptied vector's iterator into one of the same layout
    // reuses its allocation.
    events
        .into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(key_id: &'a str, endpoint: &'a str, request_id: Option<&'a str>) -> AccessEvent<'a> {
        AccessEvent {
            ts_ms: 7,
            key_id: key_id.into(),
            ip: IpAddr::from([192, 0, 2, 1]),
            method: "GET".into(),
            endpoint: endpoint.into(),
            status: 200,
            user_agent: "sdk/1".into(),
            bytes_out: 5,
            request_id: request_id.map(Into::into),
        }
    }

    #[test]
    fn packed_events_read_back_as_they_were_kept_and_reuse_their_text() {
        let owned = String::from("/v1/a b");
        let mut packed = PackedEvents::default();
        let first = event("AKIAEXAMPLE1", &owned, Some("r1"));
        let second = event("", "", None);
        packed.push(&first, 3);
        packed.push(&second, 4);
        packed.push_with_texts(&first, "/v1/{id}", "sdk", 5);
        assert_eq!(packed.len(), 3);
        assert_eq!(packed.event(0), first);
        assert_eq!(packed.event(1), second);
        assert_eq!(packed.event(2).endpoint, "/v1/{id}");
        assert_eq!(packed.event(2).user_agent, "sdk");
        assert_eq!(packed.event(2).key_id, "AKIAEXAMPLE1");
        assert_eq!((packed.tag(0), packed.tag(1), packed.tag(2)), (3, 4, 5));
        assert_eq!(packed.ts_ms(1), 7);
        packed.retag(|tag| tag * 10);
        assert_eq!((packed.tag(0), packed.tag(1), packed.tag(2)), (30, 40, 50));
        let capacity = packed.text_capacity();
        packed.clear();
        assert!(packed.is_empty());
        assert_eq!(packed.text_capacity(), capacity);
    }

    #[test]
    fn relent_vectors_keep_their_allocation() {
        let text = String::from("/v1/a");
        let mut events: Vec<AccessEvent<'_>> = Vec::with_capacity(64);
        events.push(event(&text, &text, None));
        let pointer = events.as_ptr() as usize;
        let kept: Vec<AccessEvent<'static>> = relend(events);
        assert!(kept.is_empty());
        assert!(kept.capacity() >= 64);
        assert_eq!(kept.as_ptr() as usize, pointer, "the same allocation");
    }
}
