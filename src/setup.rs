//! Loads what every command needs before it runs: the configuration, the
//! model and the GeoIP databases, with command-line overrides. Any problem
//! fails here, at start, naming the file.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::decode::Format;
use crate::enrich::{GeoError, GeoIp};
use crate::event::{FINGERPRINT_KEY_ENV, FingerprintError, Fingerprinter};
use crate::model::{Model, ModelError};
use crate::owners::{OwnerBook, OwnersError};

/// Why keywatch cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Geo(#[from] GeoError),
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    #[error("--fingerprint-key-file and --unkeyed-fingerprints cannot be combined")]
    FingerprintConflict,
}

/// Command-line options every engine-driving command takes (`replay`,
/// `run`): the model and the GeoIP databases, each overriding the config.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EngineArgs {
    /// Model file (overrides the config; the default model when neither gives one).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// GeoIP City database (overrides the config).
    #[arg(long)]
    pub geoip_city: Option<PathBuf>,
    /// GeoIP ASN database (overrides the config).
    #[arg(long)]
    pub geoip_asn: Option<PathBuf>,
    #[command(flatten)]
    pub fingerprint: FingerprintArgs,
}

/// Command-line choice of the fingerprint secret, over the config's
/// `[fingerprint]` section and the `KEYWATCH_FINGERPRINT_KEY` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FingerprintArgs {
    /// File holding the HMAC-SHA-256 fingerprint secret shared with the
    /// revocation service (overrides the config and KEYWATCH_FINGERPRINT_KEY).
    #[arg(long)]
    pub fingerprint_key_file: Option<PathBuf>,
    /// Fingerprint key ids with plain SHA-256 (tests, demos, generated data).
    #[arg(long)]
    pub unkeyed_fingerprints: bool,
}

/// Where the fingerprint secret came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FingerprintSource {
    CommandLine,
    ConfigFile,
    Environment,
    /// `unkeyed` asked for on the command line or in the config.
    ChosenUnkeyed,
    /// No secret anywhere: unkeyed, with a warning.
    NoSecret,
}

impl FingerprintArgs {
    /// The fingerprinter these options, the config section and the
    /// environment (`env_secret`, the value of `KEYWATCH_FINGERPRINT_KEY`)
    /// choose: the command line first, then the config, then the
    /// environment, else unkeyed.
    pub fn resolve(
        &self,
        config: &crate::config::FingerprintConfig,
        env_secret: Option<&[u8]>,
    ) -> Result<(Fingerprinter, FingerprintSource), SetupError> {
        if self.unkeyed_fingerprints && self.fingerprint_key_file.is_some() {
            return Err(SetupError::FingerprintConflict);
        }
        if let Some(path) = &self.fingerprint_key_file {
            return Ok((Fingerprinter::from_file(path)?, FingerprintSource::CommandLine));
        }
        if self.unkeyed_fingerprints || config.unkeyed {
            return Ok((Fingerprinter::unkeyed(), FingerprintSource::ChosenUnkeyed));
        }
        if let Some(path) = &config.secret_file {
            return Ok((Fingerprinter::from_file(path)?, FingerprintSource::ConfigFile));
        }
        match env_secret.filter(|secret| !secret.is_empty()) {
            Some(secret) => Ok((
                Fingerprinter::keyed(secret, FINGERPRINT_KEY_ENV)?,
                FingerprintSource::Environment,
            )),
            None => Ok((Fingerprinter::unkeyed(), FingerprintSource::NoSecret)),
        }
    }
}

/// The value of `KEYWATCH_FINGERPRINT_KEY`, as bytes.
pub fn fingerprint_secret_from_env() -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStringExt;
    std::env::var_os(FINGERPRINT_KEY_ENV).map(OsStringExt::into_vec)
}

impl EngineArgs {
    /// These options over an optional config file.
    pub fn overrides(&self, config: Option<PathBuf>) -> Overrides {
        Overrides {
            config,
            model: self.model.clone(),
            geoip_city: self.geoip_city.clone(),
            geoip_asn: self.geoip_asn.clone(),
            fingerprint: self.fingerprint.clone(),
            ..Overrides::default()
        }
    }
}

/// Paths given on the command line; each overrides the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub model: Option<PathBuf>,
    pub geoip_city: Option<PathBuf>,
    pub geoip_asn: Option<PathBuf>,
    pub format: Option<Format>,
    pub batch_size: Option<usize>,
    pub fingerprint: FingerprintArgs,
}

/// Everything loaded and validated.
pub struct Setup {
    pub config: Config,
    pub model: Arc<Model>,
    pub geo: Arc<GeoIp>,
    /// Where the fingerprint secret came from (`run` refuses none).
    pub fingerprint_source: FingerprintSource,
}

impl Setup {
    pub fn load(overrides: &Overrides) -> Result<Setup, SetupError> {
        let mut config = match &overrides.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(path) = &overrides.geoip_city {
            config.geoip.city = Some(path.clone());
        }
        if let Some(path) = &overrides.geoip_asn {
            config.geoip.asn = Some(path.clone());
        }
        if let Some(format) = &overrides.format {
            config.input.format = format.clone();
        }
        if let Some(batch_size) = overrides.batch_size {
            config.input.batch_size = batch_size.max(1);
        }
        let model_path = overrides.model.clone().or_else(|| config.model.clone());
        let model = match &model_path {
            Some(path) => Model::load(path)?,
            None => Model::default_model(),
        };
        let geo = GeoIp::open(config.geoip.city.as_deref(), config.geoip.asn.as_deref())?;
        let env_secret = fingerprint_secret_from_env();
        let (fingerprinter, source) = overrides
            .fingerprint
            .resolve(&config.fingerprint, env_secret.as_deref())?;
        // The mode and where the secret came from, never the secret.
        if source == FingerprintSource::NoSecret {
            tracing::warn!(
                mode = fingerprinter.mode_name(),
                "no fingerprint secret (fingerprint.secret_file, --fingerprint-key-file or {FINGERPRINT_KEY_ENV}): \
                 fingerprints are unkeyed and a guessed key id can be confirmed from any alert"
            );
        } else {
            tracing::info!(mode = fingerprinter.mode_name(), source = ?source, "key fingerprints");
        }
        config.fingerprint.resolved = fingerprinter;
        Ok(Setup {
            config,
            model: Arc::new(model),
            geo: Arc::new(geo),
            fingerprint_source: source,
        })
    }

    /// A fresh engine with this model and these GeoIP databases.
    pub fn engine(&self) -> crate::engine::Engine {
        crate::engine::Engine::new(Arc::clone(&self.model), Arc::clone(&self.geo))
            .with_fingerprinter(self.fingerprinter().clone())
    }

    /// How key ids become fingerprints, as resolved at load.
    pub fn fingerprinter(&self) -> &Fingerprinter {
        &self.config.fingerprint.resolved
    }

    /// The owners book of `path` (a command-line option), else of the
    /// config's `owners_file`; empty when neither names one.
    pub fn owners(&self, path: Option<&std::path::Path>) -> Result<OwnerBook, OwnersError> {
        match path.or(self.config.owners_file.as_deref()) {
            Some(path) => {
                let book = OwnerBook::load(path, self.fingerprinter())?;
                tracing::info!(path = %path.display(), keys = book.len(), "owners file read");
                Ok(book)
            }
            None => Ok(OwnerBook::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FingerprintConfig;

    fn secret_file(name: &str, secret: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("keywatch-setup-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("secret");
        std::fs::write(&path, secret).expect("write secret");
        path
    }

    #[test]
    fn fingerprint_secret_precedence_is_cli_then_config_then_environment() {
        let cli_path = secret_file("cli", b"command-line-secret-0001");
        let config_path = secret_file("config", b"config-file-secret-00002");
        let keyed = |secret: &[u8]| Fingerprinter::keyed(secret, "test").expect("long").fingerprint("k");
        let config = FingerprintConfig {
            secret_file: Some(config_path.clone()),
            ..FingerprintConfig::default()
        };
        let cli = FingerprintArgs {
            fingerprint_key_file: Some(cli_path.clone()),
            unkeyed_fingerprints: false,
        };
        let (chosen, source) = cli.resolve(&config, Some(b"environment-secret-00003")).expect("valid");
        assert_eq!(
            (chosen.fingerprint("k"), source),
            (keyed(b"command-line-secret-0001"), FingerprintSource::CommandLine)
        );
        let (chosen, source) = FingerprintArgs::default()
            .resolve(&config, Some(b"environment-secret-00003"))
            .expect("valid");
        assert_eq!(
            (chosen.fingerprint("k"), source),
            (keyed(b"config-file-secret-00002"), FingerprintSource::ConfigFile)
        );
        let (chosen, source) = FingerprintArgs::default()
            .resolve(&FingerprintConfig::default(), Some(b"environment-secret-00003"))
            .expect("valid");
        assert_eq!(
            (chosen.fingerprint("k"), source),
            (keyed(b"environment-secret-00003"), FingerprintSource::Environment)
        );
        let (chosen, source) = FingerprintArgs::default()
            .resolve(&FingerprintConfig::default(), None)
            .expect("valid");
        assert_eq!((chosen.is_keyed(), source), (false, FingerprintSource::NoSecret));
        let unkeyed = FingerprintArgs {
            fingerprint_key_file: None,
            unkeyed_fingerprints: true,
        };
        let (chosen, source) = unkeyed
            .resolve(&config, Some(b"environment-secret-00003"))
            .expect("valid");
        assert_eq!((chosen.is_keyed(), source), (false, FingerprintSource::ChosenUnkeyed));
        let both = FingerprintArgs {
            fingerprint_key_file: Some(cli_path.clone()),
            unkeyed_fingerprints: true,
        };
        assert!(matches!(
            both.resolve(&config, None),
            Err(SetupError::FingerprintConflict)
        ));
        let short = FingerprintArgs::default().resolve(&FingerprintConfig::default(), Some(b"short"));
        assert!(matches!(
            short,
            Err(SetupError::Fingerprint(FingerprintError::TooShort { .. }))
        ));
        for path in [cli_path, config_path] {
            std::fs::remove_dir_all(path.parent().expect("a folder")).expect("clean up");
        }
    }
}
