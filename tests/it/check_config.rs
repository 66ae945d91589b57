//! `keywatch check-config` run as a process: a valid config and model pass
//! with exit 0; an unknown field, a NaN, a negative number and a missing
//! GeoIP file each fail with exit 2 and a message naming the file and the
//! field (or path); a SASL password is never printed. `keywatch run`
//! refuses a config without a fingerprint secret unless unkeyed is chosen.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keywatch::model::DEFAULT_MODEL_TOML;

const KAFKA_SECTION: &str = r#"
[kafka]
brokers = "localhost:9092"
group_id = "check-group"
input_topics = ["access-logs"]

[kafka.properties]
"security.protocol" = "sasl_ssl"
"sasl.username" = "keywatch"
"sasl.password" = "hunter2-very-secret"
"#;

fn maxmind(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/maxmind")
        .join(name)
}

/// Writes a config (GeoIP fixtures, a model file beside it) and returns the
/// paths of the config and the model.
fn write_files(dir: &Path, extra_config: &str, model: &str) -> (PathBuf, PathBuf) {
    let model_path = dir.join("model.toml");
    std::fs::write(&model_path, model).expect("write model");
    let config_path = dir.join("keywatch.toml");
    let config = format!(
        "model = \"model.toml\"\n{extra_config}\n[geoip]\ncity = {:?}\nasn = {:?}\n{KAFKA_SECTION}",
        maxmind("GeoIP2-City-Test.mmdb"),
        maxmind("GeoLite2-ASN-Test.mmdb"),
    );
    std::fs::write(&config_path, config).expect("write config");
    (config_path, model_path)
}

fn check_config(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .arg("check-config")
        .args(args)
        .output()
        .expect("run keywatch check-config")
}

/// Writes the files into a fresh folder and checks them with `--config`
/// and `more_args`; the folder lives as long as the returned guard.
fn check_written(extra_config: &str, model: &str, more_args: &[&std::ffi::OsStr]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, _) = write_files(dir.path(), extra_config, model);
    let mut args = vec!["--config".as_ref(), config.as_os_str()];
    args.extend_from_slice(more_args);
    (check_config(&args), dir)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts exit 2 and that stderr names every one of `expected`.
fn assert_fails_naming(output: &Output, expected: &[&str]) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    for part in expected {
        assert!(stderr.contains(part), "`{part}` missing from: {stderr}");
    }
}

#[test]
fn valid_config_and_model_pass_and_print_the_model_label() {
    let model = DEFAULT_MODEL_TOML.replace("version = \"1\"", "version = \"checked-7\"");
    let (output, _dir) = check_written("", &model, &[]);
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    assert!(stdout.contains("default@checked-7"), "{stdout}");
    assert!(
        stdout.contains("check-group") && stdout.contains("access-logs"),
        "{stdout}"
    );
}

#[test]
fn sasl_password_is_never_printed() {
    let (output, _dir) = check_written("", DEFAULT_MODEL_TOML, &[]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", text(&output.stderr));
    let all = text(&output.stdout) + &text(&output.stderr);
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("sasl.password"), "the property is listed, hidden: {all}");
}

#[test]
fn unknown_model_field_names_file_and_field() {
    let model = DEFAULT_MODEL_TOML.replace("[client]", "[client]\nmax_clientz = 3");
    assert_ne!(model, DEFAULT_MODEL_TOML, "the section was found");
    let (output, _dir) = check_written("", &model, &[]);
    assert_fails_naming(&output, &["model.toml", "max_clientz"]);
}

#[test]
fn unknown_config_field_names_file_and_field() {
    let (output, _dir) = check_written("[input]\nbatch_sise = 10\n", DEFAULT_MODEL_TOML, &[]);
    assert_fails_naming(&output, &["keywatch.toml", "batch_sise"]);
}

#[test]
fn nan_in_the_model_names_file_and_field() {
    let model = DEFAULT_MODEL_TOML.replace("min_distance_km = 500.0", "min_distance_km = nan");
    assert_ne!(model, DEFAULT_MODEL_TOML, "the line was found");
    let (output, _dir) = check_written("", &model, &[]);
    assert_fails_naming(&output, &["model.toml", "geo.min_distance_km", "finite"]);
}

#[test]
fn negative_numbers_name_file_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = DEFAULT_MODEL_TOML.replace("min_hourly_rate = 2.0", "min_hourly_rate = -2.0");
    assert_ne!(model, DEFAULT_MODEL_TOML, "the line was found");
    let (_, model_path) = write_files(dir.path(), "", &model);
    // `--model` alone, without a config, is checked the same way.
    let output = check_config(&["--model".as_ref(), model_path.as_os_str()]);
    assert_fails_naming(&output, &["model.toml", "rate.min_hourly_rate", "negative"]);

    let (output, _dir) = check_written("[input]\nbatch_size = -1\n", DEFAULT_MODEL_TOML, &[]);
    assert_fails_naming(&output, &["keywatch.toml", "batch_size"]);
}

#[test]
fn missing_geoip_file_names_the_path() {
    let missing = std::env::temp_dir().join("keywatch-check-config-no-such-city.mmdb");
    let (output, _dir) = check_written("", DEFAULT_MODEL_TOML, &["--geoip-city".as_ref(), missing.as_os_str()]);
    assert_fails_naming(&output, &[&missing.display().to_string()]);
}

#[test]
fn run_refuses_to_start_without_a_fingerprint_secret_unless_unkeyed_is_chosen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (config, _) = write_files(dir.path(), "", DEFAULT_MODEL_TOML);
    let output = Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("KEYWATCH_FINGERPRINT_KEY")
        .env("NO_COLOR", "1")
        .output()
        .expect("keywatch run starts");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "no secret, no start: {stderr}");
    assert!(stderr.contains("no fingerprint secret"), "{stderr}");
    assert!(
        stderr.contains("fingerprint.unkeyed = true"),
        "it names the way out: {stderr}"
    );
}
