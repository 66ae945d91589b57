//! File replay on one thread against `--threads N`, in the same run: a
//! generated canonical JSON file (2,000 keys with attacks; 2,000,000 events,
//! `KEYWATCH_BENCH_EVENTS` to change) is replayed in process by
//! `replay_files` (the reference) and by `replay_files_parallel`, by turns,
//! `KEYWATCH_BENCH_ROUNDS` times (default 3); the outputs must be byte for
//! byte the same.
//!
//! Prints, per thread count, the median wall time and its ratio to one
//! thread, and the CPU time of the judging thread and of the process. On a
//! machine shared with other work the wall ratio is what the load left; the
//! CPU figures say what the driver would reach on idle cores: one thread's
//! CPU over the busiest of (the judging thread's CPU, the process's CPU
//! shared over the cores).
//!
//! `cargo bench --bench replay_threads` (`-- 2 3` for other thread counts).

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use keywatch::config::Config;
use keywatch::engine::Engine;
use keywatch::enrich::GeoIp;
use keywatch::generate::{GenerateConfig, Generation};
use keywatch::model::Model;
use keywatch::ocsf::AlertFormat;
use keywatch::owners::OwnerBook;
use keywatch::replay::{files, parallel};
use keywatch::revoke::RevocationGate;
use keywatch::sink::file::OutputFiles;

/// CPU seconds (user and system) of a `/proc` stat file.
fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let after_name = text.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of the file (utime, stime), in ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

struct Measure {
    wall: f64,
    judging_cpu: f64,
    process_cpu: f64,
}

fn write_input(dir: &Path, events: usize) -> (PathBuf, Arc<GeoIp>) {
    let generation =
        Generation::new(GenerateConfig::new(2_000, 30, 1, "2026-01-05T00:00:00Z").expect("a valid generation config"));
    let path = dir.join("events.jsonl");
    let mut writer = std::io::BufWriter::new(std::fs::File::create(&path).expect("input file"));
    let mut written = 0usize;
    let _ = generation.for_each_event(|event| {
        if written == events {
            return Err(());
        }
        serde_json::to_writer(&mut writer, event).map_err(|_| ())?;
        writer.write_all(b"\n").map_err(|_| ())?;
        written += 1;
        Ok(())
    });
    writer.flush().expect("input written");
    let geo = GeoIp::from_bytes(
        Some(generation.city_database().expect("city database")),
        Some(generation.asn_database().expect("asn database")),
    )
    .expect("generated databases load");
    (path, Arc::new(geo))
}

fn replay(input: &Path, geo: &Arc<GeoIp>, out: &Path, threads: usize) -> Measure {
    let model = Arc::new(Model::default_model());
    let config = Config::default();
    let mut engine = Engine::new(Arc::clone(&model), Arc::clone(geo));
    let mut outputs = OutputFiles::create_with_format(out, AlertFormat::Native)
        .expect("output folder")
        .with_gate(RevocationGate::new(&model.policy, &model.label()), OwnerBook::default());
    let owners = OwnerBook::default();
    let stop = AtomicBool::new(false);
    let inputs = [input.to_path_buf()];
    let started = Instant::now();
    let judging_before = cpu_seconds("/proc/thread-self/stat");
    let process_before = cpu_seconds("/proc/self/stat");
    let decoder = config.input.decoder();
    let batch_size = config.input.batch_size;
    let summary = if threads == 1 {
        files::replay_files(
            &inputs,
            &decoder,
            &mut engine,
            batch_size,
            &mut outputs,
            None,
            &stop,
            &owners,
        )
    } else {
        parallel::replay_files_parallel(
            &inputs,
            &decoder,
            &mut engine,
            batch_size,
            threads,
            &mut outputs,
            None,
            &stop,
            &owners,
        )
    }
    .expect("replay runs");
    keywatch::replay::write_summary(out, &summary).expect("summary written");
    Measure {
        wall: started.elapsed().as_secs_f64(),
        judging_cpu: cpu_seconds("/proc/thread-self/stat") - judging_before,
        process_cpu: cpu_seconds("/proc/self/stat") - process_before,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // Run as a test (`cargo test --all-targets`, no `--bench`): a small
    // input, one round; the outputs are still compared byte for byte.
    let benching = std::env::args().any(|arg| arg == "--bench");
    let events: usize = std::env::var("KEYWATCH_BENCH_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(if benching { 2_000_000 } else { 20_000 });
    let rounds: usize = std::env::var("KEYWATCH_BENCH_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(if benching { 3 } else { 1 });
    let mut counts: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .filter(|count| *count > 1)
        .collect();
    if counts.is_empty() {
        counts.push(2);
    }
    let dir = tempfile::tempdir().expect("scratch folder");
    let (input, geo) = write_input(dir.path(), events);
    let size = std::fs::metadata(&input).map_or(0, |meta| meta.len());
    println!(
        "replay_threads: {events} events, {} MB, {} cores, {rounds} rounds",
        size >> 20,
        parallel::default_threads()
    );
    let mut all = vec![1];
    all.extend(&counts);
    let mut measures: Vec<Vec<Measure>> = all.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (slot, &threads) in all.iter().enumerate() {
            let out = dir.path().join(format!("out-{threads}"));
            measures[slot].push(replay(&input, &geo, &out, threads));
        }
        for &threads in &counts {
            for file in [
                "alerts.jsonl",
                "revocations.jsonl",
                "digests.jsonl",
                "rejected.jsonl",
                "summary.json",
            ] {
                let one = std::fs::read(dir.path().join("out-1").join(file)).unwrap_or_default();
                let many = std::fs::read(dir.path().join(format!("out-{threads}")).join(file)).unwrap_or_default();
                assert!(one == many, "{file} differs at {threads} threads");
            }
        }
    }
    let reference_wall = median(measures[0].iter().map(|m| m.wall).collect());
    let reference_cpu = median(measures[0].iter().map(|m| m.process_cpu).collect());
    let cores = parallel::default_threads() as f64;
    for (slot, &threads) in all.iter().enumerate() {
        let wall = median(measures[slot].iter().map(|m| m.wall).collect());
        let judging = median(measures[slot].iter().map(|m| m.judging_cpu).collect());
        let process = median(measures[slot].iter().map(|m| m.process_cpu).collect());
        let busiest = judging.max(process / cores.min(threads as f64));
        println!(
            "threads {threads}: wall {wall:.2}s ({:.2}x, {:.2} M events/s), judging thread {judging:.2}s cpu, process {process:.2}s cpu, idle-core bound {:.2}x",
            reference_wall / wall,
            events as f64 / wall / 1e6,
            reference_cpu / busiest,
        );
    }
    println!("outputs byte-identical to one thread: yes");
}
