//! The detection engine: a plain synchronous struct with no I/O and no
//! clock. File replay, Kafka, the demo, tests and benches all drive it the
//! same way: `process` a micro-batch of events in order, collect outputs.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, RevocationRequest};
use crate::enrich::GeoIp;
use crate::event::AccessEvent;
use crate::model::Model;

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
    /// Events older than their key's newest event by more than the key's
    /// bucket horizon, counted but not used for rates.
    pub late_events: u64,
}

/// The engine's whole state, keyed by key fingerprint: no raw key id.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {}

/// The engine.
pub struct Engine {
    model: Arc<Model>,
    geo: Arc<GeoIp>,
    stats: EngineStats,
}

impl Engine {
    pub fn new(model: Arc<Model>, geo: Arc<GeoIp>) -> Engine {
        Engine {
            model,
            geo,
            stats: EngineStats::default(),
        }
    }

    /// Processes one micro-batch in order and appends outputs to `out`.
    /// The result never depends on how the input was cut into batches.
    pub fn process(&mut self, events: &[AccessEvent<'_>], out: &mut Vec<Output>) {
        let _ = (&self.model, &self.geo, events, out);
        unimplemented!("engine")
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Keys with state.
    pub fn keys_tracked(&self) -> usize {
        0
    }

    /// All state, for checkpoints. Contains no raw key id.
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {}
    }

    /// Replaces all state with a snapshot's.
    pub fn restore(&mut self, snapshot: EngineSnapshot) {
        let _ = snapshot;
    }
}
