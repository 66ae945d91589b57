//! `keywatch check-config`: loads exactly what `run` and `replay` would load
//! (config with its `[kafka]` section, model, GeoIP databases) through
//! [`Setup::load`], without connecting to Kafka, and prints what it checked.
//! Operators run it before a deploy, so the summary never shows secrets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::setup::{EngineArgs, Setup, SetupError};

/// Options of `keywatch check-config`: the same files `run` and `replay` take.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// Configuration file; the defaults when absent.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Why the files would not let keywatch start.
#[derive(Debug, thiserror::Error)]
pub enum CheckConfigError {
    #[error(transparent)]
    Setup(#[from] SetupError),
}

/// Fragments of `[kafka.properties]` names whose values are never printed:
/// `sasl.password`, `ssl.key.password`, `sasl.oauthbearer.client.secret`, ...
const SECRET_NAME_PARTS: &[&str] = &["password", "secret", "key", "token"];

/// Loads and validates everything, then prints the summary to stdout.
pub fn run_cli(args: &CheckConfigArgs) -> Result<(), CheckConfigError> {
    let overrides = args.engine.overrides(args.config.clone());
    let setup = Setup::load(&overrides)?;
    // `--model` wins over the config's `model`, as in `Setup::load`.
    let model_path = args.engine.model.clone().or_else(|| setup.config.model.clone());
    print!("{}", summary(args.config.as_deref(), model_path.as_deref(), &setup));
    Ok(())
}

/// What was checked, one item a line; secret property values are hidden.
pub fn summary(config_path: Option<&Path>, model_path: Option<&Path>, setup: &Setup) -> String {
    let shown = |path: Option<&Path>, absent: &str| match path {
        Some(path) => path.display().to_string(),
        None => absent.to_string(),
    };
    let config = &setup.config;
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = writeln!(out, "config: {}", shown(config_path, "none (defaults)"));
    let _ = writeln!(
        out,
        "model: {} ({})",
        setup.model.label(),
        shown(model_path, "compiled-in default")
    );
    let _ = writeln!(out, "geoip city: {}", shown(config.geoip.city.as_deref(), "none"));
    let _ = writeln!(out, "geoip asn: {}", shown(config.geoip.asn.as_deref(), "none"));
    let format = clap::ValueEnum::to_possible_value(&config.input.format)
        .map(|value| value.get_name().to_string())
        .unwrap_or_default();
    let _ = writeln!(out, "input format: {format}");
    match &config.kafka {
        None => {
            let _ = writeln!(out, "kafka: no [kafka] section");
        }
        Some(kafka) => {
            let _ = writeln!(out, "kafka brokers: {}", kafka.brokers);
            let _ = writeln!(out, "kafka group id: {}", kafka.group_id);
            let _ = writeln!(out, "kafka input topics: {}", kafka.input_topics.join(", "));
            let mut outputs = vec![
                kafka.alerts_topic.as_str(),
                kafka.revocations_topic.as_str(),
                kafka.dead_letter_topic.as_str(),
                kafka.changelog_topic.as_str(),
            ];
            if !kafka.input_keyed_by_key_id {
                outputs.push(kafka.repartition_topic.as_str());
            }
            if let Some(replay_topic) = &kafka.replay_topic {
                outputs.push(replay_topic.as_str());
            }
            if kafka.alert_format.ocsf() {
                outputs.push(kafka.ocsf_alerts_topic.as_str());
            }
            let _ = writeln!(out, "kafka output topics: {}", outputs.join(", "));
            let _ = writeln!(out, "kafka alert format: {}", kafka.alert_format.as_str());
            let membership = match kafka.group_instance_id() {
                Some(id) => format!("static (group.instance.id {id})"),
                None => "dynamic (set instance_id for static membership)".to_string(),
            };
            let _ = writeln!(
                out,
                "kafka membership: {membership}, session timeout {}",
                humantime::format_duration(kafka.session_timeout)
            );
            let _ = writeln!(out, "kafka dead letters: at most {} bytes", kafka.dead_letter_max_bytes);
            let listen = |address: Option<std::net::SocketAddr>| address.map_or("off".to_string(), |a| a.to_string());
            let _ = writeln!(
                out,
                "kafka metrics: {}, health probes: {}",
                listen(kafka.metrics_listen),
                listen(kafka.health_listen)
            );
            for (name, value) in &kafka.properties {
                let value = if is_secret(name) { "(hidden)" } else { value.as_str() };
                let _ = writeln!(out, "kafka property {name}: {value}");
            }
        }
    }
    out.push_str("ok\n");
    out
}

fn is_secret(property_name: &str) -> bool {
    let name = property_name.to_ascii_lowercase();
    SECRET_NAME_PARTS.iter().any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_shows_membership_and_probes() {
        let config = crate::config::Config::parse(
            "[kafka]\nbrokers = \"b:9092\"\ninput_topics = [\"in\"]\ninstance_id = \"kw-1\"\n\
             health_listen = \"127.0.0.1:9465\"\n",
            "k.toml",
        )
        .unwrap();
        let setup = Setup {
            config,
            model: std::sync::Arc::new(crate::model::Model::default_model()),
            geo: std::sync::Arc::new(crate::enrich::GeoIp::empty()),
            fingerprint_source: crate::setup::FingerprintSource::ChosenUnkeyed,
        };
        let text = summary(None, None, &setup);
        assert!(
            text.contains("static (group.instance.id kw-1), session timeout 30s"),
            "{text}"
        );
        assert!(text.contains("health probes: 127.0.0.1:9465"), "{text}");
        assert!(text.contains("at most 65536 bytes"), "{text}");
    }

    #[test]
    fn secret_property_names_are_recognised() {
        assert!(is_secret("sasl.password"));
        assert!(is_secret("ssl.key.location"));
        assert!(is_secret("sasl.oauthbearer.client.SECRET"));
        assert!(is_secret("sasl.oauthbearer.token.endpoint.url"));
        assert!(!is_secret("security.protocol"));
        assert!(!is_secret("sasl.username"));
    }
}
