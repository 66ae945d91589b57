//! What a person sees of the demo: the live view while it runs (a status
//! line and alerts as they fire, 80 columns wide; plain lines when the
//! output is not a terminal) and the closing lines (eval's brief scorecard,
//! what was processed and read back, where the files are).

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::{DemoReport, Seen};
use crate::alert::{Alert, Severity};
use crate::eval::{BRIEF_WIDTH, fit_line, render_brief};
use crate::event::format_ts;

/// The counts the status line shows, read by the run at each tick.
pub(super) struct Status {
    /// Event time of the last produced event, epoch milliseconds.
    pub event_ts_ms: i64,
    /// Events the pipeline has taken so far.
    pub events: u64,
    pub keys: u64,
    /// Alerts and revocation requests read back so far.
    pub alerts: usize,
    pub revocations: usize,
    pub dead_letters: u64,
}

/// The live view.
pub(super) struct Display {
    bar: Option<ProgressBar>,
    run_start_ms: i64,
    run_end_ms: i64,
    last_events: u64,
    last_time: Instant,
    rate: f64,
    low_alerts: u64,
    last_plain_status: Instant,
}

impl Display {
    pub(super) fn new(terminal: bool, run_start_ms: i64, run_end_ms: i64) -> Display {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new((run_end_ms - run_start_ms).max(1) as u64);
            let style = ProgressStyle::with_template("{bar:12} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.println(format!(
                "{:<9} {:<8} {:<12} {:<18} {}",
                "time", "severity", "key", "detector", "evidence"
            ));
            bar
        });
        if bar.is_none() {
            println!("keywatch demo: streaming generated traffic through an in-process kafka");
        }
        Display {
            bar,
            run_start_ms,
            run_end_ms,
            last_events: 0,
            last_time: Instant::now(),
            rate: 0.0,
            low_alerts: 0,
            last_plain_status: Instant::now(),
        }
    }

    /// Shows an alert or revocation request as it fires; low alerts are
    /// only counted.
    pub(super) fn seen(&mut self, item: &Seen) {
        let line = match item {
            Seen::Alert(alert) if alert.severity == Severity::Low => {
                self.low_alerts += 1;
                return;
            }
            Seen::Alert(alert) => alert_line(alert),
            Seen::Revocation(request) => fit_line(
                &format!(
                    "{} REVOKE   {:<12} {}",
                    short_time(&request.ts),
                    request.key_hint,
                    request.reason
                ),
                BRIEF_WIDTH,
            ),
            Seen::DeadLetter(_) => return,
        };
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    pub(super) fn tick(&mut self, status: &Status) {
        let elapsed = self.last_time.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            self.rate = (status.events - self.last_events) as f64 / elapsed;
            self.last_events = status.events;
            self.last_time = Instant::now();
        }
        let alerts = status.alerts as u64;
        let line = format!(
            "{} {:>7.0} ev/s keys {} alerts {} (+{} low) revoke {} dlq {}",
            short_time(&format_ts(status.event_ts_ms)),
            self.rate,
            status.keys,
            alerts - self.low_alerts.min(alerts),
            self.low_alerts,
            status.revocations,
            status.dead_letters,
        );
        match &self.bar {
            Some(bar) => {
                let position = (status.event_ts_ms - self.run_start_ms).clamp(0, self.run_end_ms - self.run_start_ms);
                bar.set_position(position as u64);
                bar.set_message(line);
            }
            None => {
                if self.last_plain_status.elapsed() >= Duration::from_secs(5) {
                    println!("status  {line}");
                    self.last_plain_status = Instant::now();
                }
            }
        }
    }

    pub(super) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The closing lines: the brief scorecard, what was processed and read
/// back, and where the files are (`out`).
pub(super) fn print_closing(report: &DemoReport, out: &Path) {
    println!();
    print!("{}", render_brief(&report.scorecard));
    println!(
        "processed {} of {} records in {:.0}s ({} malformed: dead-letter topic)",
        report.processed_records, report.produced, report.wall_seconds, report.dead_letters
    );
    println!(
        "read back {} alerts, {} revocation requests, {} dead letters",
        report.alerts_on_topic, report.revocations_on_topic, report.dead_letters_on_topic
    );
    let out = out.display();
    println!("wrote {out}/alerts.jsonl, revocations.jsonl, rejected.jsonl, scorecard.json");
    println!("full table: keywatch eval --alerts {out}/alerts.jsonl --labels {out}/labels.jsonl");
}

/// `Mon 09:14` from an RFC 3339 time.
fn short_time(ts: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(ts) {
        Ok(time) => time.format("%a %H:%M").to_string(),
        Err(_) => ts.chars().take(9).collect(),
    }
}

fn alert_line(alert: &Alert) -> String {
    let detector: String = alert.detector.as_str().chars().take(18).collect();
    fit_line(
        &format!(
            "{} {:<8} {:<12} {:<18} {}",
            short_time(&alert.ts),
            alert.severity.as_str(),
            alert.key_hint,
            detector,
            alert.summary
        ),
        BRIEF_WIDTH,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_fit_eighty_columns() {
        let long = "x".repeat(200);
        assert_eq!(fit_line(&long, BRIEF_WIDTH).chars().count(), 80);
        assert_eq!(fit_line("short", BRIEF_WIDTH), "short");
        assert_eq!(short_time("2026-01-05T09:14:00.000Z"), "Mon 09:14");
    }
}
