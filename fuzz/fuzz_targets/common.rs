//! What every decoder target checks of one input record, beyond "does not
//! panic": the properties the pipeline relies on downstream.

use keywatch::decode::{Decoded, Decoder, Format};
use keywatch::event::{AccessEvent, format_ts, key_fingerprint, key_hint};

/// The record limit of the default config (`input.max_record_bytes`).
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Decodes `record` and checks that:
/// - every record gives at least one item (a record never vanishes
///   uncounted), except a CloudTrail `{"Records":[]}` document, which
///   holds no event (the first runs found that case; see
///   `an_empty_records_document_gives_no_item_and_no_rejection`);
/// - an accepted event has a non-empty key id (keyless events are `NoKey`);
/// - an accepted event survives the repartition topic: serialised as the
///   repartition stage serialises it and decoded by the canonical decoder
///   that reads that topic, it is the same event (otherwise a live run and a
///   replay would disagree, or the event would be lost between stages);
/// - the outputs built from an event (fingerprint, hint, time) do not panic.
pub fn check_record(decoder: &Decoder, record: &[u8]) {
    let mut scratch = Vec::new();
    let mut items = 0usize;
    let canonical = Decoder::new(Format::Canonical, None, usize::MAX);
    for item in decoder.decode_record(record, &mut scratch) {
        items += 1;
        if let Decoded::Event(event) = item {
            check_event(&canonical, &event);
        }
    }
    let empty_document = decoder.format != Format::Canonical
        && decoder.format != Format::Mapped
        && keywatch::decode::is_records_document(record)
        && serde_json::from_slice::<serde_json::Value>(record)
            .ok()
            .and_then(|document| document.get("Records")?.as_array().map(Vec::is_empty))
            == Some(true);
    assert!(items >= 1 || empty_document, "a record gave no item at all");
}

fn check_event(canonical: &Decoder, event: &AccessEvent<'_>) {
    assert!(!event.key_id.is_empty(), "an event was accepted with an empty key id");
    let _ = key_fingerprint(&event.key_id);
    let _ = key_hint(&event.key_id);
    let _ = format_ts(event.ts_ms);
    let json = serde_json::to_vec(event).expect("an accepted event serialises");
    let again = canonical.decode_to_vec(&json);
    assert_eq!(again.len(), 1, "the repartitioned event gave {} items", again.len());
    match &again[0] {
        Ok(decoded) => assert_eq!(
            decoded.clone().into_owned(),
            event.clone().into_owned(),
            "the event changed through the repartition topic: {}",
            String::from_utf8_lossy(&json)
        ),
        Err(error) => panic!(
            "an accepted event is rejected after repartitioning ({error}): {}",
            String::from_utf8_lossy(&json)
        ),
    }
}
