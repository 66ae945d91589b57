//! The owners file of a generated run (`keywatch generate --owners`): most
//! keys have an owner and a team, some are past the expiry their entry
//! gives, some have no entry at all, and half the abandoned keys are still
//! owned. Keys are named by fingerprint (made with the run's fingerprinter),
//! so the file holds no key id. Each key's draw comes from its own random
//! stream: the file does not change the traffic.

use super::GenerateConfig;
use super::catalog::services;
use super::plan::PURPOSE_OWNERS;
use super::profile::{DAY_MS, KeyProfile};
use super::random::{between, chance, index, stream};
use crate::event::format_ts;

/// Share of the planned keys with an owners entry.
const OWNED_SHARE: f64 = 0.85;
/// Share of abandoned keys still with an owners entry.
const ABANDONED_OWNED_SHARE: f64 = 0.5;
/// Share of owned keys whose expiry falls inside the run.
const EXPIRED_SHARE: f64 = 0.1;
/// Share of owned keys with no expiry at all.
const NO_EXPIRY_SHARE: f64 = 0.3;

const TEAMS: &[&str] = &[
    "payments", "search", "growth", "platform", "data", "mobile", "partners", "billing",
];
const CRITICALITIES: &[&str] = &["low", "medium", "medium", "high", "critical"];

/// One row of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedOwner {
    pub key_fingerprint: String,
    pub owner: String,
    pub team: String,
    pub purpose: String,
    pub criticality: &'static str,
    /// `YYYY-MM-DD`, or empty for no expiry.
    pub expires: String,
    /// Endpoint templates of the key's service: the scope its key grants.
    pub scope_endpoints: usize,
}

/// What the file holds, for the summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OwnersCounts {
    pub owned: usize,
    pub expired: usize,
    pub unowned: usize,
}

/// The rows, in key order, and their counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnersFile {
    pub rows: Vec<GeneratedOwner>,
    pub counts: OwnersCounts,
}

impl OwnersFile {
    /// The file as CSV with a header row.
    pub fn csv(&self) -> String {
        let mut text = String::from("key_fingerprint,owner,team,purpose,criticality,expires,scope_endpoints\n");
        for row in &self.rows {
            text.push_str(&format!(
                "{},{},{},{},{},{},{}\n",
                row.key_fingerprint,
                row.owner,
                row.team,
                row.purpose,
                row.criticality,
                row.expires,
                row.scope_endpoints
            ));
        }
        text
    }
}

/// Draws the owners of every key of the run (`profiles` in plan order,
/// abandoned keys last).
pub fn owners_file(config: &GenerateConfig, profiles: &[KeyProfile]) -> OwnersFile {
    let catalog = services();
    let run_end = config.end_ms();
    let mut rows = Vec::new();
    let mut counts = OwnersCounts::default();
    for (position, profile) in profiles.iter().enumerate() {
        let mut rng = stream(config.seed, PURPOSE_OWNERS, position as u64);
        let abandoned = position >= config.keys;
        let owned_share = if abandoned { ABANDONED_OWNED_SHARE } else { OWNED_SHARE };
        if !chance(&mut rng, owned_share) {
            counts.unowned += 1;
            continue;
        }
        counts.owned += 1;
        let expires = if chance(&mut rng, EXPIRED_SHARE) {
            counts.expired += 1;
            // A day inside the run, before its last day.
            let day = between(&mut rng, 0, u64::from(config.days.saturating_sub(2)));
            format_ts(config.start_ms + day as i64 * DAY_MS)[..10].to_string()
        } else if chance(&mut rng, NO_EXPIRY_SHARE) {
            String::new()
        } else {
            let days_after = between(&mut rng, 90, 365) as i64;
            format_ts(run_end + days_after * DAY_MS)[..10].to_string()
        };
        let service = catalog.get(profile.service);
        rows.push(GeneratedOwner {
            key_fingerprint: config.fingerprinter.fingerprint(&profile.key_id),
            owner: format!("owner-{:03}", index(&mut rng, 400)),
            team: TEAMS[index(&mut rng, TEAMS.len())].to_string(),
            purpose: service.map_or("integration", |service| service.name).to_string(),
            criticality: CRITICALITIES[index(&mut rng, CRITICALITIES.len())],
            expires,
            scope_endpoints: service.map_or(0, |service| service.endpoints.len()),
        });
    }
    OwnersFile { rows, counts }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{DEFAULT_START, Generation, MINIMUM_DAYS, plan};
    use crate::owners::OwnerBook;

    #[test]
    fn the_owners_file_loads_names_keys_by_fingerprint_and_mixes_owned_expired_and_unowned() {
        let config = GenerateConfig::new(200, MINIMUM_DAYS, 4, DEFAULT_START)
            .unwrap()
            .with_abandoned_keys(20);
        let generation = Generation::new(config.clone());
        let owners = generation.owners_file();
        assert_eq!(owners.counts.owned + owners.counts.unowned, 220);
        assert!(owners.counts.unowned >= 10, "{:?}", owners.counts);
        assert!(owners.counts.expired >= 3, "{:?}", owners.counts);
        let dir = tempfile::tempdir().unwrap();
        generation.write_owners(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("owners.csv")).unwrap();
        let book = OwnerBook::load(&dir.path().join("owners.csv"), &config.fingerprinter).unwrap();
        assert_eq!(book.len(), owners.counts.owned);
        let expired = book
            .iter()
            .filter(|(_, owner)| owner.expires_ms.is_some_and(|expires| expires < config.end_ms()))
            .count();
        assert_eq!(expired, owners.counts.expired);
        // Named by fingerprint only: no key id of the run is in the file.
        let plan = plan::plan(&config);
        assert!(plan.profiles.iter().all(|profile| !text.contains(&profile.key_id)));
        assert_eq!(generation.owners_file(), owners, "the same run gives the same file");
    }

    #[test]
    fn abandoned_keys_fall_silent_a_month_before_the_run_and_change_no_other_key() {
        let base = GenerateConfig::new(plan::minimum_keys(), MINIMUM_DAYS, 7, DEFAULT_START).unwrap();
        let without = plan::plan(&base);
        let with = plan::plan(&base.clone().with_abandoned_keys(5));
        assert_eq!(with.profiles.len(), without.profiles.len() + 5);
        for (a, b) in without.profiles.iter().zip(&with.profiles) {
            assert_eq!((&a.key_id, &a.active_periods), (&b.key_id, &b.active_periods));
        }
        assert_eq!(without.injected, with.injected[..without.injected.len()]);
        assert_eq!(without.labels, with.labels);
        for abandoned in &with.profiles[without.profiles.len()..] {
            let last_use = abandoned.active_periods.iter().map(|&(_, until)| until).max().unwrap();
            assert!(last_use <= base.start_ms - 31 * DAY_MS, "{last_use}");
        }
    }
}
