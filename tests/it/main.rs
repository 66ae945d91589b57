//! keywatch's integration tests, in one test binary: every test binary links
//! the whole crate and librdkafka, so one binary instead of one per file
//! saves most of the link time of `cargo test`. Each former file is a module
//! here and its tests keep their names under it (`replay::...`,
//! `kafka_mock::...`); `cargo test --test it kafka_mock` runs one of them.
//!
//! The Kafka tests share [`kafka_support`]; the broker scenarios of
//! [`kafka_scenarios`] run against the mock cluster (`kafka_mock`) and
//! against a real broker (`kafka_tansu`, skipped with a printed reason
//! unless `KEYWATCH_TEST_BROKERS` is set). Fixtures are files in
//! `tests/data/`. [`faults`] runs the real binary against a real broker
//! under faults (kill -9, a broker restart, a corrupt checkpoint, records
//! over the producer limit), also only with `KEYWATCH_TEST_BROKERS`.

mod check_config;
mod decode;
mod demo;
mod detection_quality;
mod event_time;
mod faults;
mod generate_eval;
mod geoip;
mod inventory;
mod kafka_clog;
mod kafka_compose;
mod kafka_mock;
mod kafka_ops;
mod kafka_owners;
mod kafka_replay;
mod kafka_scenarios;
mod kafka_support;
mod kafka_tansu;
mod module_layers;
mod ocsf;
mod parquet;
mod replay;
mod replay_threads;
mod revocation;
