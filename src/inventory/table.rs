//! The inventory as a table for a person at a terminal: one row per key,
//! columns padded to their widest cell, long lists shortened.

use std::io::Write;

use super::report::{Flag, KeyRecord};
use crate::event::format_ts;

/// Countries shown before the rest are counted as `+n`.
const COUNTRIES_SHOWN: usize = 4;

/// Writes the keys as a table (with `stale`, the flags column lists the
/// reasons to retire them), then a count.
pub fn write_table(out: &mut impl Write, now_ms: i64, keys: &[&KeyRecord], stale: bool) -> std::io::Result<()> {
    let header = [
        "FINGERPRINT",
        "HINT",
        "OWNER",
        "FIRST SEEN",
        "LAST SEEN",
        "IDLE",
        "CALLS",
        "COUNTRIES",
        "NETS",
        "ENDPOINTS",
        if stale { "REASONS" } else { "FLAGS" },
    ];
    let rows: Vec<[String; 11]> = keys.iter().map(|key| row(key, stale)).collect();
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&header[..])?;
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(cells.as_slice())?;
    }
    let flagged = keys
        .iter()
        .filter(|key| {
            if stale {
                !key.stale_reasons().is_empty()
            } else {
                !key.flags.is_empty()
            }
        })
        .count();
    writeln!(
        out,
        "{} keys, {flagged} {} (as of {})",
        keys.len(),
        if stale { "to retire" } else { "flagged" },
        format_ts(now_ms)
    )
}

fn row(key: &KeyRecord, stale: bool) -> [String; 11] {
    let owner = match &key.owner {
        Some(owner) => match (&owner.owner, &owner.team) {
            (Some(name), Some(team)) => format!("{name}/{team}"),
            (Some(name), None) => name.clone(),
            (None, Some(team)) => format!("-/{team}"),
            (None, None) => "-".to_string(),
        },
        None => "-".to_string(),
    };
    let mut countries = key
        .countries
        .iter()
        .take(COUNTRIES_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if key.countries.len() > COUNTRIES_SHOWN {
        countries.push_str(&format!(",+{}", key.countries.len() - COUNTRIES_SHOWN));
    }
    let flags: Vec<Flag> = if stale { key.stale_reasons() } else { key.flags.clone() };
    let flags = flags.iter().map(|flag| flag.as_str()).collect::<Vec<_>>().join(",");
    [
        key.key_fingerprint.clone(),
        if key.key_hint.is_empty() {
            "-".to_string()
        } else {
            key.key_hint.clone()
        },
        owner,
        day(&key.first_seen),
        day(&key.last_seen),
        format!("{}d", key.idle_days),
        key.calls.to_string(),
        if countries.is_empty() {
            "-".to_string()
        } else {
            countries
        },
        key.networks.len().to_string(),
        key.endpoints.to_string(),
        if flags.is_empty() { "-".to_string() } else { flags },
    ]
}

/// The date of an RFC 3339 time.
fn day(ts: &str) -> String {
    ts.get(..10).unwrap_or(ts).to_string()
}
