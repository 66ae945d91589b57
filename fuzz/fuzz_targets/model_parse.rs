//! Fuzzes `Model::parse` (the detection model TOML) on arbitrary text:
//! every outcome must be a validated model or a `ModelError` that names the
//! file, never a panic. A model that passes validation must also give finite
//! derived rates, since the detectors divide by them.
#![no_main]

use keywatch::model::Model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Model::parse(text, "fuzz.toml") {
        Ok(model) => {
            let _ = model.label();
            assert!(model.rate.window_ms() > 0, "window of {} ms", model.rate.window_ms());
            for (name, value) in [
                ("window_floor", model.rate.window_floor()),
                ("window_alpha", model.rate.window_alpha()),
                ("level_alpha", model.rate.level_alpha()),
            ] {
                assert!(value.is_finite(), "rate.{name} is {value}");
            }
            let _ = model.rate.sustained_windows();
        }
        Err(error) => assert!(error.to_string().contains("fuzz.toml"), "{error}"),
    }
});
