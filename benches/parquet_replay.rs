//! File replay from Parquet against file replay from JSON lines, of the
//! same generated events, in the same run, on one core: events per second
//! of each and their ratio (issue 12's target: Parquet at least 3x JSON).
//! Rates are per CPU second of this process (user and system time), which
//! is the rate per core and holds on a machine busy with other work.
//! Both replays must give byte-identical alerts, revocations and digests,
//! checked here too. The input stage alone (reading and decoding every
//! event, no engine) is measured for both as well, to show what bounds the
//! replay ratio.
//!
//! `cargo bench --bench parquet_replay`; the run's size and the number of
//! rounds (alternating JSON and Parquet, best of each kept) come from
//! `KEYWATCH_BENCH_KEYS` (default 1000), `KEYWATCH_BENCH_DAYS` (default 5)
//! and `KEYWATCH_BENCH_ROUNDS` (default 3).

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use std::hint::black_box;

use keywatch::decode::{Decoded, FieldMapping, Format};
use keywatch::generate::{DEFAULT_START, GenerateConfig, Generation};
use keywatch::ocsf::AlertFormat;
use keywatch::replay::files::replay_files;
use keywatch::setup::{Overrides, Setup};
use keywatch::sink::file::OutputFiles;
use keywatch::source::file::RecordReader;
use keywatch::source::parquet::ParquetInput;

/// CPU seconds this process has used (user and system), from
/// /proc/self/stat: on a machine shared with other work, the rate per core
/// is events per CPU second, which wall time under contention hides.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) close with `)`.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|text| text.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here; the
    // clock tick is 100 Hz on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// One replay of `input` as `format` into `out`; returns events and seconds.
fn replay(setup: &Setup, input: &Path, format: Format, out: &Path) -> (u64, f64) {
    let _ = std::fs::remove_dir_all(out);
    let owners = setup.owners(None).expect("no owners file");
    let mut engine = setup.engine();
    let mut outputs = OutputFiles::create_with_format(out, AlertFormat::Native)
        .expect("output folder")
        .with_gate(
            keywatch::revoke::RevocationGate::new(&setup.model.policy, &setup.model.label()),
            owners.clone(),
        );
    let mut decoder = setup.config.input.decoder();
    decoder.format = format;
    let stop = AtomicBool::new(false);
    let started = cpu_seconds();
    let summary = replay_files(
        &[input.to_path_buf()],
        &decoder,
        &mut engine,
        setup.config.input.batch_size,
        &mut outputs,
        None,
        &stop,
        &owners,
    )
    .expect("replay");
    (summary.counts.events, cpu_seconds() - started)
}

/// Reads and decodes every event of `input` without the engine; returns
/// events and seconds.
fn decode_only(setup: &Setup, input: &Path, format: Format) -> (u64, f64) {
    let mut decoder = setup.config.input.decoder();
    decoder.format = format.clone();
    let started = cpu_seconds();
    let mut events = 0u64;
    if format == Format::Parquet {
        let mut reader = ParquetInput::open(input, &FieldMapping::default()).expect("parquet input");
        while let Some(batch) = reader.next_batch().expect("batch") {
            let view = reader.plan().view(&batch).expect("columns");
            for row in 0..view.rows() {
                if let Ok(event) = view.event(row) {
                    black_box(&event);
                    events += 1;
                }
            }
        }
    } else {
        let mut reader = RecordReader::open(input, decoder.max_record_bytes).expect("json input");
        let (mut buffer, mut spans) = (Vec::new(), Vec::new());
        while reader.next_batch(&mut buffer, &mut spans, 4096).expect("batch") {
            let mut scratch = Vec::new();
            for span in &spans {
                for item in decoder.decode_record(&buffer[span.range.clone()], &mut scratch) {
                    if let Decoded::Event(event) = item {
                        black_box(&event);
                        events += 1;
                    }
                }
            }
        }
    }
    (events, cpu_seconds() - started)
}

fn main() {
    // Run as a test (`cargo test --all-targets`, no `--bench`): a small
    // input, one round; the outputs are still compared.
    let benching = std::env::args().any(|arg| arg == "--bench");
    let keys = setting("KEYWATCH_BENCH_KEYS", if benching { 1000 } else { 60 }) as usize;
    let days = setting("KEYWATCH_BENCH_DAYS", 5) as u32;
    let rounds = setting("KEYWATCH_BENCH_ROUNDS", if benching { 3 } else { 1 }).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let run = dir.path();
    let generation = Generation::new(GenerateConfig::new(keys, days, 1, DEFAULT_START).expect("run size"));
    generation.write_to(run).expect("events.jsonl");
    generation.write_parquet_to(run).expect("events.parquet");
    let size = |name: &str| std::fs::metadata(run.join(name)).map(|meta| meta.len()).unwrap_or(0);
    println!(
        "run: {keys} keys, {days} days; events.jsonl {:.1} MB, events.parquet {:.1} MB",
        size("events.jsonl") as f64 / 1e6,
        size("events.parquet") as f64 / 1e6
    );
    let setup = Setup::load(&Overrides {
        geoip_city: Some(run.join("geoip-city.mmdb")),
        geoip_asn: Some(run.join("geoip-asn.mmdb")),
        ..Overrides::default()
    })
    .expect("setup");

    let inputs: [(&str, PathBuf, Format); 2] = [
        ("json lines (auto)", run.join("events.jsonl"), Format::Auto),
        ("parquet", run.join("events.parquet"), Format::Parquet),
    ];
    let mut best_decode = [f64::INFINITY; 2];
    let mut best = [f64::INFINITY; 2];
    let mut events = [0u64; 2];
    for round in 0..rounds {
        for (index, (name, input, format)) in inputs.iter().enumerate() {
            let (decoded, decode_seconds) = decode_only(&setup, input, format.clone());
            println!(
                "round {round}: {name:<18} input stage alone: {decoded} events in {decode_seconds:.2} CPU s = {:.3} M events/CPU s",
                decoded as f64 / decode_seconds / 1e6
            );
            best_decode[index] = best_decode[index].min(decode_seconds);
            let out = run.join(format!("out-{index}"));
            let (count, seconds) = replay(&setup, input, format.clone(), &out);
            println!(
                "round {round}: {name:<18} {count} events in {seconds:.2} CPU s = {:.3} M events/CPU s",
                count as f64 / seconds / 1e6
            );
            events[index] = count;
            best[index] = best[index].min(seconds);
        }
    }
    for name in [
        "alerts.jsonl",
        "revocations.jsonl",
        "revocations.shadow.jsonl",
        "digests.jsonl",
    ] {
        let json = std::fs::read(run.join("out-0").join(name)).expect("json output");
        let parquet = std::fs::read(run.join("out-1").join(name)).expect("parquet output");
        assert!(
            json == parquet,
            "{name} differs between the JSON and the Parquet replay"
        );
    }
    assert_eq!(events[0], events[1], "both replays judge every event");
    let rate = |index: usize| events[index] as f64 / best[index];
    let decode_rate = |index: usize| events[index] as f64 / best_decode[index];
    println!(
        "best of {rounds}, input stage alone: json {:.3} M events/CPU s, parquet {:.3} M events/CPU s, parquet/json = {:.2}x",
        decode_rate(0) / 1e6,
        decode_rate(1) / 1e6,
        decode_rate(1) / decode_rate(0)
    );
    println!(
        "best of {rounds}, replay: json {:.3} M events/CPU s, parquet {:.3} M events/CPU s, parquet/json = {:.2}x (outputs identical)",
        rate(0) / 1e6,
        rate(1) / 1e6,
        rate(1) / rate(0)
    );
}
