//! One-core file replay against the bare JSON parse of the same file, in
//! the same run: `keywatch replay` (in this process, the library's own
//! `replay::run_cli`) and a reference that reads the same file line by line
//! and has serde_json parse each line into borrowed fields, nothing more.
//!
//! Rounds alternate reference and replay, so load from other work on the
//! machine falls on both; the fastest round of each is kept. Both CPU time
//! (this process's user + system time, what the core spent) and wall time
//! are reported, each as replay over reference. Pin it to one core:
//!
//! `taskset -c 1 cargo bench --bench replay_one_core -- EVENTS.jsonl [ROUNDS]`
//!
//! where EVENTS.jsonl comes from `keywatch generate` (its folder also holds
//! the `geoip-city.mmdb` and `geoip-asn.mmdb` the replay uses).

/// The binary's allocator, so that what is measured is what runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Deserialize;

/// The fields a canonical line carries, borrowed: the reference's parse.
#[derive(Deserialize)]
#[allow(dead_code)]
struct BareCanonical<'a> {
    ts: &'a str,
    key_id: &'a str,
    ip: &'a str,
    method: &'a str,
    endpoint: &'a str,
    status: u16,
    #[serde(default)]
    user_agent: &'a str,
    #[serde(default)]
    bytes_out: u64,
    request_id: Option<&'a str>,
}

#[derive(Parser)]
struct ReplayCommand {
    #[command(flatten)]
    args: keywatch::replay::ReplayArgs,
}

/// CPU time this process has used so far (user + system), from
/// `/proc/self/stat`, in clock ticks of 10 ms.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 14th and 15th fields of the whole line.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Reads `input` line by line and parses each line; returns lines parsed.
fn bare_parse(input: &Path) -> usize {
    let file = std::fs::File::open(input).expect("input opens");
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::with_capacity(1024);
    let mut parsed = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return parsed,
            Ok(_) => {}
            Err(error) => panic!("reading {}: {error}", input.display()),
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if serde_json::from_slice::<BareCanonical<'_>>(text).is_ok() {
            parsed += 1;
        }
    }
}

fn replay(input: &Path, out: &Path) {
    let folder = input.parent().unwrap_or(Path::new("."));
    let command = ReplayCommand::parse_from([
        "replay".as_ref(),
        "--input".as_ref(),
        input.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--format".as_ref(),
        "canonical".as_ref(),
        "--unkeyed-fingerprints".as_ref(),
        "--no-progress".as_ref(),
        "--geoip-city".as_ref(),
        folder.join("geoip-city.mmdb").as_os_str(),
        "--geoip-asn".as_ref(),
        folder.join("geoip-asn.mmdb").as_os_str(),
    ]);
    keywatch::replay::run_cli(&command.args).expect("replay runs");
}

/// Times `work`: (CPU time, wall time).
fn timed(work: impl FnOnce()) -> (Duration, Duration) {
    let (cpu, wall) = (cpu_time(), Instant::now());
    work();
    (cpu_time() - cpu, wall.elapsed())
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|arg| !arg.starts_with('-'));
    let Some(input) = args.next().map(PathBuf::from) else {
        eprintln!("usage: cargo bench --bench replay_one_core -- EVENTS.jsonl [ROUNDS]");
        return;
    };
    let rounds: usize = args.next().and_then(|text| text.parse().ok()).unwrap_or(3);
    let out = std::env::temp_dir().join(format!("keywatch-replay-one-core-{}", std::process::id()));
    let lines = bare_parse(&input);
    let mut best_bare = (Duration::MAX, Duration::MAX);
    let mut best_replay = (Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        let bare = timed(|| {
            std::hint::black_box(bare_parse(&input));
        });
        let replayed = timed(|| replay(&input, &out));
        eprintln!(
            "round {round}: reference {:.2}s cpu {:.2}s wall, replay {:.2}s cpu {:.2}s wall",
            bare.0.as_secs_f64(),
            bare.1.as_secs_f64(),
            replayed.0.as_secs_f64(),
            replayed.1.as_secs_f64()
        );
        best_bare = (best_bare.0.min(bare.0), best_bare.1.min(bare.1));
        best_replay = (best_replay.0.min(replayed.0), best_replay.1.min(replayed.1));
    }
    let rate = |time: Duration| lines as f64 / time.as_secs_f64() / 1e6;
    println!(
        "{} lines; best of {rounds} rounds\n  reference (read + serde_json, borrowed): {:.2} M lines/s cpu, {:.2} M/s wall\n  keywatch replay:                          {:.2} M events/s cpu, {:.2} M/s wall\n  replay / reference: {:.2}x cpu time, {:.2}x wall time",
        lines,
        rate(best_bare.0),
        rate(best_bare.1),
        rate(best_replay.0),
        rate(best_replay.1),
        best_replay.0.as_secs_f64() / best_bare.0.as_secs_f64(),
        best_replay.1.as_secs_f64() / best_bare.1.as_secs_f64(),
    );
    let _ = std::fs::remove_dir_all(&out);
}
