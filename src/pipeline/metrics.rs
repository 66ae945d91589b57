//! Prometheus metrics of `keywatch run`, served on `kafka.metrics_listen`:
//! the [`Progress`] counters, published once a second, and each stage's
//! committed offsets and assigned partitions. Labels name topics and
//! partitions, never keys.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use tokio_util::sync::CancellationToken;

use super::stage::Progress;

/// How often counters are copied to the exporter.
const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the HTTP listener on the current runtime. The recorder is
/// process-wide, so only the first call in a process succeeds.
pub fn install(listen: SocketAddr) -> Result<(), String> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()
        .map_err(|err| err.to_string())?;
    metrics::describe_counter!("keywatch_records_total", "Input records taken by the stages");
    metrics::describe_counter!("keywatch_events_total", "Events given to the engines");
    metrics::describe_counter!("keywatch_alerts_total", "Alerts produced");
    metrics::describe_counter!("keywatch_revocations_total", "Revocation requests produced");
    metrics::describe_counter!("keywatch_dead_letters_total", "Records sent to the dead-letter topic");
    metrics::describe_counter!("keywatch_no_key_total", "Events without an API key, skipped");
    metrics::describe_counter!(
        "keywatch_repartitioned_total",
        "Events written to the repartition topic"
    );
    metrics::describe_counter!("keywatch_batches_total", "Micro-batches processed");
    metrics::describe_counter!(
        "keywatch_checkpoints_total",
        "Partition checkpoints written to the changelog"
    );
    metrics::describe_gauge!(
        "keywatch_committed_offset",
        "Committed next offset per stage and partition"
    );
    metrics::describe_gauge!(
        "keywatch_assigned_partitions",
        "Partitions owned by this instance per stage"
    );
    Ok(())
}

/// Copies `progress` to the metrics until `cancel` fires, then once more.
pub async fn publish(progress: Arc<Progress>, cancel: CancellationToken) {
    loop {
        publish_once(&progress);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(PUBLISH_INTERVAL) => {}
        }
    }
    publish_once(&progress);
}

fn publish_once(progress: &Progress) {
    let snapshot = progress.snapshot();
    let counts = &snapshot.counts;
    metrics::counter!("keywatch_records_total").absolute(counts.records);
    metrics::counter!("keywatch_events_total").absolute(counts.events);
    metrics::counter!("keywatch_alerts_total").absolute(counts.alerts);
    metrics::counter!("keywatch_revocations_total").absolute(counts.revocations);
    metrics::counter!("keywatch_dead_letters_total").absolute(counts.rejected);
    metrics::counter!("keywatch_no_key_total").absolute(counts.no_key);
    metrics::counter!("keywatch_repartitioned_total").absolute(snapshot.repartitioned);
    metrics::counter!("keywatch_batches_total").absolute(snapshot.batches);
    metrics::counter!("keywatch_checkpoints_total").absolute(snapshot.checkpoints);
    for (stage, offsets) in &snapshot.committed {
        for (partition, offset) in offsets {
            let (topic, number) = partition.rsplit_once('/').unwrap_or((partition.as_str(), ""));
            metrics::gauge!(
                "keywatch_committed_offset",
                "stage" => stage.clone(),
                "topic" => topic.to_string(),
                "partition" => number.to_string()
            )
            .set(*offset as f64);
        }
    }
    for (stage, partitions) in &snapshot.assigned {
        metrics::gauge!("keywatch_assigned_partitions", "stage" => stage.clone()).set(partitions.len() as f64);
    }
}
