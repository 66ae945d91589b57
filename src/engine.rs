//! The detection engine: a plain synchronous struct with no I/O and no
//! clock. File replay, Kafka, the demo, tests and benches all drive it the
//! same way: `process` a micro-batch of events in order, collect outputs.
//! Each event goes through the same phases: resolve, advance, judge
//! (before), absorb, judge (after), dispose.
//!
//! Every per-key decision depends only on one key's own sequence of events,
//! in event time, so the outputs never depend on how the input was cut into
//! batches, on other keys' interleaving, or on when the engine runs. The
//! view across keys ([`crate::fleet`]) is just as deterministic: the
//! organisation table changes only at epochs of event time, and the source
//! view judges its observations in event-time order.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::alert::Output;
use crate::alert::policy::{Disposition, dispose, flush_digest, flush_digest_before};
use crate::baseline::KeyState;
use crate::detect::{self, Context, Finding};
use crate::detector::Phase;
use crate::enrich::client::client_family;
use crate::enrich::endpoint::{SensitiveMatcher, normalize_endpoint};
use crate::enrich::{GeoCache, GeoInfo, GeoIp, NetworkKinds, ResolvedEvent};
use crate::event::{AccessEvent, Fingerprinter, key_hint};
use crate::fleet::spray::fingerprint_bits;
use crate::fleet::{Across, AcrossSnapshot, Hint};
use crate::model::Model;

/// Events older than their key's newest by more than this count as late.
const LATE_AFTER_MS: i64 = 60_000;
/// Snapshot layout version.
const SNAPSHOT_VERSION: u32 = 1;

/// Counters of what the engine has seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    pub events: u64,
    pub alerts: u64,
    pub suppressed: u64,
    pub revocations: u64,
    /// Events older than their key's newest event by more than a minute:
    /// judged at the key's newest time.
    pub late_events: u64,
    /// Low findings folded into daily digests.
    #[serde(default)]
    pub digested: u64,
}

impl EngineStats {
    fn count(&mut self, disposition: Disposition) {
        match disposition {
            Disposition::Alerted { revocation } => {
                self.alerts += 1;
                if revocation {
                    self.revocations += 1;
                }
            }
            Disposition::Suppressed => self.suppressed += 1,
            Disposition::Digested => self.digested += 1,
        }
    }
}

/// The engine's whole state. Keys are identified by fingerprint only: a
/// snapshot holds no raw key id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub version: u32,
    pub model: String,
    pub endpoints: Vec<String>,
    pub clients: Vec<String>,
    pub keys: Vec<KeyState>,
    pub stats: EngineStats,
    /// The organisation baseline (absent in snapshots of older versions).
    #[serde(default)]
    pub across: AcrossSnapshot,
}

/// Strings interned to dense ids. Endpoint templates and client families
/// come from outside, so the index's hasher is randomly seeded: crafted
/// paths cannot collide on purpose. Ids follow first appearance in `names`;
/// nothing reads the index in order.
#[derive(Default)]
struct Interner {
    index: HashMap<Box<str>, u32, ahash::RandomState>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, text: &str) -> (u32, bool) {
        if let Some(id) = self.index.get(text) {
            return (*id, false);
        }
        let id = self.names.len() as u32;
        self.names.push(text.into());
        self.index.insert(text.into(), id);
        (id, true)
    }
}

/// What resolving one event finds before its key's state is touched: the
/// key's state index, the interned endpoint and client, the GeoIP answer.
#[derive(Clone, Copy)]
struct Resolved {
    key_index: usize,
    endpoint_id: u32,
    client_id: u32,
    geo: GeoInfo,
}

/// The engine.
pub struct Engine {
    model: Arc<Model>,
    model_label: String,
    /// `model.rate.window_alpha()`, which takes a power: computed once.
    rate_alpha: f64,
    geo: Arc<GeoIp>,
    geo_cache: GeoCache,
    /// The kind of each network seen, classified once per ASN.
    network_kinds: NetworkKinds,
    sensitive: SensitiveMatcher,
    /// Raw key id to state index; lives only in memory. Key ids come from
    /// outside, so this map's hasher is randomly seeded: crafted ids cannot
    /// collide on purpose. No output depends on its order.
    key_index: HashMap<Box<str>, u32, ahash::RandomState>,
    by_fingerprint: FxHashMap<String, u32>,
    keys: Vec<KeyState>,
    /// Per key state index: its fingerprint's bits and its hint, for the
    /// view across keys.
    key_ids: Vec<(u128, Hint)>,
    across: Across,
    endpoints: Interner,
    endpoint_sensitive: Vec<bool>,
    clients: Interner,
    stats: EngineStats,
    scratch_path: String,
    findings: Vec<Finding>,
    /// How key ids become fingerprints (see [`Engine::with_fingerprinter`]).
    fingerprinter: Fingerprinter,
}

impl Engine {
    pub fn new(model: Arc<Model>, geo: Arc<GeoIp>) -> Engine {
        let model_label = model.label();
        Engine {
            across: Across::new(&model.across_keys, &model_label),
            model_label,
            rate_alpha: model.rate.window_alpha(),
            sensitive: SensitiveMatcher::new(&model.endpoints.sensitive_patterns),
            network_kinds: NetworkKinds::new(&model.networks),
            model,
            geo,
            geo_cache: GeoCache::new(1 << 16),
            key_index: HashMap::with_hasher(ahash::RandomState::new()),
            by_fingerprint: FxHashMap::default(),
            keys: Vec::new(),
            key_ids: Vec::new(),
            endpoints: Interner::default(),
            endpoint_sensitive: Vec::new(),
            clients: Interner::default(),
            stats: EngineStats::default(),
            scratch_path: String::new(),
            findings: Vec::new(),
            fingerprinter: Fingerprinter::unkeyed(),
        }
    }

    /// Fingerprints keys with `fingerprinter` (unkeyed by default). Set it
    /// before the first event: a key's fingerprint is computed once.
    pub fn with_fingerprinter(mut self, fingerprinter: Fingerprinter) -> Engine {
        self.fingerprinter = fingerprinter;
        self
    }

    /// Processes one micro-batch in order and appends outputs to `out`.
    /// The result never depends on how the input was cut into batches.
    pub fn process(&mut self, events: &[AccessEvent<'_>], out: &mut Vec<Output>) {
        for event in events {
            self.process_event(event, out);
        }
    }

    fn process_event(&mut self, event: &AccessEvent<'_>, out: &mut Vec<Output>) {
        let resolved = self.resolve(event);
        let model: &Model = &self.model;
        let state = &mut self.keys[resolved.key_index];
        if state.events > 0 && event.ts_ms < state.last_ts - LATE_AFTER_MS {
            self.stats.late_events += 1;
        }
        let ts_ms = state.advance_to(event.ts_ms, model, self.rate_alpha);
        self.across.advance_to(ts_ms, &model.across_keys, &self.clients.names);
        flush_digest_before(state, ts_ms, &self.model_label, out);
        let row = ResolvedEvent {
            ts_ms,
            ip: event.ip,
            geo: resolved.geo,
            endpoint_id: resolved.endpoint_id,
            endpoint: &self.endpoints.names[resolved.endpoint_id as usize],
            endpoint_sensitive: self.endpoint_sensitive[resolved.endpoint_id as usize],
            client_id: resolved.client_id,
            client: &self.clients.names[resolved.client_id as usize],
            method: &event.method,
            status: event.status,
            bytes_out: event.bytes_out,
        };
        let ctx = Context {
            model,
            geo: &self.geo,
            endpoint_names: &self.endpoints.names,
            client_names: &self.clients.names,
            novelty: state.novelty(&row, model),
            org: self.across.table(),
        };
        // Familiar before the event joins the key's baseline: a network the
        // key or the organisation already uses (or one GeoIP cannot name).
        let network_familiar =
            row.geo.asn == 0 || state.geo.asns.contains(row.geo.asn) || self.across.org_knows(row.geo.asn);
        let learned = state.has_learned(ts_ms, &model.across_keys.org_learned);
        let established = learned && state.geo.is_established_at(&row.geo, ts_ms, &model.geo);
        let findings = &mut self.findings;
        findings.clear();
        detect::judge(Phase::Before, state, &row, &ctx, findings);
        state.absorb(&row, &ctx.novelty, model);
        detect::judge(Phase::After, state, &row, &ctx, findings);
        for finding in findings.drain(..) {
            let disposition = dispose(state, finding, ts_ms, model, &self.model_label, out);
            self.stats.count(disposition);
        }
        state.count_event(ts_ms);
        self.stats.events += 1;
        let (key, hint) = self.key_ids[resolved.key_index];
        let first_across = out.len();
        self.across.after_event(
            &row,
            key,
            hint,
            learned,
            established,
            network_familiar,
            &model.across_keys,
            out,
        );
        self.stats.alerts += (out.len() - first_across) as u64;
    }

    /// The input has ended (drivers of a finite input call this once, at
    /// the end): the view across keys judges what it still holds back for
    /// ordering, then every pending daily digest goes out, in key order,
    /// since no day of the input can gain another finding.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        let first = out.len();
        self.across.finish(out);
        self.stats.alerts += (out.len() - first) as u64;
        for state in &mut self.keys {
            flush_digest(state, &self.model_label, out);
        }
    }

    /// The view across keys, for drivers that share its halves (Kafka).
    pub fn across_mut(&mut self) -> &mut Across {
        &mut self.across
    }

    /// Interns the event's key, endpoint template and client family, and
    /// looks up its ip and the kind of its network.
    fn resolve(&mut self, event: &AccessEvent<'_>) -> Resolved {
        let mut geo = self.geo_cache.lookup(&self.geo, event.ip);
        geo.kind = self.network_kinds.kind_of(&self.geo, event.ip, geo.asn);
        Resolved {
            key_index: self.intern_key(&event.key_id, event.ts_ms) as usize,
            endpoint_id: self.intern_endpoint(&event.endpoint),
            client_id: self.clients.intern(client_family(&event.user_agent)).0,
            geo,
        }
    }

    fn intern_key(&mut self, key_id: &str, ts_ms: i64) -> u32 {
        if let Some(index) = self.key_index.get(key_id) {
            return *index;
        }
        let fingerprint = self.fingerprinter.fingerprint(key_id);
        let index = match self.by_fingerprint.get(&fingerprint) {
            Some(index) => *index,
            None => {
                let windows =
                    (self.model.rate.surge_window.as_millis() / self.model.rate.spike_window.as_millis()) as usize;
                let index = self.keys.len() as u32;
                let hint = key_hint(key_id);
                self.key_ids
                    .push((fingerprint_bits(&fingerprint).unwrap_or(0), Hint::new(&hint)));
                self.keys.push(KeyState::new(fingerprint.clone(), hint, ts_ms, windows));
                self.by_fingerprint.insert(fingerprint, index);
                index
            }
        };
        self.key_index.insert(key_id.into(), index);
        index
    }

    fn intern_endpoint(&mut self, endpoint: &str) -> u32 {
        let template = normalize_endpoint(endpoint, &mut self.scratch_path);
        let (id, new) = self.endpoints.intern(template);
        if new {
            self.endpoint_sensitive.push(self.sensitive.matches(template));
        }
        id
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Keys with state.
    pub fn keys_tracked(&self) -> usize {
        self.keys.len()
    }

    /// All state, for checkpoints. Contains no raw key id.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            model: self.model_label.clone(),
            endpoints: self.endpoints.names.iter().map(|name| name.to_string()).collect(),
            clients: self.clients.names.iter().map(|name| name.to_string()).collect(),
            keys: self.keys.clone(),
            stats: self.stats.clone(),
            across: self.across.snapshot(),
        }
    }

    /// Adds a snapshot's state: keys in it replace keys of the same
    /// fingerprint; counters add up.
    pub fn restore(&mut self, snapshot: EngineSnapshot) {
        let endpoint_ids: Vec<u32> = snapshot
            .endpoints
            .iter()
            .map(|name| self.intern_endpoint(name))
            .collect();
        let client_ids: Vec<u32> = snapshot
            .clients
            .iter()
            .map(|name| self.clients.intern(name).0)
            .collect();
        let endpoint_map = |id: u32| endpoint_ids.get(id as usize).copied().unwrap_or(0);
        let client_map = |id: u32| client_ids.get(id as usize).copied().unwrap_or(0);
        for mut state in snapshot.keys {
            state.remap(&endpoint_map, &client_map);
            match self.by_fingerprint.get(&state.fingerprint) {
                Some(index) => self.keys[*index as usize] = state,
                None => {
                    let index = self.keys.len() as u32;
                    self.by_fingerprint.insert(state.fingerprint.clone(), index);
                    self.key_ids.push((
                        fingerprint_bits(&state.fingerprint).unwrap_or(0),
                        Hint::new(&state.hint),
                    ));
                    self.keys.push(state);
                }
            }
        }
        let mut org = snapshot.across.org;
        org.remap_clients(&client_map);
        self.across.org.absorb_snapshot(org);
        self.stats.events += snapshot.stats.events;
        self.stats.alerts += snapshot.stats.alerts;
        self.stats.suppressed += snapshot.stats.suppressed;
        self.stats.revocations += snapshot.stats.revocations;
        self.stats.late_events += snapshot.stats.late_events;
        self.stats.digested += snapshot.stats.digested;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Severity;

    /// A mixed workload: several keys with history, then each misbehaving.
    fn workload() -> Vec<AccessEvent<'static>> {
        use crate::detect::testkit::*;
        let mut events = Vec::new();
        for (index, place) in ["london", "dublin", "virginia_aws", "paris"].iter().enumerate() {
            events.extend(history(
                &format!("AKIAWORKLOAD0000000{index}"),
                place,
                5,
                6 + index as i64,
                ENDPOINTS,
            ));
        }
        let twist = T0 + 5 * DAY + 9 * HOUR;
        events.push(event(twist, "AKIAWORKLOAD00000000", ip("sydney", 1), "/v1/orders", 200));
        for call in 0..200 {
            events.push(event(
                twist + call * 500,
                "AKIAWORKLOAD00000001",
                ip("dublin", 1),
                "/v1/orders",
                200,
            ));
        }
        events.push(event(
            twist + 1000,
            "AKIAWORKLOAD00000002",
            ip("virginia_aws", 1),
            "/v1/admin/keys",
            403,
        ));
        events.push(event(
            twist + 2000,
            "AKIAWORKLOAD00000003",
            ip("saopaulo", 1),
            "/v1/orders",
            200,
        ));
        events.sort_by_key(|event| event.ts_ms);
        events
    }

    fn run_in_batches(events: &[AccessEvent<'_>], batch_size: usize) -> Vec<Output> {
        let mut engine = crate::detect::testkit::new_engine();
        let mut out = Vec::new();
        for chunk in events.chunks(batch_size) {
            engine.process(chunk, &mut out);
        }
        out
    }

    #[test]
    fn batch_size_does_not_change_the_outputs() {
        let events = workload();
        let whole = run_in_batches(&events, events.len());
        assert!(whole.len() >= 4, "the workload raises alerts: {whole:#?}");
        assert_eq!(run_in_batches(&events, 1), whole);
        assert_eq!(run_in_batches(&events, 7), whole);
        assert_eq!(run_in_batches(&events, 10_000), whole);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(16))]
        #[test]
        fn any_cut_into_batches_gives_the_same_outputs(cuts in proptest::collection::vec(1usize..3000, 1..12)) {
            let events = workload();
            let whole = run_in_batches(&events, events.len());
            let mut engine = crate::detect::testkit::new_engine();
            let mut out = Vec::new();
            let mut position = 0;
            for cut in cuts.iter().cycle() {
                if position >= events.len() {
                    break;
                }
                let end = (position + cut).min(events.len());
                engine.process(&events[position..end], &mut out);
                position = end;
            }
            proptest::prop_assert_eq!(out, whole);
        }
    }

    #[test]
    fn a_restored_snapshot_continues_exactly_like_the_original() {
        let events = workload();
        let whole = run_in_batches(&events, 500);
        let split = events.len() * 9 / 10;
        let mut first = crate::detect::testkit::new_engine();
        let mut out = Vec::new();
        first.process(&events[..split], &mut out);
        let text = serde_json::to_string(&first.snapshot()).unwrap();
        for key in 0..4 {
            assert!(
                !text.contains(&format!("AKIAWORKLOAD0000000{key}")),
                "a snapshot holds no raw key"
            );
        }
        let mut second = crate::detect::testkit::new_engine();
        second.restore(serde_json::from_str(&text).unwrap());
        second.process(&events[split..], &mut out);
        assert_eq!(out, whole);
    }

    #[test]
    fn outputs_name_keys_only_by_fingerprint_and_hint() {
        let outputs = run_in_batches(&workload(), 100);
        let mut revocations = 0;
        for output in &outputs {
            let text = match output {
                Output::Alert(alert) => serde_json::to_string(alert).unwrap(),
                Output::Revocation(request) => {
                    revocations += 1;
                    serde_json::to_string(request).unwrap()
                }
                Output::Digest(digest) => serde_json::to_string(digest).unwrap(),
            };
            assert!(!text.contains("AKIAWORKLOAD0000000"), "{text}");
        }
        assert!(revocations >= 1, "impossible travel asks for a revocation");
    }

    #[test]
    fn low_findings_go_into_a_daily_digest_sent_when_the_day_is_over() {
        use crate::detect::testkit::*;
        let key = "AKIADIGESTTEST000001";
        let mut engine = Engine::new(Arc::new(Model::default_model()), geo());
        let mut out = Vec::new();
        engine.process(&history(key, "london", 5, 6, ENDPOINTS), &mut out);
        out.clear();
        let day5 = T0 + 5 * DAY + 10 * HOUR;
        engine.process(
            &[
                event(day5, key, ip("london", 1), "/v1/reports", 200),
                event(day5 + HOUR, key, ip("london", 2), "/v1/shipments", 200),
            ],
            &mut out,
        );
        assert!(
            out.iter()
                .all(|output| !matches!(output, Output::Alert(alert) if alert.severity == Severity::Low)),
            "no low alert goes out by itself: {out:?}"
        );
        assert!(
            out.iter().all(|output| !matches!(output, Output::Digest(_))),
            "the day is not over"
        );
        assert_eq!(engine.stats().digested, 2);

        engine.process(&[event(day5 + DAY, key, ip("london", 1), "/v1/orders", 200)], &mut out);
        let digests: Vec<&crate::alert::Digest> = out
            .iter()
            .filter_map(|output| match output {
                Output::Digest(digest) => Some(digest),
                _ => None,
            })
            .collect();
        assert_eq!(digests.len(), 1, "{out:?}");
        assert_eq!(digests[0].findings, 2);
        assert_eq!(digests[0].day, "2026-01-10");
        let subjects: Vec<&str> = digests[0].entries.iter().map(|entry| entry.subject.as_str()).collect();
        assert_eq!(subjects, ["/v1/reports", "/v1/shipments"]);

        out.clear();
        engine.process(
            &[event(day5 + DAY + HOUR, key, ip("london", 1), "/v1/refunds", 200)],
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        engine.finish(&mut out);
        assert!(
            matches!(&out[..], [Output::Digest(digest)] if digest.day == "2026-01-11"),
            "{out:?}"
        );
        out.clear();
        engine.finish(&mut out);
        assert!(out.is_empty(), "a digest goes out once");
    }
}
