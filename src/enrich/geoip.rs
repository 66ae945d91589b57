//! GeoIP City and ASN lookups from MaxMind-format files, with a per-ip cache.

use std::path::PathBuf;

/// Why a GeoIP database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot open geoip database {path}: {detail}")]
    Open { path: PathBuf, detail: String },
}

/// City and ASN readers plus a cache of answers.
pub struct GeoIp {}

/// A bounded per-ip cache in front of [`GeoIp`], owned by one engine.
pub struct GeoCache {}
