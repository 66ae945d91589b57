//! The runtime configuration file (`--config FILE`): inputs, GeoIP
//! databases, limits and Kafka. Parsed with serde, then validated into typed
//! values; every error names the file, the field and the problem.

pub mod kafka;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::decode::{Decoder, FieldMapping, Format};
pub use kafka::KafkaConfig;

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("invalid config file {path}: field `{field}`: {problem}")]
    Invalid {
        path: String,
        field: String,
        problem: String,
    },
}

/// The whole configuration file. Every section is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub input: InputConfig,
    #[serde(default)]
    pub geoip: GeoIpConfig,
    /// Path of a model file; the compiled-in default model when absent.
    #[serde(default)]
    pub model: Option<PathBuf>,
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// How key ids become fingerprints in every output.
    #[serde(default)]
    pub fingerprint: FingerprintConfig,
    /// Owners file (CSV or JSON lines; see README) whose owners go on alerts
    /// and revocation requests, in `replay` (unless `--owners` is given),
    /// `run` (before the owners topic, `kafka.owners_topic`) and `keys`.
    #[serde(default)]
    pub owners_file: Option<PathBuf>,
}

/// The fingerprint secret (see [`crate::event::Fingerprinter`] for the
/// exact computation a revocation service repeats). Without `secret_file`
/// and without `unkeyed`, the secret is read from the environment variable
/// `KEYWATCH_FINGERPRINT_KEY`; when that is unset too, fingerprints are
/// unkeyed and a warning says so at start.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerprintConfig {
    /// File holding the HMAC-SHA-256 secret shared with the revocation
    /// service (at least 16 bytes; a trailing line end is ignored). Keep it
    /// readable by keywatch's user only.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Fingerprint with plain SHA-256 of the key id, on purpose: for tests,
    /// the demo and generated data. Anyone holding a candidate key id can
    /// confirm it against an unkeyed fingerprint, so never in production.
    #[serde(default)]
    pub unkeyed: bool,
    /// What [`crate::setup::Setup::load`] resolved from the fields above, the
    /// command line and the environment; unkeyed until then.
    #[serde(skip)]
    pub resolved: crate::event::Fingerprinter,
}

/// How input records are read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// `auto`, `canonical`, `cloudtrail`, `mapped` or `parquet` (file replay only).
    #[serde(default = "default_format")]
    pub format: Format,
    /// Field mapping for `format = "mapped"` (and the columns of `parquet`).
    #[serde(default)]
    pub mapping: Option<FieldMapping>,
    /// Records (lines, messages) longer than this many bytes are rejected.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Events per micro-batch handed to the engine.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Whole-document inputs (a CloudTrail `{"Records":[...]}` file or
    /// message) over this many bytes are rejected as `document_too_large`
    /// without being read further.
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: usize,
    /// Most bytes of input records read from a file into one batch.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            format: default_format(),
            mapping: None,
            max_record_bytes: default_max_record_bytes(),
            batch_size: default_batch_size(),
            max_document_bytes: default_max_document_bytes(),
            max_batch_bytes: default_max_batch_bytes(),
        }
    }
}

fn default_max_document_bytes() -> usize {
    crate::decode::DEFAULT_MAX_DOCUMENT_BYTES
}

fn default_max_batch_bytes() -> usize {
    crate::decode::DEFAULT_MAX_BATCH_BYTES
}

impl InputConfig {
    /// How the configured input is decoded: input files, and the Kafka
    /// input topics.
    pub fn decoder(&self) -> Decoder {
        Decoder::new(self.format.clone(), self.mapping.clone(), self.max_record_bytes)
            .with_byte_budgets(self.max_document_bytes, self.max_batch_bytes)
    }

    /// How the repartition topic is decoded: canonical events, as the
    /// repartition stage writes them.
    pub fn repartition_topic_decoder(&self) -> Decoder {
        Decoder::new(Format::Canonical, None, self.max_record_bytes)
            .with_byte_budgets(self.max_document_bytes, self.max_batch_bytes)
    }

    /// How the keyed topics (see [`KafkaConfig::keyed_topics`]) are decoded:
    /// as the input when it is keyed by key id, as the repartition topic
    /// otherwise.
    pub fn keyed_topics_decoder(&self, input_keyed_by_key_id: bool) -> Decoder {
        if input_keyed_by_key_id {
            self.decoder()
        } else {
            self.repartition_topic_decoder()
        }
    }
}

fn default_format() -> Format {
    Format::Auto
}

fn default_max_record_bytes() -> usize {
    1 << 20
}

fn default_batch_size() -> usize {
    4096
}

/// GeoIP databases in MaxMind DB format (GeoIP2/GeoLite2, DB-IP).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// City database (country, city, coordinates).
    #[serde(default)]
    pub city: Option<PathBuf>,
    /// ASN database (autonomous system number and organisation).
    #[serde(default)]
    pub asn: Option<PathBuf>,
    /// Entries in the per-ip lookup cache.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_cache_entries() -> usize {
    1 << 16
}

impl Config {
    /// Reads and validates a configuration file. Relative paths inside it
    /// are taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        if let Some(base) = path.parent() {
            config.resolve_paths(base);
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: origin.to_string(),
            detail: err.to_string(),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(path) = self.geoip.city.as_mut() {
            resolve(path);
        }
        if let Some(path) = self.geoip.asn.as_mut() {
            resolve(path);
        }
        if let Some(path) = self.model.as_mut() {
            resolve(path);
        }
        if let Some(path) = self.fingerprint.secret_file.as_mut() {
            resolve(path);
        }
        if let Some(path) = self.owners_file.as_mut() {
            resolve(path);
        }
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, problem: String| ConfigError::Invalid {
            path: origin.to_string(),
            field: field.to_string(),
            problem,
        };
        if self.input.batch_size == 0 {
            return Err(invalid("input.batch_size", "must be at least 1".into()));
        }
        if self.input.max_record_bytes < 256 {
            return Err(invalid("input.max_record_bytes", "must be at least 256".into()));
        }
        if self.input.max_document_bytes < self.input.max_record_bytes {
            return Err(invalid(
                "input.max_document_bytes",
                "must be at least input.max_record_bytes".into(),
            ));
        }
        if self.input.max_batch_bytes < self.input.max_record_bytes {
            return Err(invalid(
                "input.max_batch_bytes",
                "must be at least input.max_record_bytes".into(),
            ));
        }
        if self.input.format == Format::Mapped && self.input.mapping.is_none() {
            return Err(invalid("input.mapping", "format `mapped` needs a mapping".into()));
        }
        if self.fingerprint.unkeyed && self.fingerprint.secret_file.is_some() {
            return Err(invalid(
                "fingerprint.unkeyed",
                "cannot be combined with fingerprint.secret_file".into(),
            ));
        }
        if let Some(kafka) = &self.kafka {
            kafka
                .validate()
                .map_err(|(field, problem)| invalid(&format!("kafka.{field}"), problem))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_defaults() {
        let config = Config::parse("", "empty.toml").unwrap();
        assert_eq!(config.input.batch_size, 4096);
        assert_eq!(config.input.format, Format::Auto);
    }

    #[test]
    fn byte_budgets_must_hold_a_record() {
        let err = Config::parse("[input]\nmax_record_bytes = 4096\nmax_batch_bytes = 1000\n", "b.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("input.max_batch_bytes"), "{err}");
        let config = Config::parse("[input]\nmax_document_bytes = 1048576\n", "b.toml").expect("valid");
        assert_eq!(config.input.decoder().max_document_bytes, 1 << 20);
        let both = "[fingerprint]\nunkeyed = true\nsecret_file = \"s\"\n";
        let err = Config::parse(both, "f.toml").unwrap_err().to_string();
        assert!(err.contains("fingerprint.unkeyed"), "{err}");
    }

    #[test]
    fn errors_name_file_and_field() {
        let err = Config::parse("[input]\nbatch_size = 0\n", "c.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml") && err.contains("input.batch_size"), "{err}");
        let err = Config::parse("[input]\nbogus = 1\n", "d.toml").unwrap_err().to_string();
        assert!(err.contains("d.toml") && err.contains("bogus"), "{err}");
    }

    #[test]
    fn nested_unknown_fields_and_negative_numbers_are_rejected() {
        let nested = "[kafka]\nbrokers = \"b:9092\"\ninput_topics = [\"in\"]\nbogus = 1\n";
        let err = Config::parse(nested, "k.toml").unwrap_err().to_string();
        assert!(err.contains("k.toml") && err.contains("bogus"), "{err}");
        let err = Config::parse("[geoip]\ncache_entries = -5\n", "g.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("g.toml") && err.contains("cache_entries"), "{err}");
    }
}
