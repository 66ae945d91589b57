//! The view across keys: state kept per source network ([`spray`]) and for
//! the whole organisation ([`org`]) rather than per key.
//!
//! The engine hands every event's facts here after judging it per key:
//! learned keys contribute to the organisation baseline, and calls that are
//! refused or come from a network unfamiliar to the key and to the
//! organisation are observed by the source view. In one process (file
//! replay, the demo, tests) [`Across`] runs both beside the per-key engine
//! and its alerts go into the same outputs; in Kafka the same two halves
//! run in their own stages (see `crate::pipeline`).

pub mod org;
pub mod spray;

use serde::{Deserialize, Serialize};

use crate::alert::Output;
use crate::detect::org::{OrgContribution, OrgTable};
use crate::enrich::ResolvedEvent;
use crate::model::AcrossKeysModel;
pub use org::OrgBaseline;
pub use spray::{Hint, Observation, SourceView};

/// The part of the engine's snapshot that belongs to the view across keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AcrossSnapshot {
    pub org: OrgBaseline,
}

/// Both halves of the view across keys, in one process.
pub struct Across {
    pub org: OrgBaseline,
    pub spray: SourceView,
    /// Contributions closed by the last epoch change, kept for a driver
    /// that shares them (Kafka); cleared by [`Across::take_closed`].
    closed: Vec<OrgContribution>,
    /// Whether this process merges its own contributions into the table
    /// (it sees every key) or receives the shared table from outside.
    merge_locally: bool,
    /// Whether observations are judged here or handed out for a source
    /// stage elsewhere.
    spray_locally: bool,
    observations: Vec<Observation>,
}

impl Across {
    pub fn new(model: &AcrossKeysModel, model_label: &str) -> Across {
        Across {
            org: OrgBaseline::default(),
            spray: SourceView::new(model, model_label),
            closed: Vec::new(),
            merge_locally: true,
            spray_locally: true,
            observations: Vec::new(),
        }
    }

    /// For a process that sees only some keys: the organisation table
    /// comes from [`Across::set_table`] and observations leave through
    /// [`Across::take_observations`].
    pub fn shared(mut self) -> Across {
        self.merge_locally = false;
        self.spray_locally = false;
        self
    }

    /// The table judging the current epoch.
    pub fn table(&self) -> &OrgTable {
        &self.org.table
    }

    /// Replaces the table with one merged elsewhere (from every partition).
    pub fn set_table(&mut self, table: OrgTable) {
        self.org.table = table;
    }

    /// Moves the organisation baseline to the event's epoch.
    pub fn advance_to(&mut self, ts_ms: i64, model: &AcrossKeysModel, client_names: &[Box<str>]) {
        let keep = !self.merge_locally;
        if !keep {
            self.closed.clear();
        }
        self.org
            .advance_to(ts_ms, model, client_names, self.merge_locally, &mut self.closed);
    }

    /// Whether the event's network is unfamiliar to the organisation.
    pub fn org_knows(&self, asn: u32) -> bool {
        self.org.table.asns.contains_key(&asn)
    }

    /// The event's facts once it has been judged per key.
    #[allow(clippy::too_many_arguments)]
    pub fn after_event(
        &mut self,
        event: &ResolvedEvent,
        key: u128,
        hint: Hint,
        learned: bool,
        network_familiar: bool,
        model: &AcrossKeysModel,
        out: &mut Vec<Output>,
    ) {
        if learned {
            self.org.contribute(event.ts_ms, &event.geo, event.client_id, model);
        }
        let refused = event.is_auth_failure();
        if !refused && network_familiar {
            return;
        }
        let observation = Observation {
            ts_ms: event.ts_ms,
            ip: event.ip,
            key,
            asn: event.geo.asn,
            country: event.geo.country.0,
            refused,
            hint,
        };
        if self.spray_locally {
            self.spray.observe(observation, out);
        } else {
            self.observations.push(observation);
        }
    }

    /// Judges what the source view still holds: the input has ended.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        self.spray.finish(out);
    }

    /// Observations for a source stage elsewhere, in the order made.
    pub fn take_observations(&mut self) -> Vec<Observation> {
        std::mem::take(&mut self.observations)
    }

    /// Contributions closed since the last call, for sharing.
    pub fn take_closed(&mut self) -> Vec<OrgContribution> {
        std::mem::take(&mut self.closed)
    }

    pub fn snapshot(&self) -> AcrossSnapshot {
        AcrossSnapshot { org: self.org.clone() }
    }
}
