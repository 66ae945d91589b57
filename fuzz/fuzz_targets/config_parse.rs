//! Fuzzes `Config::parse` (the TOML config of `run`, `replay` and
//! `check-config`) on arbitrary text: every outcome must be a valid config
//! or a `ConfigError` that names the file, never a panic.
#![no_main]

use keywatch::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.toml") {
        Ok(config) => {
            // What a run builds from a config must not panic either.
            let _ = config.input.decoder();
            if let Some(kafka) = &config.kafka {
                let _ = kafka.client_config();
                let _ = kafka.instance_name();
            }
        }
        Err(error) => assert!(error.to_string().contains("fuzz.toml"), "{error}"),
    }
});
