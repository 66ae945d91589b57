//! Who owns each key: the owners file (CSV or JSON lines for replay, a
//! compacted topic for `run`) mapping a key id or fingerprint to owner,
//! team, purpose, criticality and expiry.
//!
//! Entries naming a raw key id are fingerprinted at load time with the
//! run's fingerprinter and the id is dropped: the book holds fingerprints
//! only, so nothing derived from it can leak a key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::event::{Fingerprinter, parse_ts};

/// Why an owners file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OwnersError {
    #[error("cannot read owners file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("owners file {path}, line {line}: {reason}")]
    Entry { path: String, line: u64, reason: String },
}

/// How much a key's loss or revocation would hurt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Criticality {
    Low,
    #[default]
    Medium,
    High,
    /// Production-critical: revoking it is an outage.
    Critical,
}

/// One line of the owners file as written. Exactly one of `key_id` and
/// `key_fingerprint` names the key.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OwnerEntry {
    #[serde(default)]
    pub key_id: Option<String>,
    #[serde(default)]
    pub key_fingerprint: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    #[serde(default)]
    pub criticality: Option<Criticality>,
    /// `YYYY-MM-DD` (the end of that UTC day) or an RFC 3339 time.
    #[serde(default)]
    pub expires: Option<String>,
    /// How many endpoint templates the key's granted scope covers, when
    /// known: `keywatch keys` flags a key that uses only a small share of
    /// them as over-privileged.
    #[serde(default)]
    pub scope_endpoints: Option<u32>,
}

/// What is known about one key's owner, as carried on alerts and
/// revocation requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default)]
    pub criticality: Criticality,
    /// Event time (ms) after which the key should no longer be in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// Endpoint templates the key's granted scope covers, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_endpoints: Option<u32>,
}

impl Owner {
    /// Whether anyone answers for the key: a named owner or team.
    pub fn is_named(&self) -> bool {
        self.owner.is_some() || self.team.is_some()
    }
}

/// The owners book of a running pipeline: read at start, then kept up to
/// date from the owners topic while outputs are being attached to.
pub type SharedOwners = Arc<RwLock<OwnerBook>>;

/// Owners by key fingerprint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnerBook {
    by_fingerprint: BTreeMap<String, Owner>,
}

impl OwnerBook {
    /// Reads a CSV file (`.csv`, with a header row naming the fields of
    /// [`OwnerEntry`]) or JSON lines (any other name).
    pub fn load(path: &Path, fingerprinter: &Fingerprinter) -> Result<OwnerBook, OwnersError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| OwnersError::Read {
            path: name.clone(),
            source,
        })?;
        let is_csv = path
            .extension()
            .is_some_and(|extension| extension.eq_ignore_ascii_case("csv"));
        let mut book = OwnerBook::default();
        let entry_error = |line: u64, reason: String| OwnersError::Entry {
            path: name.clone(),
            line,
            reason,
        };
        if is_csv {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(text.as_bytes());
            for (index, record) in reader.deserialize::<OwnerEntry>().enumerate() {
                // Line numbers count the header.
                let line = index as u64 + 2;
                let entry = record.map_err(|err| entry_error(line, err.to_string()))?;
                book.insert(entry, fingerprinter)
                    .map_err(|reason| entry_error(line, reason))?;
            }
        } else {
            for (index, text_line) in text.lines().enumerate() {
                let line = index as u64 + 1;
                if text_line.trim().is_empty() {
                    continue;
                }
                let entry: OwnerEntry =
                    serde_json::from_str(text_line).map_err(|err| entry_error(line, err.to_string()))?;
                book.insert(entry, fingerprinter)
                    .map_err(|reason| entry_error(line, reason))?;
            }
        }
        Ok(book)
    }

    /// Adds or replaces the entry's key; a later entry for the same key wins.
    pub fn insert(&mut self, entry: OwnerEntry, fingerprinter: &Fingerprinter) -> Result<String, String> {
        let fingerprint = entry_fingerprint(&entry, fingerprinter)?;
        let expires_ms = match entry.expires.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
            None => None,
            Some(text) => Some(parse_expiry(text).ok_or_else(|| format!("expires `{text}` is not a date"))?),
        };
        let owner = Owner {
            owner: non_empty(entry.owner),
            team: non_empty(entry.team),
            purpose: non_empty(entry.purpose),
            criticality: entry.criticality.unwrap_or_default(),
            expires_ms,
            scope_endpoints: entry.scope_endpoints,
        };
        self.by_fingerprint.insert(fingerprint.clone(), owner);
        Ok(fingerprint)
    }

    /// Forgets a key (a tombstone on the owners topic).
    pub fn remove(&mut self, fingerprint: &str) {
        self.by_fingerprint.remove(fingerprint);
    }

    /// The owner of the key with this fingerprint, if known.
    pub fn get(&self, fingerprint: &str) -> Option<&Owner> {
        self.by_fingerprint.get(fingerprint)
    }

    /// Every known key, by fingerprint, in fingerprint order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Owner)> {
        self.by_fingerprint
            .iter()
            .map(|(fingerprint, owner)| (fingerprint.as_str(), owner))
    }

    pub fn len(&self) -> usize {
        self.by_fingerprint.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_fingerprint.is_empty()
    }

    /// Applies one record of the compacted owners topic: the key is the
    /// key's fingerprint, the value an entry as in the JSON lines file
    /// (which may leave out `key_fingerprint`), an empty or absent value a
    /// tombstone. Returns the fingerprint changed.
    pub fn apply_topic_record(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        fingerprinter: &Fingerprinter,
    ) -> Result<String, String> {
        let fingerprint = std::str::from_utf8(key)
            .map(str::trim)
            .ok()
            .filter(|fingerprint| fingerprint.starts_with("kf_"))
            .ok_or_else(|| "the record key is not a key fingerprint (`kf_...`)".to_string())?
            .to_string();
        let value = value.unwrap_or_default();
        if value.iter().all(u8::is_ascii_whitespace) {
            self.remove(&fingerprint);
            return Ok(fingerprint);
        }
        let mut entry: OwnerEntry = serde_json::from_slice(value).map_err(|err| err.to_string())?;
        if entry.key_id.is_some() {
            // A raw key id has no place on a topic many services read.
            return Err("entries on the owners topic name the key by its fingerprint only".to_string());
        }
        match entry.key_fingerprint.as_deref().map(str::trim) {
            None | Some("") => entry.key_fingerprint = Some(fingerprint.clone()),
            Some(named) if named == fingerprint => {}
            Some(_) => return Err("the value names another key_fingerprint than the record key".to_string()),
        }
        self.insert(entry, fingerprinter)
    }
}

/// The fingerprint an entry names: given, or made from its key id.
pub fn entry_fingerprint(entry: &OwnerEntry, fingerprinter: &Fingerprinter) -> Result<String, String> {
    let key_id = entry.key_id.as_deref().map(str::trim).filter(|id| !id.is_empty());
    let fingerprint = entry
        .key_fingerprint
        .as_deref()
        .map(str::trim)
        .filter(|fingerprint| !fingerprint.is_empty());
    match (key_id, fingerprint) {
        (Some(key_id), None) => Ok(fingerprinter.fingerprint(crate::decode::canonical_key_id(key_id))),
        (None, Some(fingerprint)) if fingerprint.starts_with("kf_") => Ok(fingerprint.to_string()),
        (None, Some(_)) => Err("key_fingerprint must start with `kf_`".to_string()),
        (Some(_), Some(_)) => Err("give key_id or key_fingerprint, not both".to_string()),
        (None, None) => Err("no key_id or key_fingerprint".to_string()),
    }
}

fn non_empty(text: Option<String>) -> Option<String> {
    text.map(|text| text.trim().to_string()).filter(|text| !text.is_empty())
}

/// `YYYY-MM-DD` is the end of that UTC day; otherwise RFC 3339.
fn parse_expiry(text: &str) -> Option<i64> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let next = day.succ_opt()?.and_hms_opt(0, 0, 0)?.and_utc();
        return Some(next.timestamp_millis() - 1);
    }
    parse_ts(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn csv_and_json_lines_give_the_same_book_keyed_by_fingerprint() {
        let fingerprinter = Fingerprinter::unkeyed();
        let (_csv_dir, csv_path) = write(
            "owners.csv",
            "key_id,owner,team,purpose,criticality,expires\n\
             sk_live_alpha_0000000000000001, alice , payments,billing,critical,2027-01-31\n",
        );
        let (_json_dir, json_path) = write(
            "owners.jsonl",
            r#"{"key_id":"sk_live_alpha_0000000000000001","owner":"alice","team":"payments","purpose":"billing","criticality":"critical","expires":"2027-01-31"}"#,
        );
        let from_csv = OwnerBook::load(&csv_path, &fingerprinter).unwrap();
        let from_json = OwnerBook::load(&json_path, &fingerprinter).unwrap();
        assert_eq!(from_csv, from_json);
        let fingerprint = fingerprinter.fingerprint("sk_live_alpha_0000000000000001");
        let owner = from_csv.get(&fingerprint).expect("the key is found by its fingerprint");
        assert_eq!(owner.owner.as_deref(), Some("alice"));
        assert_eq!(owner.criticality, Criticality::Critical);
        assert_eq!(owner.expires_ms, parse_ts("2027-01-31T23:59:59.999Z"));
    }

    #[test]
    fn a_bad_line_is_named_and_no_raw_key_is_kept() {
        let fingerprinter = Fingerprinter::unkeyed();
        let (_dir, path) = write(
            "owners.jsonl",
            "{\"key_id\":\"k1\",\"owner\":\"a\"}\n{\"owner\":\"b\"}\n",
        );
        let err = OwnerBook::load(&path, &fingerprinter).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        let (_dir, path) = write("owners.jsonl", "{\"key_id\":\"k1\",\"owner\":\"a\"}\n");
        let book = OwnerBook::load(&path, &fingerprinter).unwrap();
        assert!(book.iter().all(|(fingerprint, _)| fingerprint.starts_with("kf_")));
        assert!(!format!("{book:?}").contains("\"k1\""));
    }
}
