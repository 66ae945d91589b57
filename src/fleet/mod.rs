//! The view across keys: state kept per source network ([`spray`]) and for
//! the whole organisation ([`org`]) rather than per key.
//!
//! The engine hands every event's facts here after judging it per key:
//! learned keys contribute to the organisation baseline, and calls that come
//! from a network unfamiliar to the key and to the organisation, or are
//! refused on a key not learned yet (a guessed key has no history), are
//! observed by the source view. In one process (file
//! replay, the demo, tests) [`Across`] runs both beside the per-key engine
//! and its alerts go into the same outputs; in Kafka the same two halves
//! run in their own stages (see `crate::pipeline`).

pub mod org;
pub mod spray;

use serde::{Deserialize, Serialize};

use crate::alert::Output;
use crate::detect::org::{OrgContribution, OrgTable};
use crate::enrich::ResolvedEvent;
use crate::key_text::Hint;
use crate::model::AcrossKeysModel;
pub use org::OrgBaseline;
pub use spray::{Observation, SourceView};

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

    /// For a process whose source view runs elsewhere (a Kafka key-stage
    /// partition sees only some keys): observations leave through
    /// [`Across::take_observations`].
    pub fn spray_elsewhere(&mut self) {
        self.spray_locally = false;
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
        established: bool,
        network_familiar: bool,
        model: &AcrossKeysModel,
        out: &mut Vec<Output>,
    ) {
        // Only a learned key's established places teach the organisation:
        // a thief's hours on a stolen key must not make the thief's network
        // familiar to every new key.
        if learned && established {
            self.org
                .contribute(event.ts_ms, key, &event.geo, event.client_id, model);
        }
        let refused = event.is_auth_failure();
        // A learned key refused on its own network is its owner's trouble
        // (a rotation, a permission change), not someone trying keys.
        let guessing_shape = refused && !learned;
        if network_familiar && !guessing_shape {
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

#[cfg(test)]
mod tests {
    use crate::alert::{Alert, Output};
    use crate::detect::testkit::*;
    use crate::detector::Severity;
    use crate::event::AccessEvent;

    /// Runs events in batches of `batch` and ends the input.
    fn run(events: &[AccessEvent<'_>], batch: usize) -> Vec<Output> {
        let mut engine = new_engine();
        let mut out = Vec::new();
        for chunk in events.chunks(batch) {
            engine.process(chunk, &mut out);
        }
        engine.finish(&mut out);
        out
    }

    fn alerts_of(outputs: &[Output], detector: &str) -> Vec<Alert> {
        outputs
            .iter()
            .filter_map(|output| match output {
                Output::Alert(alert) if alert.detector.as_str() == detector => Some(alert.clone()),
                _ => None,
            })
            .collect()
    }

    /// An organisation of 21 learned keys in London, Dublin and Frankfurt,
    /// five days old (the default model wants 20 before it judges).
    fn organisation() -> Vec<AccessEvent<'static>> {
        let mut events = Vec::new();
        for index in 0..21 {
            let place = ["london", "dublin", "frankfurt_aws"][index % 3];
            events.extend(history(&format!("AKIAORGANISATION{index:04}"), place, 5, 1, ENDPOINTS));
        }
        events
    }

    fn with(mut events: Vec<AccessEvent<'static>>, more: Vec<AccessEvent<'static>>) -> Vec<AccessEvent<'static>> {
        events.extend(more);
        events.sort_by_key(|event| event.ts_ms);
        events
    }

    /// A new key's first day: a few calls from `place`.
    fn new_key(key: &str, place: &str, day: i64) -> Vec<AccessEvent<'static>> {
        (0..5)
            .map(|call| {
                event(
                    T0 + day * DAY + 10 * HOUR + call * 60_000,
                    key,
                    ip(place, 3),
                    "/v1/orders",
                    200,
                )
            })
            .collect()
    }

    #[test]
    fn a_new_key_on_a_far_network_no_key_uses_is_at_least_medium() {
        let outputs = run(&with(organisation(), new_key("AKIANEWKEYLEAKED0001", "sydney", 5)), 64);
        let found = alerts_of(&outputs, "unfamiliar_network");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].severity >= Severity::Medium);
        assert_eq!(found[0].evidence["asn"], 1221);
        assert!(found[0].evidence["nearest_org_place_km"].as_f64().unwrap_or(0.0) > 10_000.0);
    }

    #[test]
    fn a_young_key_moved_far_from_where_it_lives_to_an_unfamiliar_network_is_medium() {
        let mut organisation = organisation();
        for index in 0..7 {
            organisation.extend(history(
                &format!("AKIAORGSAOPAULO{index:05}"),
                "saopaulo",
                5,
                1,
                ENDPOINTS,
            ));
        }
        let key = "AKIAYOUNGKEYMOVED001";
        let mut young = new_key(key, "saopaulo", 5);
        let later = T0 + 5 * DAY + 14 * HOUR;
        young.push(event(later, key, ip("paris", 7), "/v1/orders", 200));
        let outputs = run(&with(organisation.clone(), young), 64);
        let found = alerts_of(&outputs, "unfamiliar_network");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].severity >= Severity::Medium);
        assert!(
            found[0].evidence["nearest_org_place_km"].as_f64().unwrap_or(f64::MAX) < 1000.0,
            "near the organisation, yet far from the key"
        );
        assert!(found[0].evidence["km_from_key_last_use"].as_f64().unwrap_or(0.0) > 5000.0);

        // The same young key staying home is quiet.
        let outputs = run(&with(organisation, new_key(key, "saopaulo", 5)), 64);
        assert!(alerts_of(&outputs, "unfamiliar_network").is_empty());
    }

    #[test]
    fn a_new_key_on_the_organisations_networks_is_quiet() {
        // A successor key, rotated in, calling from the predecessor's places.
        let outputs = run(&with(organisation(), new_key("AKIASUCCESSORKEY0001", "london", 5)), 64);
        assert!(alerts_of(&outputs, "unfamiliar_network").is_empty());
        // An unknown network near the organisation's places is quiet too.
        let outputs = run(&with(organisation(), new_key("AKIASUCCESSORKEY0002", "paris", 5)), 64);
        assert!(alerts_of(&outputs, "unfamiliar_network").is_empty());
    }

    #[test]
    fn only_learned_keys_make_up_the_organisation() {
        // A key still learning in Sydney does not make Sydney familiar.
        let learning: Vec<_> = history("AKIASTILLLEARNING001", "sydney", 1, 4, ENDPOINTS)
            .into_iter()
            .map(|mut event| {
                event.ts_ms += 4 * DAY;
                event
            })
            .collect();
        let events = with(
            with(organisation(), learning),
            new_key("AKIANEWKEYLEAKED0002", "sydney", 5),
        );
        let found = alerts_of(&run(&events, 64), "unfamiliar_network");
        let judged: Vec<&str> = found.iter().map(|alert| alert.key_hint.as_str()).collect();
        assert!(judged.contains(&"****0002"), "{judged:?}");
        // An organisation with too few learned keys judges nothing.
        let small: Vec<_> = organisation()
            .into_iter()
            .filter(|event| !event.key_id.ends_with('7') && !event.key_id.ends_with('9'))
            .collect();
        let events = with(small, new_key("AKIANEWKEYLEAKED0003", "sydney", 5));
        assert!(alerts_of(&run(&events, 64), "unfamiliar_network").is_empty());
        // Keys first seen before the organisation had a baseline are not
        // new: they are not judged by it.
        let early = new_key("AKIANEWKEYLEAKED0006", "sydney", 0).into_iter().chain(new_key(
            "AKIANEWKEYLEAKED0006",
            "saopaulo",
            5,
        ));
        let events = with(organisation(), early.collect());
        assert!(alerts_of(&run(&events, 64), "unfamiliar_network").is_empty());
    }

    #[test]
    fn a_source_spraying_guessed_keys_is_one_incident_through_the_engine() {
        let spray: Vec<_> = (0..150)
            .map(|guess| {
                event(
                    T0 + 5 * DAY + 3 * HOUR + guess * 3000,
                    &format!("AKIAGUESSEDKEY{guess:06}"),
                    ip("saopaulo", 9),
                    "/v1/orders",
                    if guess % 10 == 0 { 200 } else { 401 },
                )
            })
            .collect();
        let events = with(organisation(), spray);
        let outputs = run(&events, 64);
        let found = alerts_of(&outputs, "source_spray");
        assert!((1..=3).contains(&found.len()), "{found:#?}");
        assert!(found.iter().all(|alert| alert.incident_id == found[0].incident_id));
        assert_eq!(found[0].severity, Severity::High);
        assert_eq!(found[0].keys.len(), 20);
        assert!(found.last().map_or(0, |alert| alert.keys.len()) >= 80);
        let text = serde_json::to_string(&found).unwrap_or_default();
        assert!(!text.contains("AKIAGUESSEDKEY"), "no raw key in an alert");
        // The organisation's own keys, used as always, are never counted.
        for alert in &found {
            assert!(!alert.evidence["countries"].to_string().contains("GB"));
        }
    }

    #[test]
    fn learned_keys_refused_on_their_own_network_are_no_spray() {
        // A rotation gone wrong: every service of the organisation behind
        // one London gateway is refused for a few minutes.
        let storm: Vec<_> = (0..21)
            .flat_map(|index| {
                (0..3).map(move |retry| {
                    event(
                        T0 + 5 * DAY + 9 * HOUR + index * 5_000 + retry * 1_000,
                        &format!("AKIAORGANISATION{index:04}"),
                        ip("london", 7),
                        "/v1/orders",
                        401,
                    )
                })
            })
            .collect();
        let outputs = run(&with(organisation(), storm), 64);
        assert!(alerts_of(&outputs, "source_spray").is_empty());
    }

    #[test]
    fn batch_size_does_not_change_the_view_across_keys() {
        let mut spray: Vec<_> = (0..40)
            .map(|guess| {
                event(
                    T0 + 5 * DAY + 3 * HOUR + guess * 2000,
                    &format!("AKIAGUESSEDKEY{guess:06}"),
                    ip("saopaulo", 9),
                    "/v1/orders",
                    401,
                )
            })
            .collect();
        spray.extend(new_key("AKIANEWKEYLEAKED0004", "sydney", 5));
        let events = with(organisation(), spray);
        let whole = run(&events, events.len());
        assert!(!alerts_of(&whole, "source_spray").is_empty());
        assert!(!alerts_of(&whole, "unfamiliar_network").is_empty());
        for batch in [1, 7, 500] {
            assert_eq!(run(&events, batch), whole, "batch {batch}");
        }
    }

    #[test]
    fn a_restored_snapshot_keeps_the_organisation_table() {
        let events = with(organisation(), new_key("AKIANEWKEYLEAKED0005", "sydney", 5));
        let whole = run(&events, 100);
        let split = events.len() - 3;
        let mut first = new_engine();
        let mut out = Vec::new();
        first.process(&events[..split], &mut out);
        let text = serde_json::to_string(&first.snapshot()).unwrap_or_default();
        let mut second = new_engine();
        second.restore(serde_json::from_str(&text).expect("a snapshot reads back"));
        second.process(&events[split..], &mut out);
        second.finish(&mut out);
        assert_eq!(out, whole);
    }
}
