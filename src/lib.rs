//! keywatch: catches stolen or misused API keys by how they are used.
//!
//! Pipeline parts, in the order an event flows through them:
//!
//! - [`source`] reads records from files or Kafka (the only input I/O);
//! - [`decode`] turns each record into canonical [`event::AccessEvent`]s,
//!   or rejects it with a reason; in outputs and snapshots a key goes by
//!   the names of [`key_text`] (its fingerprint and hint), never its raw id;
//! - [`engine::Engine`], synchronous and free of I/O and clocks, resolves
//!   each event with [`enrich`] (GeoIP, endpoint templates, client
//!   families), updates its key's [`baseline`] and asks the [`detect`]ors
//!   (named in the [`detector`] registry) for findings, which [`alert`]
//!   turns into alerts and revocation requests;
//! - [`fleet`] is the view across keys: per source network (key sprays) and
//!   for the whole organisation (the baseline new keys are judged on);
//! - [`sink`] writes outputs to files or Kafka (the only output I/O), in
//!   [`private_file`]s when they are files; alerts in keywatch's format, or
//!   mapped by [`ocsf`] to OCSF Detection Findings for a SOC;
//! - [`checkpoint`] lays out the engine state of a Kafka partition for the
//!   changelog and snapshot files, [`counts`] tallies what went through.
//!
//! Commands, each driving those parts, all through [`setup`] (the
//! configuration of [`config`], the [`model`] and the GeoIP databases):
//!
//! - [`replay`] drives the engine from files or a time range of Kafka;
//! - [`pipeline`] drives it from Kafka as a stream processor (`keywatch run`);
//!   both drive the very same engine, in event time, so replay equals live;
//! - [`generate`] makes labelled synthetic traffic and [`eval`] scores alerts
//!   against its labels;
//! - [`demo`] runs the whole system in one process;
//! - [`check_config`] validates everything a run would load, without running;
//! - [`inventory`] lists every key seen with its [`owners`] entry and the
//!   flags that say which keys to retire (`keywatch keys`).

pub mod alert;
pub mod allowlist;
pub mod baseline;
pub mod check_config;
pub mod checkpoint;
pub mod config;
pub mod counts;
pub mod decode;
pub mod demo;
pub mod detect;
pub mod detector;
pub mod engine;
pub mod enrich;
pub mod eval;
pub mod event;
pub mod feedback;
pub mod fleet;
pub mod generate;
pub mod inventory;
pub mod key_text;
pub mod model;
pub mod ocsf;
pub mod owners;
pub mod pipeline;
pub mod private_file;
pub mod replay;
pub mod revoke;
pub mod setup;
pub mod sink;
pub mod source;
