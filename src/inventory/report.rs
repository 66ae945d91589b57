//! The key inventory as data: one record per key seen, built from engine
//! snapshots (a replay's end state, a snapshot file or the changelog), the
//! owners book and the revocation requests known, with the flags that say
//! which keys should be retired or narrowed. Pure: no I/O, no clock (the
//! inventory's "now" is the newest event time in the data unless given).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::RevocationRequest;
use crate::baseline::KeyState;
use crate::baseline::geo::country_from_id;
use crate::engine::EngineSnapshot;
use crate::enrich::Country;
use crate::event::{format_ts, parse_ts};
use crate::owners::{Owner, OwnerBook};

const DAY_MS: i64 = 86_400_000;

/// How the flags are judged.
#[derive(Debug, Clone, PartialEq)]
pub struct InventorySettings {
    /// The inventory's "now" (epoch ms); the newest event time in the data
    /// when `None`.
    pub now_ms: Option<i64>,
    /// A key unused for this long is `dormant`.
    pub dormant_after_ms: i64,
    /// A key that called at most this share of the endpoints its granted
    /// scope covers is `over_privileged` ([`over_privileged`]).
    pub over_privileged_share: f64,
    /// A key is judged over-privileged only after this much history.
    pub over_privileged_min_history_ms: i64,
    /// ... and this many calls.
    pub over_privileged_min_calls: u64,
}

impl Default for InventorySettings {
    fn default() -> Self {
        InventorySettings {
            now_ms: None,
            dormant_after_ms: 30 * DAY_MS,
            over_privileged_share: 0.25,
            over_privileged_min_history_ms: 7 * DAY_MS,
            over_privileged_min_calls: 100,
        }
    }
}

/// What the inventory says about a key, in the order they are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// No use for `--dormant-after` (30 days by default).
    Dormant,
    /// No owners entry, or one naming neither an owner nor a team.
    NoOwner,
    /// Used, or still valid, after the expiry its owners entry gives.
    PastExpiry,
    /// A revocation request was made for it.
    Revoked,
    /// Calls only a small share of the endpoints its scope grants.
    OverPrivileged,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Dormant => "dormant",
            Flag::NoOwner => "no_owner",
            Flag::PastExpiry => "past_expiry",
            Flag::Revoked => "revoked",
            Flag::OverPrivileged => "over_privileged",
        }
    }

    /// Whether the flag is a reason to retire the key (`keys --stale`).
    pub fn is_stale_reason(self) -> bool {
        matches!(self, Flag::Dormant | Flag::PastExpiry | Flag::NoOwner)
    }
}

/// How much keywatch still holds of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// Evicted for silence: its times and call count only.
    Evicted,
    /// Seen only in 401s: no places, networks or endpoints.
    Light,
    /// Full behavioural state.
    Full,
}

/// Where a key's revocation stands. Only `requested` is known today; the
/// revocation service's acknowledgements add more states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationStatus {
    Requested,
}

/// The key's last revocation request and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationSlot {
    pub status: RevocationStatus,
    /// Event time of the alert that asked for it.
    pub requested_at: String,
    pub idempotency_key: String,
    pub incident_id: String,
}

/// One key of the inventory (`keywatch keys --json`, one per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_fingerprint: String,
    /// Empty for keys evicted for silence (their hint is not kept).
    pub key_hint: String,
    pub owner: Option<Owner>,
    pub first_seen: String,
    pub last_seen: String,
    /// Whole days between the last use and the inventory's "now".
    pub idle_days: i64,
    /// Calls judged, refused ones included.
    pub calls: u64,
    /// Countries called from (ISO codes), alphabetical.
    pub countries: Vec<String>,
    /// Networks called from (`AS<number>`), by number.
    pub networks: Vec<String>,
    /// Distinct endpoint templates called (as the key's bounded table holds them).
    pub endpoints: u64,
    pub held: Held,
    pub flags: Vec<Flag>,
    /// The last revocation request for the key; null when none is known.
    pub revocation: Option<RevocationSlot>,
}

impl KeyRecord {
    /// The flags that are reasons to retire the key.
    pub fn stale_reasons(&self) -> Vec<Flag> {
        self.flags
            .iter()
            .copied()
            .filter(|flag| flag.is_stale_reason())
            .collect()
    }
}

/// The whole inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Inventory {
    /// The "now" the flags were judged at.
    pub now_ms: i64,
    /// In fingerprint order.
    pub keys: Vec<KeyRecord>,
}

/// What one snapshot holds about a key, before flags.
struct Seen {
    hint: String,
    first_ts: i64,
    last_ts: i64,
    calls: u64,
    countries: Vec<String>,
    networks: Vec<String>,
    endpoints: u64,
    held: Held,
    revocation: Option<RevocationSlot>,
}

impl Seen {
    fn of_state(state: &KeyState) -> Seen {
        let mut countries: Vec<String> = state
            .geo
            .countries
            .entries
            .iter()
            .map(|entry| country_from_id(entry.id))
            .filter(|country| *country != Country::UNKNOWN)
            .map(|country| country.as_str().to_string())
            .collect();
        countries.sort();
        countries.dedup();
        let mut asns: Vec<u32> = state
            .geo
            .asns
            .entries
            .iter()
            .map(|entry| entry.id)
            .filter(|asn| *asn != 0)
            .collect();
        asns.sort_unstable();
        asns.dedup();
        Seen {
            hint: state.hint.to_string(),
            first_ts: state.first_ts,
            last_ts: state.last_ts,
            calls: state.events,
            countries,
            networks: asns.iter().map(|asn| format!("AS{asn}")).collect(),
            endpoints: state.endpoints.endpoints.entries.len() as u64,
            held: Held::Full,
            revocation: state.alerts.last_revocation.as_ref().map(|mark| RevocationSlot {
                status: RevocationStatus::Requested,
                requested_at: format_ts(mark.ts_ms),
                idempotency_key: mark.idempotency_key.clone(),
                incident_id: mark.incident_id.clone(),
            }),
        }
    }

    fn bare(hint: &str, first_ts: i64, last_ts: i64, calls: u64, held: Held) -> Seen {
        Seen {
            hint: hint.to_string(),
            first_ts,
            last_ts,
            calls,
            countries: Vec::new(),
            networks: Vec::new(),
            endpoints: 0,
            held,
            revocation: None,
        }
    }

    /// Whether this view of a key says more than `other` (when a key is in
    /// two snapshots): fuller state first, then newer use.
    fn better_than(&self, other: &Seen) -> bool {
        (self.held, self.last_ts) > (other.held, other.last_ts)
    }
}

/// Builds the inventory of every key in `snapshots` (one per partition),
/// with owners from `owners` and, for keys whose state does not remember
/// one, the revocation requests in `revocations` (a replay's outputs).
pub fn build(
    snapshots: &[EngineSnapshot],
    owners: &OwnerBook,
    revocations: &[RevocationRequest],
    settings: &InventorySettings,
) -> Inventory {
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut keep = |fingerprint: &str, view: Seen| {
        if seen.get(fingerprint).is_none_or(|held| view.better_than(held)) {
            seen.insert(fingerprint.to_string(), view);
        }
    };
    for snapshot in snapshots {
        for record in &snapshot.dormant {
            keep(
                &record.fingerprint.to_string(),
                Seen::bare("", record.first_ts, record.last_ts, record.events, Held::Evicted),
            );
        }
        for light in &snapshot.light {
            keep(
                &light.fingerprint.to_string(),
                Seen::bare(&light.hint, light.first_ts, light.last_ts, light.events, Held::Light),
            );
        }
        for state in &snapshot.keys {
            keep(&state.fingerprint.to_string(), Seen::of_state(state));
        }
    }
    let mut requested: BTreeMap<&str, &RevocationRequest> = BTreeMap::new();
    for request in revocations {
        let newer = requested
            .get(request.key_fingerprint.as_str())
            .is_none_or(|known| parse_ts(&request.ts) >= parse_ts(&known.ts));
        if newer {
            requested.insert(&request.key_fingerprint, request);
        }
    }
    let newest_event = snapshots
        .iter()
        .filter_map(|snapshot| snapshot.clock_ms)
        .chain(seen.values().map(|view| view.last_ts))
        .max()
        .unwrap_or(0);
    let now_ms = settings.now_ms.unwrap_or(newest_event);
    let keys = seen
        .into_iter()
        .map(|(fingerprint, mut view)| {
            if view.revocation.is_none()
                && let Some(request) = requested.get(fingerprint.as_str())
            {
                view.revocation = Some(RevocationSlot {
                    status: RevocationStatus::Requested,
                    requested_at: request.ts.clone(),
                    idempotency_key: request.idempotency_key.clone(),
                    incident_id: request.incident_id.clone(),
                });
            }
            let owner = owners.get(&fingerprint).cloned();
            let flags = flags_of(&view, owner.as_ref(), now_ms, settings);
            KeyRecord {
                key_fingerprint: fingerprint,
                key_hint: view.hint,
                owner,
                first_seen: format_ts(view.first_ts),
                last_seen: format_ts(view.last_ts),
                idle_days: (now_ms - view.last_ts).max(0) / DAY_MS,
                calls: view.calls,
                countries: view.countries,
                networks: view.networks,
                endpoints: view.endpoints,
                held: view.held,
                flags,
                revocation: view.revocation,
            }
        })
        .collect();
    Inventory { now_ms, keys }
}

fn flags_of(view: &Seen, owner: Option<&Owner>, now_ms: i64, settings: &InventorySettings) -> Vec<Flag> {
    let mut flags = Vec::new();
    if now_ms - view.last_ts >= settings.dormant_after_ms {
        flags.push(Flag::Dormant);
    }
    if !owner.is_some_and(Owner::is_named) {
        flags.push(Flag::NoOwner);
    }
    if owner
        .and_then(|owner| owner.expires_ms)
        .is_some_and(|expires| expires < now_ms)
    {
        flags.push(Flag::PastExpiry);
    }
    if view.revocation.is_some() {
        flags.push(Flag::Revoked);
    }
    if over_privileged(view, owner, settings) {
        flags.push(Flag::OverPrivileged);
    }
    flags
}

/// The over-privileged rule: the owners entry says how many endpoint
/// templates the key's scope grants (`scope_endpoints`), the key has full
/// state with at least `over_privileged_min_history_ms` of use and
/// `over_privileged_min_calls` calls, and it called at most
/// `over_privileged_share` of those endpoints. Without a granted scope
/// nothing says what the key could call, so it is never flagged.
fn over_privileged(view: &Seen, owner: Option<&Owner>, settings: &InventorySettings) -> bool {
    let Some(scope) = owner.and_then(|owner| owner.scope_endpoints).filter(|scope| *scope > 0) else {
        return false;
    };
    view.held == Held::Full
        && view.last_ts - view.first_ts >= settings.over_privileged_min_history_ms
        && view.calls >= settings.over_privileged_min_calls
        && (view.endpoints as f64) <= settings.over_privileged_share * f64::from(scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{DormantRecord, LightKey};
    use crate::owners::OwnerEntry;

    const T0: i64 = 1_767_571_200_000;

    fn state(fingerprint: &str, first_ts: i64, last_ts: i64, events: u64) -> KeyState {
        let mut state = KeyState::new(fingerprint.into(), "****wxyz".into(), first_ts, 24);
        state.last_ts = last_ts;
        state.events = events;
        state
    }

    /// Fingerprint, owner, expiry and granted scope of one owners entry.
    type TestOwner<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<u32>);

    fn owners(entries: &[TestOwner<'_>]) -> OwnerBook {
        let fingerprinter = crate::event::Fingerprinter::unkeyed();
        let mut book = OwnerBook::default();
        for (fingerprint, owner, expires, scope) in entries {
            book.insert(
                OwnerEntry {
                    key_fingerprint: Some(fingerprint.to_string()),
                    owner: owner.map(str::to_string),
                    expires: expires.map(str::to_string),
                    scope_endpoints: *scope,
                    ..OwnerEntry::default()
                },
                &fingerprinter,
            )
            .unwrap();
        }
        book
    }

    fn flags(inventory: &Inventory, fingerprint: &str) -> Vec<Flag> {
        inventory
            .keys
            .iter()
            .find(|key| key.key_fingerprint == fingerprint)
            .map(|key| key.flags.clone())
            .unwrap_or_else(|| panic!("{fingerprint} listed"))
    }

    #[test]
    fn flags_follow_idle_time_owner_and_expiry_relative_to_the_newest_event() {
        let active = "kf_00000000000000000000000000000001";
        let idle = "kf_00000000000000000000000000000002";
        let expired = "kf_00000000000000000000000000000003";
        let now = T0 + 60 * DAY_MS;
        let snapshot = EngineSnapshot {
            keys: vec![
                state(active, T0, now, 500),
                state(idle, T0, now - 31 * DAY_MS, 500),
                state(expired, T0, now - DAY_MS, 500),
            ],
            ..EngineSnapshot::default()
        };
        let book = owners(&[
            (active, Some("alice"), Some("2030-01-01"), None),
            (idle, Some("bob"), None, None),
            (expired, None, Some("2026-01-31"), None),
        ]);
        let inventory = build(&[snapshot], &book, &[], &InventorySettings::default());
        assert_eq!(inventory.now_ms, now);
        assert_eq!(flags(&inventory, active), vec![]);
        assert_eq!(flags(&inventory, idle), vec![Flag::Dormant]);
        assert_eq!(flags(&inventory, expired), vec![Flag::NoOwner, Flag::PastExpiry]);
        let order: Vec<&str> = inventory.keys.iter().map(|key| key.key_fingerprint.as_str()).collect();
        assert_eq!(order, vec![active, idle, expired], "fingerprint order");
    }

    #[test]
    fn evicted_and_light_keys_are_listed_and_full_state_wins_over_them() {
        let evicted = "kf_0000000000000000000000000000000a";
        let both = "kf_0000000000000000000000000000000b";
        let light = "kf_0000000000000000000000000000000c";
        let first = EngineSnapshot {
            dormant: vec![
                DormantRecord {
                    fingerprint: evicted.into(),
                    first_ts: T0,
                    last_ts: T0 + DAY_MS,
                    events: 40,
                },
                DormantRecord {
                    fingerprint: both.into(),
                    first_ts: T0,
                    last_ts: T0 + DAY_MS,
                    events: 40,
                },
            ],
            light: vec![LightKey {
                fingerprint: light.into(),
                hint: "****1234".into(),
                first_ts: T0,
                last_ts: T0 + 90 * DAY_MS,
                events: 3,
                auth: Default::default(),
            }],
            ..EngineSnapshot::default()
        };
        let second = EngineSnapshot {
            keys: vec![state(both, T0, T0 + 80 * DAY_MS, 900)],
            ..EngineSnapshot::default()
        };
        let inventory = build(
            &[first, second],
            &OwnerBook::default(),
            &[],
            &InventorySettings::default(),
        );
        let held: Vec<(&str, Held, u64)> = inventory
            .keys
            .iter()
            .map(|key| (key.key_fingerprint.as_str(), key.held, key.calls))
            .collect();
        assert_eq!(
            held,
            vec![
                (evicted, Held::Evicted, 40),
                (both, Held::Full, 900),
                (light, Held::Light, 3)
            ]
        );
        assert!(flags(&inventory, evicted).contains(&Flag::Dormant));
        assert!(!flags(&inventory, both).contains(&Flag::Dormant));
    }

    #[test]
    fn over_privileged_needs_a_granted_scope_history_and_a_small_share_of_it() {
        let narrow = "kf_00000000000000000000000000000010";
        let broad = "kf_00000000000000000000000000000011";
        let unknown_scope = "kf_00000000000000000000000000000012";
        let young = "kf_00000000000000000000000000000013";
        let with_endpoints = |mut state: KeyState, count: u32| {
            for id in 0..count {
                state.endpoints.endpoints.add(id, state.first_ts, 64);
            }
            state
        };
        let now = T0 + 20 * DAY_MS;
        let snapshot = EngineSnapshot {
            keys: vec![
                with_endpoints(state(narrow, T0, now, 5000), 2),
                with_endpoints(state(broad, T0, now, 5000), 10),
                with_endpoints(state(unknown_scope, T0, now, 5000), 2),
                with_endpoints(state(young, now - DAY_MS, now, 5000), 2),
            ],
            ..EngineSnapshot::default()
        };
        let book = owners(&[
            (narrow, Some("a"), None, Some(20)),
            (broad, Some("a"), None, Some(20)),
            (unknown_scope, Some("a"), None, None),
            (young, Some("a"), None, Some(20)),
        ]);
        let inventory = build(&[snapshot], &book, &[], &InventorySettings::default());
        assert_eq!(flags(&inventory, narrow), vec![Flag::OverPrivileged]);
        assert_eq!(flags(&inventory, broad), vec![]);
        assert_eq!(flags(&inventory, unknown_scope), vec![]);
        assert_eq!(flags(&inventory, young), vec![]);
    }

    #[test]
    fn a_revocation_from_key_memory_or_from_outputs_fills_the_slot_and_flags_the_key() {
        let remembered = "kf_00000000000000000000000000000020";
        let from_outputs = "kf_00000000000000000000000000000021";
        let mut memory = state(remembered, T0, T0 + DAY_MS, 100);
        memory.alerts.make_mut().last_revocation = Some(Box::new(crate::baseline::RevocationMark {
            ts_ms: T0 + DAY_MS,
            idempotency_key: "rv_1".into(),
            incident_id: "in_1".into(),
        }));
        let snapshot = EngineSnapshot {
            keys: vec![memory, state(from_outputs, T0, T0 + DAY_MS, 100)],
            ..EngineSnapshot::default()
        };
        let request = RevocationRequest {
            idempotency_key: "rv_2".into(),
            key_fingerprint: from_outputs.into(),
            key_hint: "****".into(),
            ts: format_ts(T0 + DAY_MS),
            severity: crate::alert::Severity::High,
            reason: "test".into(),
            incident_id: "in_2".into(),
            alert_ids: vec!["al_1".into()],
            model: "m@1".into(),
            owner: None,
            basis: None,
            detectors: Vec::new(),
        };
        let inventory = build(
            &[snapshot],
            &OwnerBook::default(),
            &[request],
            &InventorySettings::default(),
        );
        for (key, idempotency_key) in inventory.keys.iter().zip(["rv_1", "rv_2"]) {
            assert!(key.flags.contains(&Flag::Revoked), "{}", key.key_fingerprint);
            let slot = key.revocation.as_ref().expect("a revocation slot");
            assert_eq!(slot.idempotency_key, idempotency_key);
            assert_eq!(slot.status, RevocationStatus::Requested);
        }
        let line = serde_json::to_value(&inventory.keys[0]).unwrap();
        assert_eq!(line["revocation"]["status"], "requested");
    }
}
