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
//!
//! Events are judged in event-time order, not arrival order: each waits in
//! a reorder buffer ([`order`]) until the input's clock is
//! `time.max_out_of_order` past it, and leaves in an order fixed by its
//! content. An event older than its key's newest judged one is late: counted, and
//! judged without travel checks. An event far ahead of the clock waits
//! apart until other keys confirm the jump, or is quarantined.

mod key_index;
pub mod order;

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::alert::Output;
use crate::alert::policy::{Disposition, dispose, flush_digest, flush_digest_before};
use crate::allowlist::{Allowlist, is_geography};
use crate::baseline::auth::AuthBaseline;
use crate::baseline::{AlertMemory, Dormancy, KeyState};
use crate::detect::{self, Context, Finding};
use crate::detector::Phase;
use crate::enrich::client::client_family;
use crate::enrich::endpoint::{SensitiveMatcher, normalize_endpoint};
use crate::enrich::{GeoCache, GeoIp, NetworkKinds, ResolvedEvent};
use crate::event::{AccessEvent, Fingerprinter, key_hint};
use crate::feedback::{Effect, FeedbackAudit, FeedbackBook, FeedbackEntry, Outcome, Whereabouts};
use crate::fleet::{Across, AcrossSnapshot};
use crate::key_text::{Fingerprint, Hint, index_bits};
use crate::model::Model;
use key_index::KeyIndex;
use order::{Arrival, EventTime, HeldText, NO_STATE_HINT, Row};
pub use order::{EventTimeSnapshot, HeldEvent};

/// Snapshot layout version. Version 2 added the evicted keys' dormancy
/// records, the engine's clock, light keys and the input's event time;
/// version 1 snapshots still load (their
/// missing fields take defaults).
pub const SNAPSHOT_VERSION: u32 = 2;
/// Marks state indexes of light keys in the fingerprint index.
const LIGHT: u32 = 1 << 31;
/// Event time of a day: eviction runs once per day of the engine's clock.
const DAY_MS: i64 = 86_400_000;
/// Quarantined events kept for [`Engine::take_quarantined`] at most;
/// beyond, they are counted only.
const MAX_QUARANTINED_KEPT: usize = 4096;

/// Counters of what the engine has seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EngineStats {
    pub events: u64,
    pub alerts: u64,
    pub suppressed: u64,
    pub revocations: u64,
    /// Events that arrived after the input's watermark had passed them
    /// and were older than their key's newest judged event: judged at its
    /// time, without travel checks, and without moving the key's places.
    pub late_events: u64,
    /// Low findings folded into daily digests.
    #[serde(default)]
    pub digested: u64,
    /// Events quarantined as too far ahead of the input's clock.
    #[serde(default)]
    pub future_events: u64,
    /// Repeats sent as updates of their alert (same id, next revision).
    #[serde(default)]
    pub alert_updates: u64,
    /// Findings dropped by analysts' feedback or expectations in force.
    #[serde(default)]
    pub silenced_by_feedback: u64,
    /// Geography findings of calls from allowlisted networks, dropped.
    #[serde(default)]
    pub allowlisted: u64,
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
            Disposition::Updated { revocation } => {
                self.alert_updates += 1;
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
    /// The input's clock and the events it holds (absent in older snapshots).
    #[serde(default)]
    pub time: EventTimeSnapshot,
    /// Keys evicted for silence that may still be judged dormant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dormant: Vec<DormantRecord>,
    /// The newest event time the engine has seen (its clock for eviction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_ms: Option<i64>,
    /// Keys seen only in 401s.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub light: Vec<LightKey>,
}

/// An event quarantined as too far ahead of the input's clock, for the
/// driver's rejected output. Names its key by fingerprint only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quarantined {
    /// What the driver passed with the event ([`Engine::process_with_origins`]).
    #[serde(skip)]
    pub origin: u64,
    pub ts: String,
    pub key_fingerprint: String,
    pub ip: std::net::IpAddr,
    pub method: String,
    pub endpoint: String,
    pub status: u16,
    /// The input's clock when it arrived.
    pub input_time: String,
}

/// A key that has had no call but 401s: its fingerprint, hint, times, event
/// count and auth-failure baseline, and nothing else. Whoever knows or
/// guesses key ids (a spray, session credentials never used) makes many of
/// these; each costs a small fraction of a full [`KeyState`]. Its first
/// call that is not a 401 gives it full state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LightKey {
    pub fingerprint: Fingerprint,
    pub hint: Hint,
    pub first_ts: i64,
    pub last_ts: i64,
    pub events: u64,
    pub auth: AuthBaseline,
}

/// A key evicted for silence, by fingerprint, with what dormant detection
/// needs of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DormantRecord {
    pub fingerprint: Fingerprint,
    pub first_ts: i64,
    pub last_ts: i64,
    pub events: u64,
}

/// Why a snapshot cannot be restored into this engine.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("snapshot version {found} is newer than this build's {supported}")]
    Version { found: u32, supported: u32 },
    #[error("snapshot was made with model {found}, this engine runs {running}")]
    Model { found: String, running: String },
    #[error("snapshot key {index} is inconsistent: {detail}")]
    Key { index: usize, detail: String },
}

impl RestoreError {
    /// A short stable name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RestoreError::Version { .. } => "version",
            RestoreError::Model { .. } => "model",
            RestoreError::Key { .. } => "inconsistent",
        }
    }
}

/// Hints the CPU to load `len` bytes from `start` into its caches. It
/// changes nothing the program reads, only when memory arrives.
#[inline(always)]
fn prefetch_bytes(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        const CACHE_LINE: usize = 64;
        let mut offset = 0;
        while offset < len {
            // SAFETY: a prefetch never faults and reads nothing the program
            // sees, whatever the address; `wrapping_add` keeps the pointer
            // arithmetic defined.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset).cast()) };
            offset += CACHE_LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
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
    /// Keeps the names whose id `keep` accepts, in order; returns how many
    /// and each old id's new id (0 for names dropped, which nothing refers
    /// to any more).
    fn keep(&mut self, keep: impl Fn(usize) -> bool) -> (usize, Vec<u32>) {
        let old_names = std::mem::take(&mut self.names);
        self.index.clear();
        let mut new_ids = Vec::with_capacity(old_names.len());
        for (id, name) in old_names.into_iter().enumerate() {
            if !keep(id) {
                new_ids.push(0);
                continue;
            }
            new_ids.push(self.names.len() as u32);
            self.index.insert(name.clone(), self.names.len() as u32);
            self.names.push(name);
        }
        self.names.shrink_to_fit();
        self.index.shrink_to_fit();
        (self.names.len(), new_ids)
    }

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

/// What an event's endpoint and user agent are, as a driver hands them over.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Texts {
    /// As logged.
    Raw,
    /// Already the endpoint's template and the agent's client family.
    Resolved,
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
    /// Raw key id to state index; lives only in memory.
    key_index: KeyIndex,
    /// Fingerprint bits to state index, or to light slot with [`LIGHT`]
    /// set. Raw ids of light keys are not kept in `key_index`.
    by_fingerprint: FxHashMap<u128, u32>,
    /// Keys seen only in 401s, by slot; freed slots are reused.
    light: Vec<Option<LightKey>>,
    free_light: Vec<u32>,
    /// The light slot whose key is lent out as the last of `keys` for the
    /// event being processed; it goes back to its slot when the next event
    /// is resolved (or gets full state if it raised an alert).
    lent_light: Option<u32>,
    /// The last lent state given back, kept for its rings (see
    /// [`Engine::lend_light`]); never read as a key's state.
    spare_lent: Option<KeyState>,
    keys: Vec<KeyState>,
    /// Keys evicted for silence that may still be judged dormant, by
    /// fingerprint bits.
    dormant: FxHashMap<u128, Dormancy>,
    /// The newest event time seen: eviction runs when it enters a new day.
    clock_ms: Option<i64>,
    /// Interner sizes that trigger the next rebuild.
    endpoint_rebuild_at: usize,
    client_rebuild_at: usize,
    /// Per key state index: its fingerprint's bits, for the view across
    /// keys (which takes the hint from the state: not kept twice).
    key_ids: Vec<u128>,
    across: Across,
    endpoints: Interner,
    endpoint_sensitive: Vec<bool>,
    clients: Interner,
    stats: EngineStats,
    scratch_path: String,
    findings: Vec<Finding>,
    /// The input's clock, reorder buffer and far-ahead pen.
    time: EventTime,
    held_methods: HeldText,
    held_endpoints: HeldText,
    held_clients: HeldText,
    max_out_of_order_ms: i64,
    max_ahead_ms: i64,
    /// Rows moving between the pen and the buffer or the quarantine.
    scratch_rows: Vec<Row>,
    quarantined: Vec<Quarantined>,
    /// How key ids become fingerprints (see [`Engine::with_fingerprinter`]).
    fingerprinter: Fingerprinter,
    /// Which keys changed since the last incremental checkpoint (see
    /// [`Engine::track_changes`]); untouched when not tracking.
    changes: Changes,
    /// Networks whose calls raise no geography finding.
    allowlist: Allowlist,
    /// Analysts' feedback waiting for the clock to reach its time.
    feedback: FeedbackBook,
    /// Audit records of feedback handled, for [`Engine::take_feedback_audit`].
    feedback_audit: Vec<FeedbackAudit>,
}

/// The keys whose state changed since the last incremental checkpoint: a
/// flag per state index (set when a key is made, judged or remapped), and
/// the fingerprint bits of keys evicted since. Marking costs no allocation
/// per event; the flags grow with the keys only.
#[derive(Default)]
struct Changes {
    tracking: bool,
    dirty: Vec<bool>,
    evicted: Vec<u128>,
}

impl Changes {
    fn mark(&mut self, index: usize) {
        if !self.tracking {
            return;
        }
        if index >= self.dirty.len() {
            self.dirty.resize(index + 1, false);
        }
        self.dirty[index] = true;
    }

    fn mark_all(&mut self, keys: usize) {
        if self.tracking {
            self.dirty.clear();
            self.dirty.resize(keys, true);
        }
    }
}

impl Engine {
    pub fn new(model: Arc<Model>, geo: Arc<GeoIp>) -> Engine {
        let model_label = model.label();
        let max_out_of_order_ms = model.time.max_out_of_order.as_millis() as i64;
        let max_ahead_ms = model.time.max_ahead.as_millis() as i64;
        let (endpoint_rebuild_at, client_rebuild_at) =
            (model.state.max_endpoint_templates, model.state.max_client_families);
        // Checked when the model was loaded.
        let allowlist = Allowlist::new(&model.allowlist).unwrap_or_default();
        Engine {
            across: Across::new(&model.across_keys, &model_label),
            model_label,
            rate_alpha: model.rate.window_alpha(),
            sensitive: SensitiveMatcher::new(&model.endpoints.sensitive_patterns),
            network_kinds: NetworkKinds::new(&model.networks),
            model,
            geo,
            geo_cache: GeoCache::new(1 << 16),
            key_index: KeyIndex::default(),
            by_fingerprint: FxHashMap::default(),
            keys: Vec::new(),
            dormant: FxHashMap::default(),
            light: Vec::new(),
            free_light: Vec::new(),
            lent_light: None,
            spare_lent: None,
            clock_ms: None,
            endpoint_rebuild_at,
            client_rebuild_at,
            key_ids: Vec::new(),
            endpoints: Interner::default(),
            endpoint_sensitive: Vec::new(),
            clients: Interner::default(),
            stats: EngineStats::default(),
            scratch_path: String::new(),
            findings: Vec::new(),
            time: EventTime::default(),
            held_methods: HeldText::default(),
            held_endpoints: HeldText::default(),
            held_clients: HeldText::default(),
            max_out_of_order_ms,
            max_ahead_ms,
            scratch_rows: Vec::new(),
            quarantined: Vec::new(),
            fingerprinter: Fingerprinter::unkeyed(),
            changes: Changes::default(),
            allowlist,
            feedback: FeedbackBook::new(),
            feedback_audit: Vec::new(),
        }
    }

    /// Fingerprints keys with `fingerprinter` (unkeyed by default). Set it
    /// before the first event: a key's fingerprint is computed once.
    pub fn with_fingerprinter(mut self, fingerprinter: Fingerprinter) -> Engine {
        self.fingerprinter = fingerprinter;
        self
    }

    /// Processes one micro-batch in arrival order and appends outputs to
    /// `out`. The result never depends on how the input was cut into
    /// batches, nor on the order of events within `time.max_out_of_order`.
    pub fn process(&mut self, events: &[AccessEvent<'_>], out: &mut Vec<Output>) {
        self.process_with_origins(events, &[], out);
    }

    /// [`Engine::process`] with, per event, a number the driver uses to
    /// find the event again should it be quarantined ([`Engine::take_quarantined`]).
    pub fn process_with_origins(&mut self, events: &[AccessEvent<'_>], origins: &[u64], out: &mut Vec<Output>) {
        self.process_texts(events, origins, Texts::Raw, out);
    }

    /// [`Engine::process_with_origins`] for events whose texts are as
    /// `texts` says. With [`Texts::Resolved`], a driver resolved them
    /// already, on other threads: the engine reads an endpoint only through
    /// [`normalize_endpoint`] and a user agent only through
    /// [`client_family`], so the outputs are those of the raw events.
    pub fn process_texts(&mut self, events: &[AccessEvent<'_>], origins: &[u64], texts: Texts, out: &mut Vec<Output>) {
        for (index, event) in events.iter().enumerate() {
            let origin = origins.get(index).copied().unwrap_or(0);
            self.admit(event, origin, texts, out);
        }
    }

    /// [`Engine::process_texts`] that stops after the first event whose
    /// judging emits a revocation candidate; returns how many events it
    /// took. A replay driver offers the candidate to its gate right there,
    /// so the gate's outputs fall at the same event whatever the batch
    /// size.
    pub fn process_until_candidate(
        &mut self,
        events: &[AccessEvent<'_>],
        origins: &[u64],
        texts: Texts,
        out: &mut Vec<Output>,
    ) -> usize {
        for (index, event) in events.iter().enumerate() {
            let origin = origins.get(index).copied().unwrap_or(0);
            let before = out.len();
            self.admit(event, origin, texts, out);
            if out.len() > before
                && out[before..]
                    .iter()
                    .any(|output| matches!(output, Output::Revocation(_)))
            {
                return index + 1;
            }
        }
        events.len()
    }

    /// Judges every event waiting in the reorder buffer now, as if the
    /// watermark had reached the input's clock: for a driver that knows no
    /// older event can come (tests that check the outputs of each batch).
    /// Events held far ahead keep waiting.
    pub fn release_held(&mut self, out: &mut Vec<Output>) {
        while let Some(row) = self.time.pop_any() {
            self.judge(row, false, out);
        }
    }

    /// How far past the input's clock an event may be before it is held
    /// apart (`time.max_ahead`), in milliseconds.
    pub fn max_ahead_ms(&self) -> i64 {
        self.max_ahead_ms
    }

    /// Arrivals in a row, all far ahead of the clock, that move it on
    /// their own (`time.confirm_after`).
    pub fn confirm_after(&self) -> u32 {
        self.model.time.confirm_after
    }

    /// Events waiting in the reorder buffer for the input's time to pass
    /// them (not counting those held far ahead).
    /// The event time before which no more revocation candidate can come
    /// from in-order events: every event still to come that is not late is
    /// at least this new ([`order`]). `i64::MIN` before the first release.
    pub fn candidate_watermark(&self) -> i64 {
        self.time.released_ms.unwrap_or(i64::MIN)
    }

    pub fn held_events(&self) -> usize {
        self.time.held.len()
    }

    /// Events quarantined since the last call, as too far ahead of the
    /// input's clock: for the driver's rejected output.
    pub fn take_quarantined(&mut self, into: &mut Vec<Quarantined>) {
        into.append(&mut self.quarantined);
    }

    /// Holds one arriving event, then judges whatever the input's clock
    /// now lets go.
    fn admit(&mut self, event: &AccessEvent<'_>, origin: u64, texts: Texts, out: &mut Vec<Output>) {
        let arrival = self.time.arrival(event.ts_ms, self.max_ahead_ms);
        let row = self.hold(event, origin, texts);
        match arrival {
            Arrival::Late => {
                self.time.ahead_run = 0;
                // Behind the input's watermark but not behind its own key's
                // judged events (its key's events came through a lagging
                // upstream partition, in order): judged now, in its key's
                // order, since every per-key decision reads only the key's
                // own sequence. Only older than its key's newest is late.
                let late = self
                    .key_last_use(row.key_bits)
                    .is_some_and(|(events, last_ts)| events > 0 && row.ts_ms < last_ts);
                if late {
                    self.stats.late_events += 1;
                }
                self.judge(row, late, out);
            }
            Arrival::InOrder => {
                self.time.ahead_run = 0;
                self.time.held.push(row);
                self.time.advance(row.ts_ms);
                self.settle(out);
            }
            Arrival::Ahead => {
                self.time.ahead_run = self.time.ahead_run.saturating_add(1);
                self.time.ahead.push(row);
                // Two distinct keys confirm a jump; an input that has only
                // ever seen one key has no second witness.
                let need = self.keys.len().clamp(1, 2);
                let time_model = &self.model.time;
                if let Some(jump_ms) = self
                    .time
                    .confirmed_jump(need, self.max_ahead_ms, time_model.confirm_after)
                {
                    self.time.advance(jump_ms);
                    self.time.ahead_run = 0;
                    self.settle_jump(out);
                }
                self.settle(out);
            }
        }
    }

    /// After the clock moved: rows held ahead that are now near enough join
    /// the reorder buffer (moving the clock in turn), rows held ahead too
    /// long are quarantined, and rows the watermark passed are judged in
    /// order.
    fn settle(&mut self, out: &mut Vec<Output>) {
        let mut rows = std::mem::take(&mut self.scratch_rows);
        self.time.admit_near(self.max_ahead_ms, &mut rows);
        rows.clear();
        self.time
            .take_expired(self.max_ahead_ms, self.model.time.max_ahead_held, &mut rows);
        for row in rows.drain(..) {
            self.quarantine(row);
        }
        self.scratch_rows = rows;
        while let Some(row) = self.time.pop_ready(self.max_out_of_order_ms) {
            self.judge(row, false, out);
        }
        self.forget_held_text_when_full();
    }

    /// The buffer's own string tables grow with every distinct string that
    /// passes through; once the buffer is empty and they hold more than the
    /// engine's tables may, they start afresh (their ids are local to held
    /// rows, and none is held).
    fn forget_held_text_when_full(&mut self) {
        let full = self.held_endpoints.len() > self.model.state.max_endpoint_templates
            || self.held_clients.len() > self.model.state.max_client_families
            || self.held_methods.len() > self.model.state.max_endpoint_templates;
        if full && self.time.held.is_empty() && self.time.ahead.is_empty() {
            self.held_methods.clear();
            self.held_endpoints.clear();
            self.held_clients.clear();
        }
    }

    /// After a confirmed jump: the rows it brings near join the reorder
    /// buffer, and those still far ahead wait afresh from the new clock.
    fn settle_jump(&mut self, out: &mut Vec<Output>) {
        let mut rows = std::mem::take(&mut self.scratch_rows);
        self.time.admit_near(self.max_ahead_ms, &mut rows);
        self.scratch_rows = rows;
        if let Some(clock_ms) = self.time.clock_ms {
            self.time.rearrive(clock_ms);
        }
        while let Some(row) = self.time.pop_ready(self.max_out_of_order_ms) {
            self.judge(row, false, out);
        }
    }

    fn quarantine(&mut self, row: Row) {
        self.stats.future_events += 1;
        // A driver that never takes them (the source stage, tests) must
        // not grow this without bound.
        if self.quarantined.len() >= MAX_QUARANTINED_KEPT {
            return;
        }
        self.quarantined.push(Quarantined {
            origin: row.origin,
            ts: crate::event::format_ts(row.ts_ms),
            key_fingerprint: self.fingerprint_of(row.key_bits),
            ip: row.ip,
            method: self.held_methods.name(row.method).to_string(),
            endpoint: self.held_endpoints.name(row.endpoint).to_string(),
            status: row.status,
            input_time: crate::event::format_ts(row.arrived_clock_ms),
        });
    }

    /// Resolves an arriving event as far as holding it needs: its key's
    /// state (by fingerprint bits for ordering), its texts interned to the
    /// buffer's own ids. Endpoint and client ids of the engine, which enter
    /// outputs on ties, are given at release, in release order.
    fn hold(&mut self, event: &AccessEvent<'_>, origin: u64, texts: Texts) -> Row {
        let (key_bits, state_hint) = self.intern_key(&event.key_id, event.ts_ms, event.status == 401);
        let (template, family) = match texts {
            Texts::Raw => (
                normalize_endpoint(&event.endpoint, &mut self.scratch_path),
                client_family(&event.user_agent),
            ),
            Texts::Resolved => (&*event.endpoint, &*event.user_agent),
        };
        let ids = [
            self.held_methods.intern(&event.method),
            self.held_endpoints.intern(template),
            self.held_clients.intern(family),
        ];
        Row {
            ts_ms: event.ts_ms,
            key_bits,
            state_hint,
            ip: event.ip,
            status: event.status,
            bytes_out: event.bytes_out,
            text_hash: order::text_hash(&[&self.held_methods, &self.held_endpoints, &self.held_clients], ids),
            method: ids[0],
            endpoint: ids[1],
            client: ids[2],
            origin,
            arrived_clock_ms: self.time.clock_ms.unwrap_or(event.ts_ms),
        }
    }

    /// The engine's endpoint id of a held endpoint template.
    fn release_endpoint(&mut self, held: u32) -> u32 {
        let cached = self.held_endpoints.engine_ids[held as usize];
        if cached != u32::MAX {
            return cached;
        }
        // Once per distinct template until the tables are rebuilt.
        let template: Box<str> = self.held_endpoints.name(held).into();
        let id = self.intern_template(&template);
        self.held_endpoints.engine_ids[held as usize] = id;
        id
    }

    /// The engine's client id of a held client family.
    fn release_client(&mut self, held: u32) -> u32 {
        let cached = self.held_clients.engine_ids[held as usize];
        if cached != u32::MAX {
            return cached;
        }
        let family: Box<str> = self.held_clients.name(held).into();
        let id = self.intern_client(&family);
        self.held_clients.engine_ids[held as usize] = id;
        id
    }

    /// Judges one event: advance, judge (before), absorb, judge (after),
    /// dispose. A late event is judged at its key's newest time, without
    /// travel checks, and leaves the key's places alone.
    fn judge(&mut self, held: Row, late: bool, out: &mut Vec<Output>) {
        self.advance_clock(held.ts_ms, held.key_bits);
        if let Some(clock_ms) = self.clock_ms
            && self.feedback.is_due(clock_ms)
        {
            self.apply_due_feedback(clock_ms);
        }
        let Some(key_index) = self.judged_state_index(&held) else {
            tracing::error!("an event's key has no state; event skipped");
            return;
        };
        self.prefetch_next_state();
        let endpoint_id = self.release_endpoint(held.endpoint);
        let client_id = self.release_client(held.client);
        let mut geo = self.geo_cache.lookup(&self.geo, held.ip);
        geo.kind = self.network_kinds.kind_of(&self.geo, held.ip, geo.asn);
        let model: &Model = &self.model;
        let state = &mut self.keys[key_index];
        if state.events == 0 {
            // The key's state was made when its first event arrived, which
            // need not be its first in event time.
            state.first_ts = held.ts_ms;
            state.last_ts = held.ts_ms;
        }
        let ts_ms = state.advance_to(held.ts_ms, model, self.rate_alpha);
        self.across.advance_to(ts_ms, &model.across_keys, &self.clients.names);
        flush_digest_before(state, ts_ms, &self.model_label, out);
        let row = ResolvedEvent {
            ts_ms,
            ip: held.ip,
            geo,
            endpoint_id,
            endpoint: &self.endpoints.names[endpoint_id as usize],
            endpoint_sensitive: self.endpoint_sensitive[endpoint_id as usize],
            client_id,
            client: &self.clients.names[client_id as usize],
            method: self.held_methods.name(held.method),
            status: held.status,
            bytes_out: held.bytes_out,
        };
        let mut novelty = state.novelty(&row, model);
        if late {
            novelty.travel = None;
            novelty.region_overlap = None;
            novelty.late = true;
        }
        if !self.allowlist.is_empty() && self.allowlist.contains(row.ip, row.geo.asn) {
            novelty.travel = None;
            novelty.region_overlap = None;
            novelty.allowlisted = true;
        }
        let ctx = Context {
            model,
            geo: &self.geo,
            endpoint_names: &self.endpoints.names,
            client_names: &self.clients.names,
            novelty,
            org: self.across.table(),
        };
        // Familiar before the event joins the key's baseline: a network the
        // key or the organisation already uses (or one GeoIP cannot name).
        // An allowlisted network (corporate egress, a VPN) carries many keys
        // by design: not a source spraying keys.
        let network_familiar = novelty.allowlisted
            || row.geo.asn == 0
            || state.geo.asns.contains(row.geo.asn)
            || self.across.org_knows(row.geo.asn);
        let learned = state.has_learned(ts_ms, &model.across_keys.org_learned);
        let established = learned && state.geo.is_established_at(&row.geo, ts_ms, &model.geo);
        let findings = &mut self.findings;
        findings.clear();
        detect::judge(Phase::Before, state, &row, &ctx, findings);
        state.absorb(&row, &ctx.novelty, model);
        detect::judge(Phase::After, state, &row, &ctx, findings);
        let place = Whereabouts {
            country: row.geo.country.0,
            asn: row.geo.asn,
            from: novelty.travel.map(|jump| (jump.previous.country, jump.previous.asn)),
        };
        for mut finding in findings.drain(..) {
            if novelty.allowlisted && is_geography(finding.detector) {
                self.stats.allowlisted += 1;
                continue;
            }
            if !state.feedback.is_empty() {
                match state.feedback.effect(finding.detector, &finding.subject, &place, ts_ms) {
                    Some(Effect::Silence) => {
                        self.stats.silenced_by_feedback += 1;
                        continue;
                    }
                    Some(Effect::Confirm(analyst)) => {
                        crate::feedback::confirm(&mut finding.severity, &mut finding.evidence, &analyst)
                    }
                    None => {}
                }
            }
            let disposition = dispose(state, finding, ts_ms, model, &self.model_label, out);
            if let Disposition::Alerted { revocation: true } = disposition
                && let Some(Output::Revocation(request)) = out.last()
            {
                state.alerts.make_mut().last_revocation = Some(Box::new(crate::baseline::RevocationMark {
                    ts_ms,
                    idempotency_key: request.idempotency_key.clone(),
                    incident_id: request.incident_id.clone(),
                }));
            }
            self.stats.count(disposition);
        }
        state.count_event(ts_ms);
        self.changes.mark(key_index);
        self.stats.events += 1;
        let (key, hint) = (self.key_ids[key_index], self.keys[key_index].hint);
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
        self.return_lent_light();
    }

    /// The input has ended (drivers of a finite input call this once, at
    /// the end): the view across keys judges what it still holds back for
    /// ordering, then every pending daily digest goes out, in key order,
    /// since no day of the input can gain another finding.
    ///
    /// Everything held is let go first, in event-time order. Of the events
    /// still held far ahead, only the input's tail is believed: the arrivals
    /// in a row that were all far ahead when the input ended (it moved to
    /// their time and never came back, as after a quiet night with one key
    /// still calling). The clock steps to each of them in turn, bringing
    /// near what is near, unless a step would pass `state.evict_after` (no
    /// key of the input would outlive such a jump). Every other event held
    /// ahead (the input carried on at the old time after it) is
    /// quarantined: it never moves a key's time.
    /// Digests go out in fingerprint order: the order keys were first seen
    /// in depends on arrival.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        let mut rows = std::mem::take(&mut self.scratch_rows);
        let tail_len = (self.time.ahead_run as usize).min(self.time.ahead.len());
        let mut tail: Vec<i64> = self.time.ahead[self.time.ahead.len() - tail_len..]
            .iter()
            .map(|row| row.ts_ms)
            .collect();
        tail.sort_unstable();
        let max_step_ms = i64::try_from(self.model.state.evict_after.as_millis()).unwrap_or(i64::MAX);
        for ts_ms in tail {
            let clock_ms = self.time.clock_ms.unwrap_or(ts_ms);
            if ts_ms <= clock_ms.saturating_add(self.max_ahead_ms) {
                continue;
            }
            if ts_ms - clock_ms > max_step_ms {
                break;
            }
            self.time.advance(ts_ms);
            self.time.admit_near(self.max_ahead_ms, &mut rows);
        }
        rows.clear();
        rows.append(&mut self.time.ahead);
        for row in rows.drain(..) {
            self.quarantine(row);
        }
        self.scratch_rows = rows;
        self.time.ahead_run = 0;
        while let Some(row) = self.time.pop_any() {
            self.judge(row, false, out);
        }
        let first = out.len();
        self.across.finish(out);
        self.stats.alerts += (out.len() - first) as u64;
        let mut by_fingerprint: Vec<usize> = (0..self.keys.len()).collect();
        by_fingerprint.sort_by(|a, b| self.keys[*a].fingerprint.cmp(&self.keys[*b].fingerprint));
        for index in by_fingerprint {
            flush_digest(&mut self.keys[index], &self.model_label, out);
            self.changes.mark(index);
        }
        for entry in self.feedback.take_pending() {
            self.feedback_audit.push(FeedbackAudit::new(
                Outcome::NotReached,
                self.clock_ms,
                "the input ended before its time",
                entry,
            ));
        }
    }

    /// Adds analysts' feedback (checked with [`FeedbackEntry::check`]); it
    /// takes effect when the engine's clock (the newest event time judged)
    /// reaches its `at`, or at the next event judged if the clock is past it.
    pub fn add_feedback(&mut self, entry: FeedbackEntry) {
        if let Err(entry) = self.feedback.add(entry) {
            self.feedback_audit.push(FeedbackAudit::new(
                Outcome::Refused,
                self.clock_ms,
                "too many entries waiting for their time",
                *entry,
            ));
        }
    }

    /// [`Engine::add_feedback`] for entries read again after a restart:
    /// those whose time the restored clock has passed were applied before
    /// the snapshot and are skipped. Returns whether it was added.
    pub fn add_feedback_backlog(&mut self, entry: FeedbackEntry) -> bool {
        if self.clock_ms.is_some_and(|clock_ms| entry.at_ms() <= clock_ms) {
            return false;
        }
        self.add_feedback(entry);
        true
    }

    /// Audit records of the feedback handled since the last call.
    pub fn take_feedback_audit(&mut self, into: &mut Vec<FeedbackAudit>) {
        into.append(&mut self.feedback_audit);
    }

    /// Feedback entries waiting for their time.
    pub fn feedback_pending(&self) -> usize {
        self.feedback.len()
    }

    /// Applies every entry due at `clock_ms`, in order.
    fn apply_due_feedback(&mut self, clock_ms: i64) {
        while let Some(entry) = self.feedback.pop_due(clock_ms) {
            let audit = self.apply_feedback(entry, clock_ms);
            // A driver that never takes them (the Kafka stages log them)
            // must not grow this without bound.
            if self.feedback_audit.len() < MAX_QUARANTINED_KEPT {
                self.feedback_audit.push(audit);
            }
        }
    }

    /// Turns one entry into rules in its key's state. The key is the
    /// entry's fingerprint, else the key holding its alert or incident id
    /// (a scan: entries are rare). A key seen only in 401s gets full state
    /// to hold the rules.
    fn apply_feedback(&mut self, entry: FeedbackEntry, clock_ms: i64) -> FeedbackAudit {
        let target = match (&entry.key_fingerprint, &entry.alert_id) {
            (Some(fingerprint), _) => {
                let bits = index_bits(fingerprint);
                match self.by_fingerprint.get(&bits).copied() {
                    Some(index) if index & LIGHT == 0 => Some(index as usize),
                    Some(light_index) => {
                        self.return_lent_light();
                        self.lend_light(light_index & !LIGHT);
                        self.keep_lent_light_as_full();
                        Some(self.keys.len() - 1)
                    }
                    None => None,
                }
            }
            (None, Some(id)) => self.keys.iter().position(|state| state.alerts.holds_alert(id)),
            (None, None) => None,
        };
        let Some(index) = target else {
            return FeedbackAudit::new(
                Outcome::Unmatched,
                Some(clock_ms),
                "no key with state holds this fingerprint or alert",
                entry,
            );
        };
        let state = &mut self.keys[index];
        let rules = state.alerts.feedback_rules(&entry);
        if rules.is_empty() {
            let mut audit = FeedbackAudit::new(
                Outcome::Unmatched,
                Some(clock_ms),
                "the alert is no longer open on the key: give a scope",
                entry,
            );
            audit.key_fingerprint = Some(state.fingerprint.to_string());
            return audit;
        }
        let count = rules.len();
        for rule in rules {
            state.feedback.add(rule, clock_ms);
        }
        let mut audit = FeedbackAudit::new(Outcome::Applied, Some(clock_ms), "", entry);
        audit.key_fingerprint = Some(state.fingerprint.to_string());
        audit.rules = count;
        audit
    }

    /// The view across keys, for drivers that share its halves (Kafka).
    pub fn across_mut(&mut self) -> &mut Across {
        &mut self.across
    }

    /// The fingerprint bits of an arriving event's key, making its state
    /// if it has none: a light record for a key seen only in 401s, full
    /// state otherwise (a light key's first authenticated call makes its
    /// state full). Held events name their key by these bits; the state
    /// index returned beside them (or [`NO_STATE_HINT`] for a light key) is
    /// only a hint when the event is judged, since eviction moves indexes.
    fn intern_key(&mut self, key_id: &str, ts_ms: i64, unauthenticated: bool) -> (u128, u32) {
        if let Some(index) = self.key_index.get(key_id) {
            return (self.key_ids[index as usize], index);
        }
        let bits = self.fingerprinter.bits(key_id);
        let index = match self.by_fingerprint.get(&bits).copied() {
            Some(index) if index & LIGHT == 0 => index,
            Some(_) if unauthenticated => return (bits, NO_STATE_HINT),
            Some(light_index) => {
                self.lend_light(light_index & !LIGHT);
                self.keep_lent_light_as_full();
                (self.keys.len() - 1) as u32
            }
            None if unauthenticated => {
                let record = LightKey {
                    fingerprint: Fingerprint::from_bits(bits),
                    hint: Hint::new(&key_hint(key_id)),
                    first_ts: ts_ms,
                    last_ts: ts_ms,
                    events: 0,
                    auth: AuthBaseline::default(),
                };
                let slot = match self.free_light.pop() {
                    Some(slot) => {
                        self.light[slot as usize] = Some(record);
                        slot
                    }
                    None => {
                        self.light.push(Some(record));
                        (self.light.len() - 1) as u32
                    }
                };
                self.by_fingerprint.insert(bits, slot | LIGHT);
                return (bits, NO_STATE_HINT);
            }
            None => {
                let index = self.keys.len() as u32;
                let hint = Hint::new(&key_hint(key_id));
                self.key_ids.push(bits);
                let mut state = KeyState::new(Fingerprint::from_bits(bits), hint, ts_ms, self.windows_per_long());
                state.before_eviction = self.dormant.remove(&bits).map(Box::new);
                self.keys.push(state);
                self.changes.mark(index as usize);
                self.by_fingerprint.insert(bits, index);
                index
            }
        };
        self.key_index.insert(key_id, index);
        (bits, index)
    }

    /// Starts loading the state of the key of the next row to be judged
    /// while this one is: with many keys, each event's state is far from
    /// the cache, and judging one event takes far longer than the load.
    fn prefetch_next_state(&self) {
        let Some(next) = self.time.held.peek() else {
            return;
        };
        if let Some(state) = self.keys.get(next.state_hint as usize) {
            prefetch_bytes(std::ptr::from_ref(state).cast(), std::mem::size_of::<KeyState>());
        }
    }

    /// [`Engine::state_index`] of a held row's key, without a second hash
    /// lookup when the index noted at holding still holds that key: a full
    /// key's bits are at most one index's in `key_ids`, and
    /// `by_fingerprint` maps them to that index, except for the index of a
    /// light key lent out (none is between events).
    fn judged_state_index(&mut self, held: &Row) -> Option<usize> {
        let hint = held.state_hint as usize;
        if self.lent_light.is_none() && self.key_ids.get(hint) == Some(&held.key_bits) {
            debug_assert_eq!(self.by_fingerprint.get(&held.key_bits), Some(&held.state_hint));
            return Some(hint);
        }
        self.state_index(held.key_bits)
    }

    /// The state index of a key to judge an event of: a light key is lent
    /// out as full state, as the last of `keys`, until
    /// [`Engine::return_lent_light`]. `None` for a key with no state, which
    /// cannot happen for a held event (keys with held events are never
    /// evicted).
    fn state_index(&mut self, bits: u128) -> Option<usize> {
        match self.by_fingerprint.get(&bits).copied()? {
            index if index & LIGHT == 0 => Some(index as usize),
            light_index => Some(self.lend_light(light_index & !LIGHT) as usize),
        }
    }

    /// A key's event count and newest event time (full or light state).
    fn key_last_use(&self, bits: u128) -> Option<(u64, i64)> {
        match self.by_fingerprint.get(&bits).copied()? {
            index if index & LIGHT == 0 => {
                let state = &self.keys[index as usize];
                Some((state.events, state.last_ts))
            }
            light_index => self.light[(light_index & !LIGHT) as usize]
                .as_ref()
                .map(|record| (record.events, record.last_ts)),
        }
    }

    /// The fingerprint of a key with state (full or light).
    fn fingerprint_of(&self, bits: u128) -> String {
        match self.by_fingerprint.get(&bits).copied() {
            Some(index) if index & LIGHT == 0 => self.keys[index as usize].fingerprint.to_string(),
            Some(light_index) => self.light[(light_index & !LIGHT) as usize]
                .as_ref()
                .map(|record| record.fingerprint.to_string())
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    /// Makes a full state of a light key, as the last of `keys`.
    fn lend_light(&mut self, slot: u32) -> u32 {
        let record = self.light[slot as usize]
            .as_ref()
            .expect("the index names a live light slot");
        // The state given back by the last light key lent, if any: renewed
        // over its rings, a 401 flood costs no allocation per call.
        let windows_per_long = self.windows_per_long();
        let mut state = match self.spare_lent.take() {
            Some(mut spare) => {
                spare.renew(
                    record.fingerprint.clone(),
                    record.hint,
                    record.first_ts,
                    windows_per_long,
                );
                spare
            }
            None => KeyState::new(
                record.fingerprint.clone(),
                record.hint,
                record.first_ts,
                windows_per_long,
            ),
        };
        state.last_ts = record.last_ts;
        state.events = record.events;
        state.auth = record.auth.clone();
        let bits = record.fingerprint.bits();
        self.key_ids.push(bits);
        self.keys.push(state);
        self.lent_light = Some(slot);
        (self.keys.len() - 1) as u32
    }

    /// The lent key keeps its full state for good: its slot is freed and
    /// a dormancy record, if any, goes into it.
    fn keep_lent_light_as_full(&mut self) {
        let Some(slot) = self.lent_light.take() else {
            return;
        };
        self.light[slot as usize] = None;
        self.free_light.push(slot);
        let index = (self.keys.len() - 1) as u32;
        let bits = self.key_ids[index as usize];
        self.by_fingerprint.insert(bits, index);
        let state = &mut self.keys[index as usize];
        state.before_eviction = self.dormant.remove(&bits).map(Box::new);
        self.changes.mark(index as usize);
    }

    /// Whether a lent key may go back to its light slot: it saw only 401s
    /// (it was lent for one) and raised nothing it must remember.
    fn lent_state_stays_light(state: &KeyState) -> bool {
        state.alerts == AlertMemory::default()
    }

    /// Puts the key lent for the previous event back into its light slot,
    /// or keeps it full if it now has alerts to remember.
    fn return_lent_light(&mut self) {
        let Some(slot) = self.lent_light else {
            return;
        };
        let stays_light = self.keys.last().is_some_and(Self::lent_state_stays_light);
        if !stays_light {
            self.keep_lent_light_as_full();
            return;
        }
        self.lent_light = None;
        let Some(state) = self.keys.pop() else {
            return;
        };
        self.key_ids.pop();
        self.changes.dirty.truncate(self.keys.len());
        if let Some(record) = self.light[slot as usize].as_mut() {
            record.last_ts = state.last_ts;
            record.events = state.events;
            record.auth = state.auth.clone();
        }
        self.spare_lent = Some(state);
    }

    /// Keys seen only in 401s.
    pub fn light_keys(&self) -> usize {
        self.light.len() - self.free_light.len()
    }

    fn windows_per_long(&self) -> usize {
        (self.model.rate.surge_window.as_millis() / self.model.rate.spike_window.as_millis()) as usize
    }

    /// Interns an endpoint template, rebuilding the table first when it is
    /// full.
    fn intern_template(&mut self, template: &str) -> u32 {
        if self.endpoints.names.len() >= self.endpoint_rebuild_at && !self.endpoints.index.contains_key(template) {
            self.rebuild_endpoints();
        }
        let (id, new) = self.endpoints.intern(template);
        if new {
            self.endpoint_sensitive.push(self.sensitive.matches(template));
        }
        id
    }

    fn intern_client(&mut self, family: &str) -> u32 {
        if self.clients.names.len() >= self.client_rebuild_at && !self.clients.index.contains_key(family) {
            self.rebuild_clients();
        }
        self.clients.intern(family).0
    }

    /// Keeps only the endpoint templates that some key still refers to, in
    /// their order (so every comparison of ids is unchanged), and renumbers
    /// the keys' references. The next rebuild waits until the table has
    /// doubled again, so rebuilding costs O(1) per new template.
    fn rebuild_endpoints(&mut self) {
        let used: Vec<std::cell::Cell<bool>> = vec![std::cell::Cell::new(false); self.endpoints.names.len()];
        let mark = |id: u32| {
            if let Some(cell) = used.get(id as usize) {
                cell.set(true);
            }
            id
        };
        for state in &mut self.keys {
            state.remap(&mark, &|id| id);
        }
        let (kept, new_ids) = self.endpoints.keep(|id| used[id].get());
        let sensitive = std::mem::take(&mut self.endpoint_sensitive);
        self.endpoint_sensitive = sensitive
            .into_iter()
            .enumerate()
            .filter(|(id, _)| used[*id].get())
            .map(|(_, sensitive)| sensitive)
            .collect();
        let map = |id: u32| new_ids.get(id as usize).copied().unwrap_or(0);
        for state in &mut self.keys {
            state.remap(&map, &|id| id);
        }
        self.endpoint_rebuild_at = self.model.state.max_endpoint_templates.max(2 * kept);
        // Every key's ids may have moved.
        self.changes.mark_all(self.keys.len());
        self.held_endpoints.forget_engine_ids();
        tracing::debug!(kept, "endpoint table rebuilt");
    }

    /// [`Engine::rebuild_endpoints`] for client families, which the view
    /// across keys also refers to.
    fn rebuild_clients(&mut self) {
        let used: Vec<std::cell::Cell<bool>> = vec![std::cell::Cell::new(false); self.clients.names.len()];
        let mark = |id: u32| {
            if let Some(cell) = used.get(id as usize) {
                cell.set(true);
            }
            id
        };
        for state in &mut self.keys {
            state.remap(&|id| id, &mark);
        }
        self.across.org.remap_clients(&mark);
        let (kept, new_ids) = self.clients.keep(|id| used[id].get());
        let map = |id: u32| new_ids.get(id as usize).copied().unwrap_or(0);
        for state in &mut self.keys {
            state.remap(&|id| id, &map);
        }
        self.across.org.remap_clients(&map);
        self.client_rebuild_at = self.model.state.max_client_families.max(2 * kept);
        self.held_clients.forget_engine_ids();
        self.changes.mark_all(self.keys.len());
        tracing::debug!(kept, "client table rebuilt");
    }

    /// Moves the engine's clock to an event; on entering a new day, evicts
    /// the keys silent for longer than `state.evict_after`. The clock only
    /// depends on the events in their order, so eviction happens at the
    /// same point of the input whatever the batches or restarts.
    fn advance_clock(&mut self, ts_ms: i64, judging: u128) {
        let previous_day = self.clock_ms.map(|clock| clock.div_euclid(DAY_MS));
        if self.clock_ms.is_some_and(|clock| clock >= ts_ms) {
            return;
        }
        self.clock_ms = Some(ts_ms);
        let day = ts_ms.div_euclid(DAY_MS);
        if previous_day.is_some_and(|previous| previous < day) {
            self.evict_silent(day * DAY_MS, judging);
        }
    }

    /// Evicts keys whose last use is older than `state.evict_after` before
    /// `now_ms`, keeping a dormancy record of those with enough history. A
    /// key with a daily digest not sent yet stays until it is sent, and so
    /// does a key with events held for ordering (`judging` is the key of
    /// the event being judged).
    fn evict_silent(&mut self, now_ms: i64, judging: u128) {
        let cutoff = now_ms.saturating_sub(self.model.state.evict_after.as_millis() as i64);
        let mut held: rustc_hash::FxHashSet<u128> = self.time.held.iter().map(|row| row.key_bits).collect();
        held.extend(self.time.ahead.iter().map(|row| row.key_bits));
        held.insert(judging);
        for (slot, entry) in self.light.iter_mut().enumerate() {
            if entry
                .as_ref()
                .is_some_and(|record| record.last_ts < cutoff && !held.contains(&record.fingerprint.bits()))
                && let Some(record) = entry.take()
            {
                self.by_fingerprint.remove(&record.fingerprint.bits());
                self.free_light.push(slot as u32);
            }
        }
        let evictable = |state: &KeyState, bits: u128| {
            state.last_ts < cutoff && state.alerts.digest.is_none() && !held.contains(&bits)
        };
        if !self
            .keys
            .iter()
            .zip(&self.key_ids)
            .any(|(state, id)| evictable(state, *id))
        {
            return;
        }
        let old_keys = std::mem::take(&mut self.keys);
        let old_ids = std::mem::take(&mut self.key_ids);
        let old_dirty = std::mem::take(&mut self.changes.dirty);
        let mut new_index: Vec<u32> = Vec::with_capacity(old_keys.len());
        let mut evicted = 0usize;
        for (index, (state, key_id)) in old_keys.into_iter().zip(old_ids).enumerate() {
            if evictable(&state, key_id) {
                new_index.push(u32::MAX);
                if self.changes.tracking {
                    self.changes.evicted.push(key_id);
                }
                self.by_fingerprint.remove(&key_id);
                if let Some(record) = state.dormancy_record(&self.model.rate.dormant) {
                    self.dormant.insert(key_id, record);
                }
                evicted += 1;
                continue;
            }
            new_index.push(self.keys.len() as u32);
            self.by_fingerprint.insert(key_id, self.keys.len() as u32);
            if old_dirty.get(index).copied().unwrap_or(false) {
                self.changes.mark(self.keys.len());
            }
            self.keys.push(state);
            self.key_ids.push(key_id);
        }
        self.key_index.retain(|index| {
            let moved = new_index[*index as usize];
            *index = moved;
            moved != u32::MAX
        });
        self.keys.shrink_to_fit();
        self.key_ids.shrink_to_fit();
        self.key_index.shrink_to_fit();
        self.by_fingerprint.shrink_to_fit();
        tracing::debug!(evicted, kept = self.keys.len(), "silent keys evicted");
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Keys with state, full or light.
    pub fn keys_tracked(&self) -> usize {
        self.full_keys() + self.light_keys()
    }

    /// Keys with full state.
    pub fn full_keys(&self) -> usize {
        self.keys.len() - usize::from(self.lent_light.is_some())
    }

    /// Keys evicted for silence still remembered for dormant detection.
    pub fn dormant_keys(&self) -> usize {
        self.dormant.len()
    }

    /// All state, for checkpoints. Contains no raw key id.
    pub fn snapshot(&self) -> EngineSnapshot {
        self.snapshot_with_keys(true)
    }

    /// Everything but the full keys' states: what an incremental
    /// checkpoint writes as the partition's shared entry (the clock, held
    /// events, interners, light and dormant keys, the view across keys).
    pub fn shared_snapshot(&self) -> EngineSnapshot {
        self.snapshot_with_keys(false)
    }

    /// Starts tracking which keys change, for incremental checkpoints;
    /// every key held now counts as changed.
    pub fn track_changes(&mut self) {
        self.changes.tracking = true;
        self.changes.mark_all(self.keys.len());
    }

    /// Calls `visit` with the fingerprint bits and state of every full key
    /// changed since [`Engine::clear_changes`], then with the bits (and
    /// `None`) of every key evicted since, in that order. A key evicted and
    /// made again since is visited with its state. Requires
    /// [`Engine::track_changes`].
    pub fn changed_keys<'a>(&'a self, mut visit: impl FnMut(u128, Option<&'a KeyState>)) {
        let keys_end = self.keys_end();
        for (index, dirty) in self.changes.dirty.iter().enumerate() {
            if *dirty && index < keys_end {
                visit(self.key_ids[index], Some(&self.keys[index]));
            }
        }
        for bits in &self.changes.evicted {
            let live = self
                .by_fingerprint
                .get(bits)
                .is_some_and(|index| index & LIGHT == 0 && (*index as usize) < keys_end);
            if !live {
                visit(*bits, None);
            }
        }
    }

    /// Forgets which keys changed: they are in a checkpoint now.
    pub fn clear_changes(&mut self) {
        self.changes.dirty.iter_mut().for_each(|dirty| *dirty = false);
        self.changes.evicted.clear();
    }

    /// The keys held as full state, up to the one lent out for the last
    /// event if it goes back to its light slot.
    fn keys_end(&self) -> usize {
        match (self.lent_light, self.keys.last()) {
            (Some(_), Some(state)) if Self::lent_state_stays_light(state) => self.keys.len() - 1,
            _ => self.keys.len(),
        }
    }

    fn snapshot_with_keys(&self, with_keys: bool) -> EngineSnapshot {
        let mut dormant: Vec<DormantRecord> = self
            .dormant
            .iter()
            .map(|(bits, record)| DormantRecord {
                fingerprint: Fingerprint::from_bits(*bits),
                first_ts: record.first_ts,
                last_ts: record.last_ts,
                events: record.events,
            })
            .collect();
        dormant.sort_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        // A key lent out for the last event is written as it will be once
        // the next event returns it.
        let mut keys_end = self.keys.len();
        let mut light: Vec<LightKey> = Vec::with_capacity(self.light_keys());
        for (slot, record) in self.light.iter().enumerate() {
            let Some(record) = record else {
                continue;
            };
            let mut record = record.clone();
            if self.lent_light == Some(slot as u32)
                && let Some(state) = self.keys.last()
            {
                if !Self::lent_state_stays_light(state) {
                    continue;
                }
                keys_end -= 1;
                record.last_ts = state.last_ts;
                record.events = state.events;
                record.auth = state.auth.clone();
            }
            light.push(record);
        }
        light.sort_unstable_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            model: self.model_label.clone(),
            endpoints: self.endpoints.names.iter().map(|name| name.to_string()).collect(),
            clients: self.clients.names.iter().map(|name| name.to_string()).collect(),
            keys: if with_keys {
                let mut keys = self.keys[..keys_end].to_vec();
                // In fingerprint order, as an incremental checkpoint reads
                // back: where a key sits in the engine depends on restarts
                // and evictions, never on an output, and must not make two
                // snapshots of the same state differ.
                keys.sort_unstable_by(|a, b| a.fingerprint.cmp(&b.fingerprint));
                keys
            } else {
                Vec::new()
            },
            stats: self.stats.clone(),
            across: self.across.snapshot(),
            time: self.time_snapshot(),
            dormant,
            clock_ms: self.clock_ms,
            light,
        }
    }

    /// Whether a snapshot can be restored into this engine: a layout this
    /// build knows (older ones load through serde defaults), the model this
    /// engine runs (window layouts and thresholds depend on it), and keys
    /// whose windows have the sizes this model gives them, so no arithmetic
    /// on them can divide by zero or index out of range.
    pub fn check_snapshot(&self, snapshot: &EngineSnapshot) -> Result<(), RestoreError> {
        if snapshot.version > SNAPSHOT_VERSION {
            return Err(RestoreError::Version {
                found: snapshot.version,
                supported: SNAPSHOT_VERSION,
            });
        }
        if snapshot.model != self.model_label {
            return Err(RestoreError::Model {
                found: snapshot.model.clone(),
                running: self.model_label.clone(),
            });
        }
        let windows = self.windows_per_long();
        for (index, state) in snapshot.keys.iter().enumerate() {
            if let Err(detail) = state.check_shape(windows) {
                return Err(RestoreError::Key { index, detail });
            }
        }
        Ok(())
    }

    /// [`Engine::restore`] after [`Engine::check_snapshot`].
    pub fn try_restore(&mut self, snapshot: EngineSnapshot) -> Result<(), RestoreError> {
        self.check_snapshot(&snapshot)?;
        self.restore(snapshot);
        Ok(())
    }

    /// Adds a snapshot's state: keys in it replace keys of the same
    /// fingerprint; counters add up. Call [`Engine::check_snapshot`] first
    /// on a snapshot from outside.
    pub fn restore(&mut self, snapshot: EngineSnapshot) {
        self.return_lent_light();
        // No rebuild while the snapshot's keys are not in yet: it would drop
        // the names they refer to.
        let mut scratch = std::mem::take(&mut self.scratch_path);
        let endpoint_ids: Vec<u32> = snapshot
            .endpoints
            .iter()
            .map(|name| {
                let template = normalize_endpoint(name, &mut scratch);
                let (id, new) = self.endpoints.intern(template);
                if new {
                    self.endpoint_sensitive.push(self.sensitive.matches(template));
                }
                id
            })
            .collect();
        self.scratch_path = scratch;
        let client_ids: Vec<u32> = snapshot
            .clients
            .iter()
            .map(|name| self.clients.intern(name).0)
            .collect();
        self.endpoint_rebuild_at = self.endpoint_rebuild_at.max(2 * self.endpoints.names.len());
        self.client_rebuild_at = self.client_rebuild_at.max(2 * self.clients.names.len());
        let endpoint_map = |id: u32| endpoint_ids.get(id as usize).copied().unwrap_or(0);
        let client_map = |id: u32| client_ids.get(id as usize).copied().unwrap_or(0);
        for mut state in snapshot.keys {
            state.remap(&endpoint_map, &client_map);
            let bits = state.fingerprint.bits();
            self.dormant.remove(&bits);
            match self.by_fingerprint.get(&bits).copied() {
                Some(index) if index & LIGHT == 0 => {
                    self.keys[index as usize] = state;
                    self.changes.mark(index as usize);
                }
                light_or_none => {
                    if let Some(light_index) = light_or_none {
                        let slot = light_index & !LIGHT;
                        self.light[slot as usize] = None;
                        self.free_light.push(slot);
                    }
                    let index = self.keys.len() as u32;
                    self.by_fingerprint.insert(bits, index);
                    self.key_ids.push(bits);
                    self.keys.push(state);
                    self.changes.mark(index as usize);
                }
            }
        }
        for record in snapshot.light {
            let bits = record.fingerprint.bits();
            match self.by_fingerprint.get(&bits).copied() {
                Some(index) if index & LIGHT == 0 => {}
                Some(light_index) => self.light[(light_index & !LIGHT) as usize] = Some(record),
                None => {
                    let slot = match self.free_light.pop() {
                        Some(slot) => {
                            self.light[slot as usize] = Some(record);
                            slot
                        }
                        None => {
                            self.light.push(Some(record));
                            (self.light.len() - 1) as u32
                        }
                    };
                    self.by_fingerprint.insert(bits, slot | LIGHT);
                }
            }
        }
        for record in snapshot.dormant {
            let bits = record.fingerprint.bits();
            if self.by_fingerprint.contains_key(&bits) {
                continue;
            }
            self.dormant.insert(
                bits,
                Dormancy {
                    first_ts: record.first_ts,
                    last_ts: record.last_ts,
                    events: record.events,
                },
            );
        }
        self.clock_ms = self.clock_ms.max(snapshot.clock_ms);
        let mut org = snapshot.across.org;
        org.remap_clients(&client_map);
        self.across.org.absorb_snapshot(org);
        self.stats.events += snapshot.stats.events;
        self.stats.alerts += snapshot.stats.alerts;
        self.stats.suppressed += snapshot.stats.suppressed;
        self.stats.revocations += snapshot.stats.revocations;
        self.stats.late_events += snapshot.stats.late_events;
        self.stats.digested += snapshot.stats.digested;
        self.stats.future_events += snapshot.stats.future_events;
        self.stats.alert_updates += snapshot.stats.alert_updates;
        self.stats.silenced_by_feedback += snapshot.stats.silenced_by_feedback;
        self.stats.allowlisted += snapshot.stats.allowlisted;
        self.restore_time(snapshot.time);
    }

    /// The input's clock and held events, keys by fingerprint.
    fn time_snapshot(&self) -> EventTimeSnapshot {
        let held_event = |row: &Row| HeldEvent {
            ts_ms: row.ts_ms,
            key: self.fingerprint_of(row.key_bits),
            ip: row.ip,
            method: self.held_methods.name(row.method).to_string(),
            endpoint: self.held_endpoints.name(row.endpoint).to_string(),
            client: self.held_clients.name(row.client).to_string(),
            status: row.status,
            bytes_out: row.bytes_out,
            origin: row.origin,
            arrived_clock_ms: row.arrived_clock_ms,
        };
        let mut held: Vec<Row> = self.time.held.iter().copied().collect();
        held.sort();
        EventTimeSnapshot {
            clock_ms: self.time.clock_ms,
            released_ms: self.time.released_ms,
            held: held.iter().map(held_event).collect(),
            ahead: self.time.ahead.iter().map(held_event).collect(),
            ahead_run: self.time.ahead_run,
        }
    }

    /// Adds a snapshot's clock and held events (after its keys: a held
    /// event's key is in the same snapshot).
    fn restore_time(&mut self, time: EventTimeSnapshot) {
        if let Some(clock_ms) = time.clock_ms {
            self.time.advance(clock_ms);
        }
        if let Some(released_ms) = time.released_ms {
            self.time.released_ms = Some(self.time.released_ms.map_or(released_ms, |own| own.max(released_ms)));
        }
        self.time.ahead_run = self.time.ahead_run.max(time.ahead_run);
        for (held, into_ahead) in time
            .held
            .into_iter()
            .map(|held| (held, false))
            .chain(time.ahead.into_iter().map(|held| (held, true)))
        {
            let key_bits = index_bits(&held.key);
            if !self.by_fingerprint.contains_key(&key_bits) {
                continue;
            }
            let ids = [
                self.held_methods.intern(&held.method),
                self.held_endpoints.intern(&held.endpoint),
                self.held_clients.intern(&held.client),
            ];
            let row = Row {
                ts_ms: held.ts_ms,
                key_bits,
                state_hint: NO_STATE_HINT,
                ip: held.ip,
                status: held.status,
                bytes_out: held.bytes_out,
                text_hash: order::text_hash(&[&self.held_methods, &self.held_endpoints, &self.held_clients], ids),
                method: ids[0],
                endpoint: ids[1],
                client: ids[2],
                origin: held.origin,
                arrived_clock_ms: held.arrived_clock_ms,
            };
            if into_ahead {
                self.time.ahead.push(row);
            } else {
                self.time.held.push(row);
            }
        }
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
        // Guessed key ids refused with 401 (light keys), one of which is
        // then used for real.
        for guess in 0..6 {
            events.push(event(
                twist + 3000 + guess * 700,
                &format!("AKIAGUESS00000000{}", guess % 3),
                ip("sydney", 2),
                "/v1/orders",
                401,
            ));
        }
        events.push(event(
            twist + 9000,
            "AKIAGUESS000000001",
            ip("paris", 1),
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
        engine.finish(&mut out);
        out
    }

    /// Events whose endpoints a driver turned into templates and whose
    /// user agents into client families (as threaded replay's decoders do)
    /// give the outputs of the events as logged, whatever the agent.
    #[test]
    fn resolved_texts_give_the_outputs_of_raw_texts() {
        let agents = [
            "aws-cli/2.15.0 Python/3.11",
            "curl\t/1",
            "  (x) ",
            "",
            "Mozilla/5.0 (X11)",
        ];
        let raw: Vec<AccessEvent<'static>> = workload()
            .into_iter()
            .enumerate()
            .map(|(index, mut event)| {
                if index % 3 == 0 {
                    event.endpoint = format!("{}/{}?page={index}", event.endpoint, 8_000 + index).into();
                }
                event.user_agent = agents[index % agents.len()].into();
                event
            })
            .collect();
        let mut scratch = String::new();
        let resolved: Vec<AccessEvent<'static>> = raw
            .iter()
            .map(|event| AccessEvent {
                endpoint: normalize_endpoint(&event.endpoint, &mut scratch).to_string().into(),
                user_agent: client_family(&event.user_agent).to_string().into(),
                ..event.clone()
            })
            .collect();
        assert_ne!(raw, resolved);
        let mut engine = crate::detect::testkit::new_engine();
        let mut from_raw = Vec::new();
        engine.process(&raw, &mut from_raw);
        engine.finish(&mut from_raw);
        let mut engine = crate::detect::testkit::new_engine();
        let mut from_resolved = Vec::new();
        engine.process_texts(&resolved, &[], Texts::Resolved, &mut from_resolved);
        engine.finish(&mut from_resolved);
        assert!(from_raw.len() >= 4, "the workload raises alerts");
        assert_eq!(from_resolved, from_raw);
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
            engine.finish(&mut out);
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
        second.finish(&mut out);
        assert_eq!(out, whole);
    }

    #[test]
    fn where_keys_sit_in_the_engine_changes_neither_its_snapshot_nor_its_outputs() {
        let events = workload();
        let split = events.len() * 9 / 10;
        let mut first = crate::detect::testkit::new_engine();
        let mut out_first = Vec::new();
        first.process(&events[..split], &mut out_first);
        let snapshot = first.snapshot();
        assert!(snapshot.keys.len() >= 2, "a workload of several keys");
        assert!(
            snapshot
                .keys
                .windows(2)
                .all(|pair| pair[0].fingerprint < pair[1].fingerprint),
            "keys in fingerprint order"
        );
        // A restore from a changelog that lists the keys in another order
        // puts them elsewhere in the engine.
        let mut reversed = snapshot.clone();
        reversed.keys.reverse();
        let mut second = crate::detect::testkit::new_engine();
        second.restore(reversed);
        assert_eq!(
            serde_json::to_string(&second.snapshot()).unwrap(),
            serde_json::to_string(&snapshot).unwrap()
        );
        let mut third = crate::detect::testkit::new_engine();
        third.restore(snapshot);
        let (mut out_second, mut out_third) = (Vec::new(), Vec::new());
        second.process(&events[split..], &mut out_second);
        second.finish(&mut out_second);
        third.process(&events[split..], &mut out_third);
        third.finish(&mut out_third);
        assert!(!out_third.is_empty(), "the rest of the workload has outputs");
        assert_eq!(out_second, out_third);
        assert_eq!(
            serde_json::to_string(&second.snapshot()).unwrap(),
            serde_json::to_string(&third.snapshot()).unwrap()
        );
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
        engine.release_held(&mut out);
        out.clear();
        let day5 = T0 + 5 * DAY + 10 * HOUR;
        engine.process(
            &[
                event(day5, key, ip("london", 1), "/v1/reports", 200),
                event(day5 + HOUR, key, ip("london", 2), "/v1/shipments", 200),
            ],
            &mut out,
        );
        engine.release_held(&mut out);
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
        engine.release_held(&mut out);
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
        engine.release_held(&mut out);
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

    fn word(mut number: usize) -> String {
        let mut text = String::new();
        loop {
            text.push((b'a' + (number % 26) as u8) as char);
            number /= 26;
            if number == 0 {
                return text;
            }
        }
    }

    /// Alerts of `events` judged to the end of the input: events far
    /// ahead of the input's clock (one key calling once a day) are judged
    /// too.
    fn to_the_end(engine: &mut Engine, events: &[AccessEvent<'_>]) -> Vec<crate::alert::Alert> {
        let mut out = Vec::new();
        engine.process(events, &mut out);
        engine.finish(&mut out);
        out.into_iter()
            .filter_map(|output| match output {
                Output::Alert(alert) => Some(alert),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn silent_keys_are_evicted_at_a_day_boundary_and_their_return_is_judged_dormant() {
        use crate::detect::testkit::*;
        let sleeper = "AKIASLEEPER000000001";
        let mut engine = new_engine();
        let mut events = history(sleeper, "london", 5, 4, ENDPOINTS);
        events.push(event(
            T0 + 2 * DAY,
            "AKIAONEOFF0000000001",
            ip("paris", 1),
            "/v1/orders",
            200,
        ));
        // Another key keeps the clock going, one call a day.
        for day in 5..70 {
            events.push(event(
                T0 + day * DAY + 10 * HOUR,
                "AKIABUSY000000000001",
                ip("dublin", 1),
                "/v1/orders",
                200,
            ));
        }
        to_the_end(&mut engine, &events);
        assert_eq!(engine.keys_tracked(), 1, "only the busy key keeps state");
        assert_eq!(engine.dormant_keys(), 1, "the one-off key had no history to keep");

        // The snapshot carries the dormancy record.
        let mut restored = new_engine();
        restored.try_restore(engine.snapshot()).unwrap();
        assert_eq!(restored.dormant_keys(), 1);

        let back = [event(
            T0 + 70 * DAY + 9 * HOUR,
            sleeper,
            ip("london", 3),
            "/v1/orders",
            200,
        )];
        let found = to_the_end(&mut engine, &back);
        assert_eq!(of(&found, "dormant_key").len(), 1, "{found:#?}");
        assert_eq!(engine.dormant_keys(), 0, "the record went back into the key");
        assert_eq!(to_the_end(&mut restored, &back), found, "a restore changes nothing");
    }

    #[test]
    fn a_key_used_within_the_eviction_period_keeps_its_state() {
        use crate::detect::testkit::*;
        let mut engine = new_engine();
        let mut events = history("AKIASTAYS00000000001", "london", 2, 2, ENDPOINTS);
        events.push(event(
            T0 + 50 * DAY,
            "AKIABUSY000000000001",
            ip("dublin", 1),
            "/v1/orders",
            200,
        ));
        alerts(&mut engine, &events);
        assert_eq!(engine.keys_tracked(), 2, "50 days of silence is less than evict_after");
    }

    #[test]
    fn a_401_never_moves_a_keys_places_and_is_judged_only_as_an_auth_failure() {
        use crate::detect::testkit::*;
        let key = "AKIAGUESSED000000001";
        let mut engine = new_engine();
        alerts(&mut engine, &history(key, "london", 5, 6, ENDPOINTS));
        let places_before = engine.keys[0].geo.clone();
        let endpoints_before = engine.keys[0].endpoints.endpoints.clone();
        let later = T0 + 5 * DAY + 9 * HOUR;
        let guesses: Vec<AccessEvent<'static>> = (0..3)
            .map(|call| event(later + call * 1000, key, ip("sydney", 1), "/v1/admin/keys", 401))
            .collect();
        let found = alerts(&mut engine, &guesses);
        assert!(
            found
                .iter()
                .all(|alert| alert.detector == crate::detector::Detector::AuthFailureSpike),
            "{found:#?}"
        );
        let geo_after = &engine.keys[0].geo;
        let counts = |table: &crate::baseline::TopK| -> Vec<(u32, u64, i64)> {
            table
                .entries
                .iter()
                .map(|entry| (entry.id, u64::from(entry.count), entry.last_ts))
                .collect()
        };
        assert_eq!(
            counts(&geo_after.countries),
            counts(&places_before.countries),
            "no country moved"
        );
        assert_eq!(counts(&geo_after.asns), counts(&places_before.asns), "no network moved");
        assert_eq!(
            geo_after.network_places.entries.len(),
            places_before.network_places.entries.len()
        );
        assert_eq!(
            geo_after.last, places_before.last,
            "the last located use is the owner's"
        );
        let endpoint_counts = |table: &crate::baseline::TopK| -> Vec<(u32, u64)> {
            table
                .entries
                .iter()
                .map(|entry| (entry.id, u64::from(entry.count)))
                .collect()
        };
        assert_eq!(
            endpoint_counts(&engine.keys[0].endpoints.endpoints),
            endpoint_counts(&endpoints_before)
        );
        assert_eq!(engine.keys[0].auth.failures, 3, "the auth-failure view counts them");
        // The owner calls from London a minute later: no travel from Sydney.
        let owner = [event(later + 60_000, key, ip("london", 1), "/v1/orders", 200)];
        let found = alerts(&mut engine, &owner);
        assert!(
            of(&found, "impossible_travel").is_empty() && of(&found, "concurrent_use").is_empty(),
            "{found:#?}"
        );
    }

    #[test]
    fn interners_are_rebuilt_from_what_keys_still_refer_to() {
        use crate::detect::testkit::*;
        let mut model = Model::default_model();
        model.alerts.digest_lows = false;
        model.state.max_endpoint_templates = 16;
        model.state.max_client_families = 16;
        let per_key = model.endpoints.max_endpoints;
        let mut engine = Engine::new(Arc::new(model), geo());
        let key = "AKIAMANYPATHS0000001";
        let mut events = Vec::new();
        for call in 0..2000 {
            let mut one = event(
                T0 + call * 1000,
                key,
                ip("london", 1),
                &format!("/v1/{}", word(call as usize)),
                200,
            );
            one.user_agent = std::borrow::Cow::Owned(format!("{}/1.0", word(call as usize)));
            events.push(one);
        }
        alerts(&mut engine, &events);
        let names = engine.endpoints.names.len();
        // The key refers to its top templates and to those of its current
        // window; the table holds at most twice what is referred to.
        let state = &engine.keys[0];
        let mut referred: Vec<u32> = state.endpoints.endpoints.entries.iter().map(|entry| entry.id).collect();
        referred.extend(state.endpoints.window_counts.iter().map(|(id, _)| *id));
        referred.sort_unstable();
        referred.dedup();
        assert!(referred.len() <= 2 * per_key);
        assert!(
            names <= 2 * referred.len() + 1,
            "{names} templates held, {} referred to",
            referred.len()
        );
        assert!(
            engine.clients.names.len() <= 2 * 16 + 2 * 8,
            "{} client families",
            engine.clients.names.len()
        );
        let state = &engine.keys[0];
        for entry in &state.endpoints.endpoints.entries {
            assert!((entry.id as usize) < names, "every id the key holds names a template");
        }
        // The newest template is still the one last called.
        let newest = state
            .endpoints
            .endpoints
            .entries
            .iter()
            .max_by_key(|entry| entry.last_ts)
            .unwrap();
        assert_eq!(
            &*engine.endpoints.names[newest.id as usize],
            format!("/v1/{}", word(1999))
        );
        // A snapshot round-trips the rebuilt tables.
        let mut restored = Engine::new(Arc::clone(&engine.model), geo());
        restored.try_restore(engine.snapshot()).unwrap();
        assert_eq!(
            serde_json::to_string(&restored.snapshot()).unwrap(),
            serde_json::to_string(&engine.snapshot()).unwrap()
        );
    }

    #[test]
    fn snapshots_of_another_model_a_newer_layout_or_a_broken_ring_are_refused() {
        let mut engine = crate::detect::testkit::new_engine();
        let mut out = Vec::new();
        engine.process(&workload(), &mut out);
        let good = engine.snapshot();
        let fresh = crate::detect::testkit::new_engine();
        assert!(fresh.check_snapshot(&good).is_ok());

        let mut newer = good.clone();
        newer.version = SNAPSHOT_VERSION + 1;
        assert_eq!(fresh.check_snapshot(&newer).unwrap_err().reason(), "version");

        let mut other_model = good.clone();
        other_model.model = "someone-else@9".into();
        assert_eq!(fresh.check_snapshot(&other_model).unwrap_err().reason(), "model");

        let mut empty_ring = good.clone();
        empty_ring.keys[0].rate.recent = Box::new([]);
        assert_eq!(fresh.check_snapshot(&empty_ring).unwrap_err().reason(), "inconsistent");

        let mut older = good;
        older.version = 1;
        assert!(fresh.check_snapshot(&older).is_ok(), "older layouts load with defaults");
    }

    #[test]
    fn keys_seen_only_in_401s_stay_light_until_their_first_authenticated_call() {
        use crate::detect::testkit::*;
        let mut engine = new_engine();
        let mut out = Vec::new();
        let guessed = "AKIAGUESSEDONLY00001";
        let guesses: Vec<AccessEvent<'static>> = (0..3)
            .map(|call| event(T0 + call * 1000, guessed, ip("sydney", 1), "/v1/orders", 401))
            .collect();
        engine.process(&guesses, &mut out);
        engine.release_held(&mut out);
        engine.process(
            &[event(
                T0 + 5000,
                "AKIAOTHER00000000001",
                ip("london", 1),
                "/v1/orders",
                200,
            )],
            &mut out,
        );
        engine.release_held(&mut out);
        assert_eq!((engine.light_keys(), engine.full_keys()), (1, 1));
        assert_eq!(engine.keys_tracked(), 2);
        let light = engine.light.iter().flatten().next().unwrap();
        assert_eq!((light.events, light.first_ts, light.auth.failures), (3, T0, 3));

        engine.process(
            &[event(T0 + 9000, guessed, ip("london", 2), "/v1/orders", 200)],
            &mut out,
        );
        engine.release_held(&mut out);
        assert_eq!(
            (engine.light_keys(), engine.full_keys()),
            (0, 2),
            "full state at the first success"
        );
        let full = engine
            .keys
            .iter()
            .find(|state| state.fingerprint == crate::event::key_fingerprint(guessed))
            .unwrap();
        assert_eq!((full.events, full.first_ts), (4, T0), "its history carried over");
    }

    #[test]
    fn a_snapshot_taken_while_a_light_key_is_lent_restores_to_the_same_state() {
        let events = workload();
        // Cut right after each 401 of the workload.
        for (cut, _) in events.iter().enumerate().filter(|(_, event)| event.status == 401) {
            let mut first = crate::detect::testkit::new_engine();
            let mut out = Vec::new();
            first.process(&events[..=cut], &mut out);
            let snapshot = first.snapshot();
            let mut second = crate::detect::testkit::new_engine();
            second.try_restore(snapshot.clone()).unwrap();
            assert_eq!(
                serde_json::to_string(&second.snapshot()).unwrap(),
                serde_json::to_string(&snapshot).unwrap()
            );
            let (mut rest_first, mut rest_second) = (Vec::new(), Vec::new());
            first.process(&events[cut + 1..], &mut rest_first);
            second.process(&events[cut + 1..], &mut rest_second);
            assert_eq!(rest_first, rest_second, "cut after event {cut}");
        }
    }

    /// A fixed arrangement of `events` in which each event moves by up to
    /// `within_ms` of event time.
    fn shuffled_within(events: &[AccessEvent<'static>], within_ms: i64) -> Vec<AccessEvent<'static>> {
        let mut jittered: Vec<(i64, AccessEvent<'static>)> = events
            .iter()
            .enumerate()
            .map(|(index, event)| {
                let jitter = (index as i64).wrapping_mul(2_654_435_761) % within_ms;
                (event.ts_ms + jitter, event.clone())
            })
            .collect();
        jittered.sort_by_key(|(arrival, _)| *arrival);
        jittered.into_iter().map(|(_, event)| event).collect()
    }

    #[test]
    fn events_shuffled_within_the_bound_give_the_same_outputs_as_sorted() {
        let events = workload();
        let sorted = run_in_batches(&events, 64);
        let shuffled = shuffled_within(&events, 4 * 60_000);
        assert_ne!(shuffled, events, "the arrangement differs");
        assert_eq!(run_in_batches(&shuffled, 64), sorted);
        let mut engine = crate::detect::testkit::new_engine();
        let mut out = Vec::new();
        engine.process(&shuffled, &mut out);
        assert_eq!(engine.stats().late_events, 0);
    }

    #[test]
    fn an_event_later_than_the_watermark_is_counted_and_never_travel() {
        use crate::detect::testkit::*;
        let key = "AKIALATEEVENT0000001";
        let other = "AKIALATEEVENT0000002";
        let mut events = history(key, "london", 5, 6, ENDPOINTS);
        events.extend(history(other, "dublin", 5, 6, ENDPOINTS));
        events.sort_by_key(|event| event.ts_ms);
        let last = events.last().map_or(T0, |event| event.ts_ms);
        // A Sydney use shipped late, behind the other key's calls and its
        // own key's later call.
        for minute in 1..=30 {
            events.push(event(last + minute * 60_000, other, ip("dublin", 1), "/v1/orders", 200));
        }
        // The key's own later call from London came through on time.
        events.push(event(last + 20 * 60_000, key, ip("london", 1), "/v1/orders", 200));
        events.push(event(last + 60_000, key, ip("sydney", 1), "/v1/orders", 200));
        let mut engine = new_engine();
        let mut out = Vec::new();
        engine.process(&events, &mut out);
        engine.finish(&mut out);
        assert_eq!(engine.stats().late_events, 1);
        let travel = out.iter().any(|output| {
            matches!(output, Output::Alert(alert)
                if matches!(alert.detector.as_str(), "impossible_travel" | "concurrent_use"))
        });
        assert!(!travel, "{out:#?}");
        let state = &engine.keys[engine.by_fingerprint[&index_bits(&crate::event::key_fingerprint(key))] as usize];
        assert_eq!(
            state.geo.last.map(|last| last.country),
            Some(*b"GB"),
            "a late event leaves the key's places alone"
        );
    }

    #[test]
    fn an_event_dated_2099_is_quarantined_and_its_key_still_alerts() {
        use crate::detect::testkit::*;
        let mut events = workload();
        let twist = T0 + 5 * DAY + 9 * HOUR;
        let poisoned = event(
            4_070_908_800_000,
            "AKIAWORKLOAD00000000",
            ip("london", 1),
            "/v1/orders",
            200,
        );
        let at = events.iter().position(|event| event.ts_ms >= T0 + 3 * DAY).unwrap_or(0);
        events.insert(at, poisoned);
        let mut engine = crate::detect::testkit::new_engine();
        let mut out = Vec::new();
        engine.process(&events, &mut out);
        engine.finish(&mut out);
        let mut quarantined = Vec::new();
        engine.take_quarantined(&mut quarantined);
        assert_eq!(quarantined.len(), 1, "{quarantined:?}");
        assert_eq!(quarantined[0].ts, "2099-01-01T00:00:00.000Z");
        assert!(!serde_json::to_string(&quarantined[0]).unwrap().contains("AKIAWORKLOAD"));
        assert_eq!(engine.stats().future_events, 1);
        let travel = out.iter().any(|output| {
            matches!(output, Output::Alert(alert)
                if alert.detector.as_str() == "impossible_travel"
                    && alert.key_fingerprint == crate::event::key_fingerprint("AKIAWORKLOAD00000000")
                    && alert.window.end >= crate::event::format_ts(twist))
        });
        assert!(travel, "the key still alerts: {out:#?}");
    }

    #[test]
    fn events_still_held_far_ahead_when_the_input_ends_are_quarantined_unless_they_are_its_tail() {
        use crate::detect::testkit::*;
        // With a second key, one key's jump needs a witness.
        let key = "AKIATAIL000000000001";
        let mut events = history(key, "london", 3, 2, ENDPOINTS);
        events.extend(history("AKIATAIL000000000002", "dublin", 3, 2, ENDPOINTS));
        events.sort_by_key(|event| event.ts_ms);
        let end = events.last().map(|event| event.ts_ms).unwrap_or(T0);
        let poison = |ts_ms| event(ts_ms, key, ip("london", 1), "/v1/orders", 200);
        let run = |extra: &[(usize, AccessEvent<'static>)]| {
            let mut input = events.clone();
            for (at, event) in extra.iter().rev() {
                input.insert(*at, event.clone());
            }
            let mut engine = new_engine();
            let mut out = Vec::new();
            engine.process(&input, &mut out);
            engine.finish(&mut out);
            let mut quarantined = Vec::new();
            engine.take_quarantined(&mut quarantined);
            (engine.stats().events, quarantined.len(), engine.time.clock_ms)
        };
        let year_2099 = 4_070_908_800_000;
        // Within the input's last hour, followed by ordinary calls: the
        // input went on at the old time after it.
        let (judged, quarantined, clock) = run(&[(events.len() - 1, poison(end + 2 * HOUR))]);
        assert_eq!((judged, quarantined), (events.len() as u64, 1));
        assert_eq!(clock, Some(end), "the key's time never moved");
        // The last line, dated 2099: a tail, but one no key would outlive.
        let (judged, quarantined, clock) = run(&[(events.len(), poison(year_2099))]);
        assert_eq!((judged, quarantined, clock), (events.len() as u64, 1, Some(end)));
        // The last lines, a day later: the input moved on and is believed.
        let (judged, quarantined, clock) = run(&[
            (events.len(), poison(end + DAY)),
            (events.len(), poison(end + DAY + HOUR / 2)),
        ]);
        assert_eq!((judged, quarantined), (events.len() as u64 + 2, 0));
        assert_eq!(clock, Some(end + DAY + HOUR / 2));
    }

    #[test]
    fn one_key_far_ahead_does_not_move_the_clock_but_two_keys_do() {
        use crate::detect::testkit::*;
        let mut engine = new_engine();
        let mut out = Vec::new();
        let start = T0;
        engine.process(
            &[
                event(start, "AKIACLOCK00000000001", ip("london", 1), "/v1/orders", 200),
                event(start + 1000, "AKIACLOCK00000000002", ip("london", 2), "/v1/orders", 200),
            ],
            &mut out,
        );
        let far = start + 3 * DAY;
        engine.process(
            &[event(far, "AKIACLOCK00000000001", ip("london", 1), "/v1/orders", 200)],
            &mut out,
        );
        assert_eq!(
            engine.time.clock_ms,
            Some(start + 1000),
            "one key alone is not believed"
        );
        engine.process(
            &[event(
                far + 5000,
                "AKIACLOCK00000000002",
                ip("london", 2),
                "/v1/orders",
                200,
            )],
            &mut out,
        );
        assert_eq!(engine.time.clock_ms, Some(far + 5000), "a second key confirms the jump");
        assert_eq!(engine.stats().events, 2, "the events before the jump were judged");
    }

    #[test]
    fn an_input_that_starts_with_two_keys_and_nightly_gaps_loses_no_event() {
        use crate::detect::testkit::*;
        // Two keys, one silent after its first day: every morning the
        // other jumps ahead with no second key to confirm it, until enough
        // of its calls in a row show the whole input has moved on.
        let mut events = history("AKIAGAPS000000000001", "london", 30, 2, ENDPOINTS);
        events.extend(history("AKIAGAPS000000000002", "dublin", 1, 2, ENDPOINTS));
        events.sort_by_key(|event| event.ts_ms);
        let mut engine = new_engine();
        let mut out = Vec::new();
        engine.process(&events, &mut out);
        assert_eq!(engine.stats().future_events, 0, "nothing quarantined");
        engine.finish(&mut out);
        assert_eq!(engine.stats().future_events, 0);
        assert_eq!(engine.stats().events, events.len() as u64);
    }
}
