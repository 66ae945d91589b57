//! The detection engine: a plain synchronous struct with no I/O and no
//! clock. File replay, Kafka, the demo, tests and benches all drive it the
//! same way: `process` a micro-batch of events in order, collect outputs.
//!
//! Every decision depends only on one key's own sequence of events, in event
//! time, so the outputs never depend on how the input was cut into batches,
//! on other keys' interleaving, or on when the engine runs.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::alert::policy::{Disposition, dispose};
use crate::alert::{Alert, RevocationRequest};
use crate::baseline::KeyState;
use crate::batch::{BatchBuilder, ResolvedBatch};
use crate::detect::{self, Context, EventView, Finding};
use crate::enrich::{GeoCache, GeoIp};
use crate::event::{AccessEvent, key_fingerprint, key_hint};
use crate::model::Model;

/// Events older than their key's newest by more than this count as late.
const LATE_AFTER_MS: i64 = 60_000;
/// Snapshot layout version.
const SNAPSHOT_VERSION: u32 = 1;

/// What the engine emits, in the order of the events that caused it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Alert(Alert),
    Revocation(RevocationRequest),
}

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
}

/// Strings interned to dense ids.
#[derive(Default)]
struct Interner {
    index: FxHashMap<Box<str>, u32>,
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

/// The engine.
pub struct Engine {
    model: Arc<Model>,
    model_label: String,
    /// `model.rate.window_alpha()`, which takes a power: computed once.
    rate_alpha: f64,
    geo: Arc<GeoIp>,
    geo_cache: GeoCache,
    sensitive: SensitiveMatcher,
    /// Raw key id to state index; lives only in memory. Key ids come from
    /// outside, so this map's hasher is randomly seeded: crafted ids cannot
    /// collide on purpose. No output depends on its order.
    key_index: HashMap<Box<str>, u32, ahash::RandomState>,
    by_fingerprint: FxHashMap<String, u32>,
    keys: Vec<KeyState>,
    endpoints: Interner,
    endpoint_sensitive: Vec<bool>,
    clients: Interner,
    stats: EngineStats,
    scratch_path: String,
    findings: Vec<Finding>,
}

impl Engine {
    pub fn new(model: Arc<Model>, geo: Arc<GeoIp>) -> Engine {
        Engine {
            model_label: model.label(),
            rate_alpha: model.rate.window_alpha(),
            sensitive: SensitiveMatcher::new(&model.endpoints.sensitive_patterns),
            model,
            geo,
            geo_cache: GeoCache::new(1 << 16),
            key_index: HashMap::with_hasher(ahash::RandomState::new()),
            by_fingerprint: FxHashMap::default(),
            keys: Vec::new(),
            endpoints: Interner::default(),
            endpoint_sensitive: Vec::new(),
            clients: Interner::default(),
            stats: EngineStats::default(),
            scratch_path: String::new(),
            findings: Vec::new(),
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Processes one micro-batch in order and appends outputs to `out`.
    /// The result never depends on how the input was cut into batches.
    pub fn process(&mut self, events: &[AccessEvent<'_>], out: &mut Vec<Output>) {
        if events.is_empty() {
            return;
        }
        let batch = self.resolve(events);
        for (row, event) in events.iter().enumerate() {
            self.process_row(&batch, row, event, out);
        }
    }

    /// Resolves a batch into columns: interned key, endpoint and client ids,
    /// and GeoIP answers.
    pub fn resolve(&mut self, events: &[AccessEvent<'_>]) -> ResolvedBatch {
        let mut builder = BatchBuilder::with_capacity(events.len());
        for event in events {
            let key = self.intern_key(&event.key_id, event.ts_ms);
            let endpoint = self.intern_endpoint(&event.endpoint);
            let client = self.clients.intern(detect::client::client_family(&event.user_agent)).0;
            let geo = self.geo_cache.lookup(&self.geo, event.ip);
            builder.append(event.ts_ms, key, endpoint, client, event.status, &geo);
        }
        builder.finish()
    }

    fn intern_key(&mut self, key_id: &str, ts_ms: i64) -> u32 {
        if let Some(index) = self.key_index.get(key_id) {
            return *index;
        }
        let fingerprint = key_fingerprint(key_id);
        let index = match self.by_fingerprint.get(&fingerprint) {
            Some(index) => *index,
            None => {
                let windows =
                    (self.model.rate.surge_window.as_millis() / self.model.rate.spike_window.as_millis()) as usize;
                let index = self.keys.len() as u32;
                self.keys
                    .push(KeyState::new(fingerprint.clone(), key_hint(key_id), ts_ms, windows));
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

    fn process_row(&mut self, batch: &ResolvedBatch, row: usize, event: &AccessEvent<'_>, out: &mut Vec<Output>) {
        let model: &Model = &self.model;
        let key_index = batch.key.value(row) as usize;
        let endpoint_id = batch.endpoint.value(row);
        let client_id = batch.client.value(row);
        let state = &mut self.keys[key_index];
        let raw_ts = batch.ts_ms.value(row);
        if state.events > 0 && raw_ts < state.last_ts - LATE_AFTER_MS {
            self.stats.late_events += 1;
        }
        // Per key, time never runs backwards: a late event is judged at the
        // key's newest time, which keeps every window monotonic.
        let ts_ms = if state.events > 0 {
            raw_ts.max(state.last_ts)
        } else {
            raw_ts
        };
        let view = EventView {
            ts_ms,
            ip: event.ip,
            geo: batch.geo(row),
            endpoint_id,
            endpoint: &self.endpoints.names[endpoint_id as usize],
            endpoint_sensitive: self.endpoint_sensitive[endpoint_id as usize],
            client_id,
            client: &self.clients.names[client_id as usize],
            method: &event.method,
            status: batch.status.value(row),
        };
        let ctx = Context {
            model,
            geo: &self.geo,
            endpoint_names: &self.endpoints.names,
            client_names: &self.clients.names,
        };

        // Windows move to this event's time first.
        let rate_model = &model.rate;
        let robust = state.has_learned(ts_ms, &rate_model.learning);
        state.rate.advance(
            ts_ms,
            rate_model.window_ms(),
            self.rate_alpha,
            rate_model.window_floor(),
            robust,
        );
        state.auth.advance(ts_ms, model.auth_failures.window.as_millis() as i64);
        state.endpoints.advance(
            ts_ms,
            model.endpoints.mix_window.as_millis() as i64,
            model.endpoints.mix_min_calls as u32,
        );
        state.geo.decay_to(ts_ms, model.geo.half_life.as_millis() as i64);
        state
            .endpoints
            .endpoints
            .decay_to(ts_ms, model.endpoints.half_life.as_millis() as i64);
        state.clients.decay_to(ts_ms, model.geo.half_life.as_millis() as i64);

        // Judged against the baseline before this event joins it.
        let findings = &mut self.findings;
        findings.clear();
        detect::rate::check_dormant(state, &view, &ctx, findings);
        detect::geo::check_travel(state, &view, &ctx, findings);
        detect::geo::check_new_place(state, &view, &ctx, findings);
        detect::endpoints::check_new_endpoint(state, &view, &ctx, findings);
        detect::client::check_new_client(state, &view, &ctx, findings);

        // The event joins the baseline.
        state.rate.count += 1;
        if view.is_auth_failure() {
            state.auth.failures += 1;
        }
        state.auth.calls += 1;
        state
            .endpoints
            .count_in_window(endpoint_id, model.endpoints.max_endpoints);
        state
            .endpoints
            .endpoints
            .add(endpoint_id, ts_ms, model.endpoints.max_endpoints);
        state.clients.add(client_id, ts_ms, model.client.max_clients);
        state.geo.update(
            ts_ms,
            view.ip,
            &view.geo,
            model.geo.half_life.as_millis() as i64,
            model.geo.max_countries,
            model.geo.max_asns,
        );

        // Judged on windows that now include this event.
        detect::rate::check_rate(state, &view, &ctx, findings);
        detect::auth::check_auth_failures(state, &view, &ctx, findings);
        detect::endpoints::check_mix_shift(state, &view, &ctx, findings);

        for finding in findings.drain(..) {
            match dispose(state, finding, ts_ms, model, &self.model_label, out) {
                Disposition::Alerted { revocation } => {
                    self.stats.alerts += 1;
                    if revocation {
                        self.stats.revocations += 1;
                    }
                }
                Disposition::Suppressed => self.stats.suppressed += 1,
            }
        }
        state.events += 1;
        state.last_ts = ts_ms;
        self.stats.events += 1;
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
                    self.keys.push(state);
                }
            }
        }
        self.stats.events += snapshot.stats.events;
        self.stats.alerts += snapshot.stats.alerts;
        self.stats.suppressed += snapshot.stats.suppressed;
        self.stats.revocations += snapshot.stats.revocations;
        self.stats.late_events += snapshot.stats.late_events;
    }
}

/// Replaces id-like path segments (numbers, UUIDs, long tokens with digits)
/// with `{id}` and drops the query string, so `/v1/orders/8812?x=1` and
/// `/v1/orders/9120` are one endpoint. Returns the input itself when nothing
/// changes, so the common case copies nothing.
pub fn normalize_endpoint<'a>(endpoint: &'a str, scratch: &'a mut String) -> &'a str {
    let path = endpoint.split(['?', '#']).next().unwrap_or(endpoint);
    let needs_template = path.split('/').any(is_id_segment);
    if !needs_template {
        return path;
    }
    scratch.clear();
    for (index, segment) in path.split('/').enumerate() {
        if index > 0 {
            scratch.push('/');
        }
        scratch.push_str(if is_id_segment(segment) { "{id}" } else { segment });
    }
    scratch.as_str()
}

fn is_id_segment(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let bytes = segment.as_bytes();
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let token_chars = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !token_chars {
        return false;
    }
    if bytes.len() >= 8 && bytes.iter().any(u8::is_ascii_digit) {
        return true;
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
            };
            assert!(!text.contains("AKIAWORKLOAD0000000"), "{text}");
        }
        assert!(revocations >= 1, "impossible travel asks for a revocation");
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
