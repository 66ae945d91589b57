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

pub mod order;

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
use crate::enrich::{GeoCache, GeoIp, NetworkKinds, ResolvedEvent};
use crate::event::{AccessEvent, key_fingerprint, key_hint};
use crate::fleet::spray::fingerprint_bits;
use crate::fleet::{Across, AcrossSnapshot, Hint};
use crate::model::Model;
use order::{Arrival, EventTime, HeldText, Row};
pub use order::{EventTimeSnapshot, HeldEvent};
/// Quarantined events kept for [`Engine::take_quarantined`] at most;
/// beyond, they are counted only.
const MAX_QUARANTINED_KEPT: usize = 4096;
/// Snapshot layout version.
const SNAPSHOT_VERSION: u32 = 1;

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
    /// The input's clock and the events it holds (absent in older snapshots).
    #[serde(default)]
    pub time: EventTimeSnapshot,
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
}

impl Engine {
    pub fn new(model: Arc<Model>, geo: Arc<GeoIp>) -> Engine {
        let model_label = model.label();
        let max_out_of_order_ms = model.time.max_out_of_order.as_millis() as i64;
        let max_ahead_ms = model.time.max_ahead.as_millis() as i64;
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
            time: EventTime::default(),
            held_methods: HeldText::default(),
            held_endpoints: HeldText::default(),
            held_clients: HeldText::default(),
            max_out_of_order_ms,
            max_ahead_ms,
            scratch_rows: Vec::new(),
            quarantined: Vec::new(),
        }
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
        for (index, event) in events.iter().enumerate() {
            let origin = origins.get(index).copied().unwrap_or(0);
            self.admit(event, origin, out);
        }
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

    /// Events quarantined since the last call, as too far ahead of the
    /// input's clock: for the driver's rejected output.
    pub fn take_quarantined(&mut self, into: &mut Vec<Quarantined>) {
        into.append(&mut self.quarantined);
    }

    /// Holds one arriving event, then judges whatever the input's clock
    /// now lets go.
    fn admit(&mut self, event: &AccessEvent<'_>, origin: u64, out: &mut Vec<Output>) {
        let arrival = self.time.arrival(event.ts_ms, self.max_ahead_ms);
        let row = self.hold(event, origin);
        match arrival {
            Arrival::Late => {
                self.time.ahead_run = 0;
                // Behind the input's watermark but not behind its own key's
                // judged events (its key's events came through a lagging
                // upstream partition, in order): judged now, in its key's
                // order, since every per-key decision reads only the key's
                // own sequence. Only older than its key's newest is late.
                let state = &self.keys[row.key_index as usize];
                let late = state.events > 0 && row.ts_ms < state.last_ts;
                if late {
                    self.stats.late_events += 1;
                }
                self.judge(row, late, out);
            }
            Arrival::InOrder => {
                self.time.ahead_run = 0;
                self.time.held.push(std::cmp::Reverse(row));
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
        loop {
            rows.clear();
            self.time.take_admitted(self.max_ahead_ms, &mut rows);
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                self.time.held.push(std::cmp::Reverse(*row));
                self.time.advance(row.ts_ms);
            }
        }
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
    }

    /// After a confirmed jump: the rows it brings near join the reorder
    /// buffer, and those still far ahead wait afresh from the new clock.
    fn settle_jump(&mut self, out: &mut Vec<Output>) {
        let mut rows = std::mem::take(&mut self.scratch_rows);
        loop {
            rows.clear();
            self.time.take_admitted(self.max_ahead_ms, &mut rows);
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                self.time.held.push(std::cmp::Reverse(*row));
                self.time.advance(row.ts_ms);
            }
        }
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
        // A driver that never takes them (the Kafka stages count them
        // only) must not grow this without bound.
        if self.quarantined.len() >= MAX_QUARANTINED_KEPT {
            return;
        }
        self.quarantined.push(Quarantined {
            origin: row.origin,
            ts: crate::event::format_ts(row.ts_ms),
            key_fingerprint: self.keys[row.key_index as usize].fingerprint.clone(),
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
    fn hold(&mut self, event: &AccessEvent<'_>, origin: u64) -> Row {
        let key_index = self.intern_key(&event.key_id, event.ts_ms);
        let template = normalize_endpoint(&event.endpoint, &mut self.scratch_path);
        let ids = [
            self.held_methods.intern(&event.method),
            self.held_endpoints.intern(template),
            self.held_clients.intern(client_family(&event.user_agent)),
        ];
        Row {
            ts_ms: event.ts_ms,
            key_bits: self.key_ids[key_index as usize].0,
            ip: event.ip,
            status: event.status,
            bytes_out: event.bytes_out,
            text_hash: order::text_hash(&[&self.held_methods, &self.held_endpoints, &self.held_clients], ids),
            key_index,
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
        let (id, new) = self.endpoints.intern(self.held_endpoints.name(held));
        if new {
            self.endpoint_sensitive
                .push(self.sensitive.matches(self.held_endpoints.name(held)));
        }
        self.held_endpoints.engine_ids[held as usize] = id;
        id
    }

    /// The engine's client id of a held client family.
    fn release_client(&mut self, held: u32) -> u32 {
        let cached = self.held_clients.engine_ids[held as usize];
        if cached != u32::MAX {
            return cached;
        }
        let id = self.clients.intern(self.held_clients.name(held)).0;
        self.held_clients.engine_ids[held as usize] = id;
        id
    }

    /// Judges one event: advance, judge (before), absorb, judge (after),
    /// dispose. A late event is judged at its key's newest time, without
    /// travel checks, and leaves the key's places alone.
    fn judge(&mut self, held: Row, late: bool, out: &mut Vec<Output>) {
        let endpoint_id = self.release_endpoint(held.endpoint);
        let client_id = self.release_client(held.client);
        let mut geo = self.geo_cache.lookup(&self.geo, held.ip);
        geo.kind = self.network_kinds.kind_of(&self.geo, held.ip, geo.asn);
        let model: &Model = &self.model;
        let state = &mut self.keys[held.key_index as usize];
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
        let (key, hint) = self.key_ids[held.key_index as usize];
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
    ///
    /// Everything held is let go first, in event-time order: no event of
    /// the input is left to be misjudged after them, so events still held
    /// far ahead (no other key could confirm them: the input ended) are
    /// judged too, each step of the clock confirmed by its own events.
    /// Digests go out in fingerprint order: the order keys were first seen
    /// in depends on arrival.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        let mut rows = std::mem::take(&mut self.scratch_rows);
        while let Some(jump_ms) = self.time.confirmed_jump(1, self.max_ahead_ms, 1) {
            self.time.advance(jump_ms);
            loop {
                rows.clear();
                self.time.take_admitted(self.max_ahead_ms, &mut rows);
                if rows.is_empty() {
                    break;
                }
                for row in &rows {
                    self.time.held.push(std::cmp::Reverse(*row));
                    self.time.advance(row.ts_ms);
                }
            }
        }
        rows.clear();
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
        }
    }

    /// The view across keys, for drivers that share its halves (Kafka).
    pub fn across_mut(&mut self) -> &mut Across {
        &mut self.across
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
            time: self.time_snapshot(),
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
        self.stats.future_events += snapshot.stats.future_events;
        self.restore_time(snapshot.time);
    }

    /// The input's clock and held events, keys by fingerprint.
    fn time_snapshot(&self) -> EventTimeSnapshot {
        let held_event = |row: &Row| HeldEvent {
            ts_ms: row.ts_ms,
            key: self.keys[row.key_index as usize].fingerprint.clone(),
            ip: row.ip,
            method: self.held_methods.name(row.method).to_string(),
            endpoint: self.held_endpoints.name(row.endpoint).to_string(),
            client: self.held_clients.name(row.client).to_string(),
            status: row.status,
            bytes_out: row.bytes_out,
            origin: row.origin,
            arrived_clock_ms: row.arrived_clock_ms,
        };
        let mut held: Vec<Row> = self.time.held.iter().map(|row| row.0).collect();
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
            let Some(&key_index) = self.by_fingerprint.get(&held.key) else {
                continue;
            };
            let ids = [
                self.held_methods.intern(&held.method),
                self.held_endpoints.intern(&held.endpoint),
                self.held_clients.intern(&held.client),
            ];
            let row = Row {
                ts_ms: held.ts_ms,
                key_bits: self.key_ids[key_index as usize].0,
                ip: held.ip,
                status: held.status,
                bytes_out: held.bytes_out,
                text_hash: order::text_hash(&[&self.held_methods, &self.held_endpoints, &self.held_clients], ids),
                key_index,
                method: ids[0],
                endpoint: ids[1],
                client: ids[2],
                origin: held.origin,
                arrived_clock_ms: held.arrived_clock_ms,
            };
            if into_ahead {
                self.time.ahead.push(row);
            } else {
                self.time.held.push(std::cmp::Reverse(row));
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
        let state = &engine.keys[engine.by_fingerprint[&key_fingerprint(key)] as usize];
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
                if alert.detector.as_str() == "impossible_travel" && alert.key_hint == "AKIA****0000"
                    && alert.window.end >= crate::event::format_ts(twist))
        });
        assert!(travel, "the key still alerts: {out:#?}");
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
