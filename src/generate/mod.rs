//! `keywatch generate`: labelled synthetic API traffic for measuring
//! detection.
//!
//! A run is planned up front ([`plan`]): every key gets a behaviour profile
//! (where, when, how much, which endpoints, which client), some keys are
//! benign hard cases, and some carry an injected incident. Events are then
//! produced hour by hour per key and merged across keys with a heap, so
//! memory stays bounded by one hour of one key at a time rather than by the
//! whole run. The same configuration always produces the same bytes.
//!
//! Files written to the output folder:
//! `events.jsonl` (canonical access events in time order; `events.parquet`
//! with `--format parquet`, see [`parquet`]), `labels.jsonl`
//! (incidents), `benign.jsonl` (benign hard cases), `meta.json`, and
//! `geoip-city.mmdb` / `geoip-asn.mmdb` covering every address used.

pub mod attacks;
pub mod benign;
pub mod catalog;
pub mod owners_file;
pub mod parquet;
pub mod plan;
pub mod profile;
pub mod random;
pub mod world;

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::enrich::mmdb_build::{BuildError, build_asn_db, build_city_db};
use crate::eval::{BenignCase, Label, RunMeta};
use crate::event::{AccessEvent, format_ts, parse_ts};

use self::plan::{PURPOSE_TRAFFIC, Plan};
use self::profile::{DAY_MS, GenEvent, HOUR_MS, KeyProfile};
use self::random::GenRng;

/// Default first day of a run: a Monday, so weekly seasonality starts clean.
pub const DEFAULT_START: &str = "2026-01-05T00:00:00Z";

/// Fewest days a run may have: baselines need three days before the first
/// incident, and incidents need room to finish inside the run.
pub const MINIMUM_DAYS: u32 = 5;

/// Command-line options of `keywatch generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Number of API keys.
    #[arg(long, default_value_t = 1000)]
    pub keys: usize,
    /// Length of the run in days.
    #[arg(long, default_value_t = 10)]
    pub days: u32,
    /// Seed; the same arguments always give byte-identical files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Start of the run (RFC 3339).
    #[arg(long, default_value = DEFAULT_START)]
    pub start: String,
    /// The fingerprint secret: labels must carry the fingerprints that a
    /// replay of the generated traffic gives, so give both the same secret
    /// (or both `--unkeyed-fingerprints`).
    #[command(flatten)]
    pub fingerprint: crate::setup::FingerprintArgs,
    /// Add this many keys that were used for a few weeks and then left
    /// silent for over a month before the run starts: dormant keys for
    /// `keywatch keys --stale`. Other keys' traffic does not change.
    #[arg(long, default_value_t = 0)]
    pub abandoned_keys: usize,
    /// Also write `owners.csv`, the owners file of the run's keys: most
    /// keys owned, some past their expiry, some with no owner at all.
    #[arg(long)]
    pub owners: bool,
    /// How the events are written: `jsonl` (events.jsonl) or `parquet`
    /// (events.parquet, for `keywatch replay --format parquet`). The events,
    /// labels and other files are the same either way.
    #[arg(long, value_enum, default_value_t = parquet::EventsFormat::Jsonl)]
    pub format: parquet::EventsFormat,
}

/// Why generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("--start {0:?} is not an RFC 3339 time between 2000 and 2100")]
    BadStart(String),
    #[error("--keys must be at least {minimum} so every scenario and hard case has a key (got {keys})")]
    TooFewKeys { keys: usize, minimum: usize },
    #[error("fingerprint secret: {0}")]
    Fingerprint(String),
    #[error("--days must be at least {minimum} (got {days})")]
    TooFewDays { days: u32, minimum: u32 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot build the {which} GeoIP database: {source}")]
    GeoDatabase {
        which: &'static str,
        #[source]
        source: BuildError,
    },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateConfig {
    pub keys: usize,
    pub days: u32,
    pub seed: u64,
    /// Start of the run, epoch milliseconds.
    pub start_ms: i64,
    /// How label fingerprints are computed; unkeyed unless set.
    pub fingerprinter: crate::event::Fingerprinter,
    /// Keys added after the `keys` planned ones, silent since weeks before
    /// the run (see [`GenerateArgs::abandoned_keys`]).
    pub abandoned_keys: usize,
}

impl GenerateConfig {
    /// Checks the sizes and parses the start time.
    pub fn new(keys: usize, days: u32, seed: u64, start: &str) -> Result<GenerateConfig, GenerateError> {
        let start_ms = parse_ts(start).ok_or_else(|| GenerateError::BadStart(start.to_string()))?;
        let minimum = plan::minimum_keys();
        if keys < minimum {
            return Err(GenerateError::TooFewKeys { keys, minimum });
        }
        if days < MINIMUM_DAYS {
            return Err(GenerateError::TooFewDays {
                days,
                minimum: MINIMUM_DAYS,
            });
        }
        Ok(GenerateConfig {
            keys,
            days,
            seed,
            start_ms,
            fingerprinter: crate::event::Fingerprinter::unkeyed(),
            abandoned_keys: 0,
        })
    }

    /// Adds `count` abandoned keys to the run.
    pub fn with_abandoned_keys(mut self, count: usize) -> GenerateConfig {
        self.abandoned_keys = count;
        self
    }

    /// Labels fingerprinted with `fingerprinter`, as a replay with the same
    /// secret fingerprints the keys.
    pub fn with_fingerprinter(mut self, fingerprinter: crate::event::Fingerprinter) -> GenerateConfig {
        self.fingerprinter = fingerprinter;
        self
    }

    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.days) * DAY_MS
    }
}

/// Counts reported after a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateSummary {
    pub events: u64,
    pub incidents: usize,
    pub benign_cases: usize,
    pub benign_key_days: u64,
    pub judged_key_days: u64,
}

/// How long after its first call a key is still learning: the longest
/// `min_age` of any detector in models/default.toml (`learning`,
/// `new_endpoint`, `mix_shift` and `new_client` wait 3 days). Key-days
/// before it are not judged: most detectors cannot fire on them, so counting
/// them would dilute the false-alert rate.
pub const LEARNING_PERIOD_MS: i64 = 3 * DAY_MS;

/// What [`Generation::for_each_event`] streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventCounts {
    pub events: u64,
    /// Key-days with traffic outside incident windows.
    pub benign_key_days: u64,
    /// Benign key-days with traffic after the key's learning period
    /// ([`LEARNING_PERIOD_MS`] from its first call): the days on which every
    /// detector may judge the key.
    pub judged_key_days: u64,
}

/// One key's events in time order, produced an hour at a time.
struct KeyStream {
    rng: GenRng,
    next_hour_ms: i64,
    stop_ms: i64,
    /// Injected calls not yet released, in time order.
    injected: std::vec::IntoIter<GenEvent>,
    pending_injected: Option<GenEvent>,
    /// The current hour's events in reverse time order, so `pop` yields the
    /// earliest.
    buffer: Vec<GenEvent>,
}

impl KeyStream {
    fn new(profile: &KeyProfile, injected: Vec<GenEvent>, rng: GenRng, config: &GenerateConfig) -> KeyStream {
        let first_active = profile
            .active_periods
            .iter()
            .map(|&(from, _)| from)
            .min()
            .unwrap_or(config.start_ms)
            .min(config.start_ms);
        let mut injected = injected.into_iter();
        let pending_injected = injected.next();
        KeyStream {
            rng,
            next_hour_ms: first_active.div_euclid(HOUR_MS) * HOUR_MS,
            stop_ms: config.end_ms(),
            injected,
            pending_injected,
            buffer: Vec::new(),
        }
    }

    fn next(&mut self, profile: &KeyProfile, run_start_ms: i64) -> Option<GenEvent> {
        loop {
            if let Some(event) = self.buffer.pop() {
                return Some(event);
            }
            if self.next_hour_ms >= self.stop_ms && self.pending_injected.is_none() {
                return None;
            }
            let hour_start = self.next_hour_ms;
            let hour_end = hour_start + HOUR_MS;
            if hour_start < self.stop_ms {
                profile.owner_hour(&mut self.rng, hour_start, run_start_ms, &mut self.buffer);
                // Owner calls never leave the run, even when an hour straddles its end.
                self.buffer.retain(|event| event.ts_ms < self.stop_ms);
            }
            while self
                .pending_injected
                .as_ref()
                .is_some_and(|event| event.ts_ms < hour_end || hour_start >= self.stop_ms)
            {
                if let Some(event) = self.pending_injected.take() {
                    self.buffer.push(event);
                }
                self.pending_injected = self.injected.next();
            }
            self.buffer.sort_by_key(|event| Reverse(event.ts_ms));
            self.next_hour_ms = hour_end;
        }
    }
}

/// A planned run, ready to stream its events.
pub struct Generation {
    config: GenerateConfig,
    plan: Plan,
}

impl Generation {
    pub fn new(config: GenerateConfig) -> Generation {
        let plan = plan::plan(&config);
        Generation { config, plan }
    }

    pub fn config(&self) -> &GenerateConfig {
        &self.config
    }

    pub fn labels(&self) -> &[Label] {
        &self.plan.labels
    }

    pub fn benign_cases(&self) -> &[BenignCase] {
        &self.plan.benign_cases
    }

    /// The GeoIP City database covering every generated address.
    pub fn city_database(&self) -> Result<Vec<u8>, GenerateError> {
        build_city_db(&self.plan.world.city_records())
            .map_err(|source| GenerateError::GeoDatabase { which: "City", source })
    }

    /// The GeoIP ASN database covering every generated address.
    pub fn asn_database(&self) -> Result<Vec<u8>, GenerateError> {
        build_asn_db(&self.plan.world.asn_records())
            .map_err(|source| GenerateError::GeoDatabase { which: "ASN", source })
    }

    /// Calls `visit` with every event in non-decreasing time order (ties
    /// broken by key), and returns how many there were and how many
    /// key-days had traffic outside incident windows, all and judged.
    pub fn for_each_event<E>(
        &self,
        mut visit: impl FnMut(&AccessEvent<'_>) -> Result<(), E>,
    ) -> Result<EventCounts, E> {
        let profiles = &self.plan.profiles;
        let mut streams: Vec<KeyStream> = profiles
            .iter()
            .zip(&self.plan.injected)
            .enumerate()
            .map(|(position, (profile, injected))| {
                let rng = random::stream(self.config.seed, PURPOSE_TRAFFIC, position as u64);
                KeyStream::new(profile, injected.clone(), rng, &self.config)
            })
            .collect();
        let mut heads: Vec<Option<GenEvent>> = Vec::with_capacity(streams.len());
        let mut heap = BinaryHeap::with_capacity(streams.len());
        for (position, stream) in streams.iter_mut().enumerate() {
            let head = stream.next(&profiles[position], self.config.start_ms);
            if let Some(event) = &head {
                heap.push(Reverse((event.ts_ms, position)));
            }
            heads.push(head);
        }

        let mut counts = EventCounts::default();
        let mut last_benign_day: Vec<Option<i64>> = vec![None; profiles.len()];
        let mut last_judged_day: Vec<Option<i64>> = vec![None; profiles.len()];
        let mut first_call_ms: Vec<Option<i64>> = vec![None; profiles.len()];
        while let Some(Reverse((_, position))) = heap.pop() {
            let Some(event) = heads[position].take() else {
                continue;
            };
            let profile = &profiles[position];
            let access = AccessEvent {
                ts_ms: event.ts_ms,
                key_id: Cow::Borrowed(event.key_id.as_deref().unwrap_or(&profile.key_id)),
                ip: IpAddr::V4(event.ip),
                method: Cow::Borrowed(event.method),
                endpoint: Cow::Borrowed(&event.endpoint),
                status: event.status,
                user_agent: Cow::Borrowed(&event.user_agent),
                bytes_out: event.bytes_out,
                request_id: None,
            };
            visit(&access)?;
            counts.events += 1;
            let first_call = *first_call_ms[position].get_or_insert(event.ts_ms);
            let in_incident = self.plan.incident_windows[position]
                .iter()
                .any(|&(start, end)| (start..=end).contains(&event.ts_ms));
            if !in_incident {
                let day = (event.ts_ms - self.config.start_ms).div_euclid(DAY_MS);
                // A key's events arrive in time order, so a new day is a
                // day not counted yet.
                if last_benign_day[position] != Some(day) {
                    last_benign_day[position] = Some(day);
                    counts.benign_key_days += 1;
                }
                let learned = event.ts_ms >= first_call.saturating_add(LEARNING_PERIOD_MS);
                if learned && last_judged_day[position] != Some(day) {
                    last_judged_day[position] = Some(day);
                    counts.judged_key_days += 1;
                }
            }
            let next = streams[position].next(profile, self.config.start_ms);
            if let Some(next_event) = &next {
                heap.push(Reverse((next_event.ts_ms, position)));
            }
            heads[position] = next;
        }
        Ok(counts)
    }

    /// Writes the whole run into `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<GenerateSummary, GenerateError> {
        std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        let events_path = dir.join("events.jsonl");
        let file = File::create(&events_path).map_err(write_error(&events_path))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let counts = self.for_each_event(|event| {
            serde_json::to_writer(&mut writer, event).map_err(|source| GenerateError::Serialize {
                what: "an event",
                source,
            })?;
            writer.write_all(b"\n").map_err(write_error(&events_path))
        })?;
        writer.flush().map_err(write_error(&events_path))?;
        self.write_beside_events(dir, &counts)
    }

    /// Writes what goes beside the events (labels, benign cases, meta, the
    /// GeoIP databases) into `dir`, once the events are written.
    pub(crate) fn write_beside_events(
        &self,
        dir: &Path,
        counts: &EventCounts,
    ) -> Result<GenerateSummary, GenerateError> {
        self.write_labels(dir)?;
        self.write_meta(dir, counts)?;
        self.write_geoip_databases(dir)?;
        Ok(GenerateSummary {
            events: counts.events,
            incidents: self.labels().len(),
            benign_cases: self.benign_cases().len(),
            benign_key_days: counts.benign_key_days,
            judged_key_days: counts.judged_key_days,
        })
    }

    /// Writes `labels.jsonl` (the incidents) and `benign.jsonl` (the benign
    /// hard cases) into `dir`.
    pub fn write_labels(&self, dir: &Path) -> Result<(), GenerateError> {
        write_json_lines(&dir.join("labels.jsonl"), self.labels())?;
        write_json_lines(&dir.join("benign.jsonl"), self.benign_cases())
    }

    /// Writes `meta.json` for a run with `counts` (as
    /// [`Generation::for_each_event`] returns them) into `dir`; returns what
    /// it wrote.
    pub fn write_meta(&self, dir: &Path, counts: &EventCounts) -> Result<RunMeta, GenerateError> {
        let meta = RunMeta {
            keys: self.config.keys as u64,
            days: u64::from(self.config.days),
            seed: self.config.seed,
            start: format_ts(self.config.start_ms),
            end: format_ts(self.config.end_ms()),
            events: counts.events,
            benign_key_days: counts.benign_key_days,
            judged_key_days: Some(counts.judged_key_days),
            incidents: self.labels().len() as u64,
            benign_cases: self.benign_cases().len() as u64,
            generator: concat!("keywatch-generate/", env!("CARGO_PKG_VERSION")).to_string(),
        };
        let meta_path = dir.join("meta.json");
        let mut meta_text = serde_json::to_string_pretty(&meta).map_err(|source| GenerateError::Serialize {
            what: "meta.json",
            source,
        })?;
        meta_text.push('\n');
        std::fs::write(&meta_path, meta_text).map_err(write_error(&meta_path))?;
        Ok(meta)
    }

    /// The owners file of the run's keys (see [`owners_file`]).
    pub fn owners_file(&self) -> owners_file::OwnersFile {
        owners_file::owners_file(&self.config, &self.plan.profiles)
    }

    /// Writes `owners.csv` into `dir`; returns what it holds.
    pub fn write_owners(&self, dir: &Path) -> Result<owners_file::OwnersCounts, GenerateError> {
        let owners = self.owners_file();
        let path = dir.join("owners.csv");
        std::fs::write(&path, owners.csv()).map_err(write_error(&path))?;
        Ok(owners.counts)
    }

    /// Writes `geoip-city.mmdb` and `geoip-asn.mmdb` into `dir`; returns
    /// their bytes (City, ASN) for a reader in the same process.
    pub fn write_geoip_databases(&self, dir: &Path) -> Result<(Vec<u8>, Vec<u8>), GenerateError> {
        let city = self.city_database()?;
        let city_path = dir.join("geoip-city.mmdb");
        std::fs::write(&city_path, &city).map_err(write_error(&city_path))?;
        let asn = self.asn_database()?;
        let asn_path = dir.join("geoip-asn.mmdb");
        std::fs::write(&asn_path, &asn).map_err(write_error(&asn_path))?;
        Ok((city, asn))
    }
}

/// Maps an I/O error on `path` to [`GenerateError::Write`].
fn write_error(path: &Path) -> impl Fn(std::io::Error) -> GenerateError + use<> {
    let path = path.to_path_buf();
    move |source| GenerateError::Write {
        path: path.clone(),
        source,
    }
}

fn write_json_lines<T: serde::Serialize>(path: &Path, records: &[T]) -> Result<(), GenerateError> {
    let file = File::create(path).map_err(write_error(path))?;
    let mut writer = BufWriter::new(file);
    for record in records {
        serde_json::to_writer(&mut writer, record).map_err(|source| GenerateError::Serialize {
            what: "a label",
            source,
        })?;
        writer.write_all(b"\n").map_err(write_error(path))?;
    }
    writer.flush().map_err(write_error(path))
}

/// Runs the command.
pub fn run_cli(args: &GenerateArgs) -> Result<(), GenerateError> {
    let env_secret = crate::setup::fingerprint_secret_from_env();
    let (fingerprinter, _) = args
        .fingerprint
        .resolve(&crate::config::FingerprintConfig::default(), env_secret.as_deref())
        .map_err(|error| GenerateError::Fingerprint(error.to_string()))?;
    tracing::info!(mode = fingerprinter.mode_name(), "label fingerprints");
    let config = GenerateConfig::new(args.keys, args.days, args.seed, &args.start)?
        .with_fingerprinter(fingerprinter)
        .with_abandoned_keys(args.abandoned_keys);
    let started = std::time::Instant::now();
    let generation = Generation::new(config);
    let summary = match args.format {
        parquet::EventsFormat::Jsonl => generation.write_to(&args.out)?,
        parquet::EventsFormat::Parquet => generation.write_parquet_to(&args.out)?,
    };
    if args.owners {
        let owners = generation.write_owners(&args.out)?;
        println!(
            "wrote {}/owners.csv: {} keys owned ({} past expiry), {} with no owner",
            args.out.display(),
            owners.owned,
            owners.expired,
            owners.unowned
        );
    }
    tracing::info!(
        events = summary.events,
        incidents = summary.incidents,
        benign_cases = summary.benign_cases,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "generated run"
    );
    println!(
        "wrote {} events, {} incidents, {} benign hard cases ({} benign key-days, {} judged) to {} in {:.1}s",
        summary.events,
        summary.incidents,
        summary.benign_cases,
        summary.benign_key_days,
        summary.judged_key_days,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> GenerateConfig {
        GenerateConfig::new(plan::minimum_keys(), MINIMUM_DAYS, 3, DEFAULT_START).unwrap()
    }

    /// Labels carry the fingerprints a replay with the same secret gives,
    /// so `eval` can match them.
    #[test]
    fn labels_are_fingerprinted_with_the_given_secret() {
        let secret = b"generate-test-fingerprint-secret";
        let keyed = crate::event::Fingerprinter::keyed(secret, "test").unwrap();
        let generation = Generation::new(small().with_fingerprinter(keyed.clone()));
        assert!(!generation.labels().is_empty());
        for label in generation.labels() {
            assert_eq!(label.key_fingerprint, keyed.fingerprint(&label.key), "{}", label.id);
            assert_ne!(label.key_fingerprint, crate::event::key_fingerprint(&label.key));
        }
    }

    #[test]
    fn config_rejects_bad_input() {
        assert!(matches!(
            GenerateConfig::new(5, 10, 1, DEFAULT_START),
            Err(GenerateError::TooFewKeys { .. })
        ));
        assert!(matches!(
            GenerateConfig::new(100, 2, 1, DEFAULT_START),
            Err(GenerateError::TooFewDays { .. })
        ));
        assert!(matches!(
            GenerateConfig::new(100, 10, 1, "yesterday"),
            Err(GenerateError::BadStart(_))
        ));
    }

    #[test]
    fn events_come_out_in_time_order_with_every_incident_call() {
        let generation = Generation::new(small());
        let mut last = i64::MIN;
        let mut out_of_order = 0;
        let counts = generation
            .for_each_event(|event| {
                if event.ts_ms < last {
                    out_of_order += 1;
                }
                last = event.ts_ms;
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(out_of_order, 0);
        assert!(counts.events > 1000, "{counts:?}");
        assert!(counts.benign_key_days > 0);
        assert!(
            counts.judged_key_days > 0 && counts.judged_key_days < counts.benign_key_days,
            "the learning days are not judged: {counts:?}"
        );
        let injected: usize = generation.plan.injected.iter().map(Vec::len).sum();
        assert!(injected > 0 && (injected as u64) < counts.events);
    }
}
