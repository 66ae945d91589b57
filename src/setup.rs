//! Loads what every command needs before it runs: the configuration, the
//! model and the GeoIP databases, with command-line overrides. Any problem
//! fails here, at start, naming the file.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::decode::Format;
use crate::enrich::{GeoError, GeoIp};
use crate::model::{Model, ModelError};

/// Why keywatch cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Geo(#[from] GeoError),
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
}

impl EngineArgs {
    /// These options over an optional config file.
    pub fn overrides(&self, config: Option<PathBuf>) -> Overrides {
        Overrides {
            config,
            model: self.model.clone(),
            geoip_city: self.geoip_city.clone(),
            geoip_asn: self.geoip_asn.clone(),
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
}

/// Everything loaded and validated.
pub struct Setup {
    pub config: Config,
    pub model: Arc<Model>,
    pub geo: Arc<GeoIp>,
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
        Ok(Setup {
            config,
            model: Arc::new(model),
            geo: Arc::new(geo),
        })
    }

    /// A fresh engine with this model and these GeoIP databases.
    pub fn engine(&self) -> crate::engine::Engine {
        crate::engine::Engine::new(Arc::clone(&self.model), Arc::clone(&self.geo))
    }
}
