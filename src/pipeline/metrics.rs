//! Prometheus metrics of `keywatch run`, served on `kafka.metrics_listen`:
//! the [`Progress`] counters, published once a second; each stage's
//! committed offsets, assigned partitions, consumer lag and event-time lag;
//! and the histograms the driver and the consumer record themselves
//! (checkpoint and restore size and duration). Labels name stages, topics,
//! partitions and reasons, never keys.

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
    metrics::describe_counter!(
        "keywatch_dead_letters_total",
        "Rejected events (one dead letter per record holds all of a record's), by reason"
    );
    metrics::describe_counter!(
        "keywatch_dead_letters_dropped_total",
        "Dead letters that could not be produced and were skipped, by librdkafka error"
    );
    metrics::describe_counter!(
        "keywatch_suppressed_total",
        "Alerts held back because their incident already raised one"
    );
    metrics::describe_counter!(
        "keywatch_late_events_total",
        "Events older than their key's newest event by more than the allowed lateness"
    );
    metrics::describe_counter!(
        "keywatch_source_view_late_total",
        "Calls the source view judged behind its clock by more than its reorder lateness"
    );
    metrics::describe_counter!(
        "keywatch_source_view_forced_total",
        "Calls the source view judged before every keyed partition had reported past them, holding too many"
    );
    // Counted by the source stage as it happens: shown at 0 until then.
    metrics::counter!("keywatch_source_view_late_total").increment(0);
    metrics::counter!("keywatch_source_view_forced_total").increment(0);
    metrics::describe_gauge!(
        "keywatch_consumer_lag",
        "High watermark minus position per owned partition and stage"
    );
    metrics::describe_gauge!(
        "keywatch_event_time_lag_seconds",
        "Wall clock minus the newest event time processed, per stage"
    );
    metrics::describe_counter!(
        "keywatch_idle_rejoins_total",
        "Rejoins after holding no partitions while the input had lag, per stage"
    );
    metrics::describe_counter!("keywatch_checkpoint_bytes_total", "Bytes written to the changelog");
    metrics::describe_histogram!(
        "keywatch_checkpoint_seconds",
        "Time to encode and durably write one batch's checkpoints, per stage"
    );
    metrics::describe_histogram!(
        "keywatch_checkpoint_bytes",
        "Bytes of one batch's checkpoints, per stage"
    );
    metrics::describe_histogram!(
        "keywatch_restore_seconds",
        "Time to read an assignment's checkpoints from the changelog"
    );
    metrics::describe_histogram!("keywatch_restore_keys", "Keys restored per partition");
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
    for (reason, count) in &counts.rejected_by_reason {
        metrics::counter!("keywatch_dead_letters_total", "reason" => reason.clone()).absolute(*count);
    }
    metrics::counter!("keywatch_suppressed_total").absolute(snapshot.suppressed);
    metrics::counter!("keywatch_late_events_total").absolute(snapshot.late_events);
    metrics::counter!("keywatch_checkpoint_bytes_total").absolute(snapshot.checkpoint_bytes);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    for (stage, newest_ms) in progress.newest_event_times() {
        metrics::gauge!("keywatch_event_time_lag_seconds", "stage" => stage).set((now_ms - newest_ms) as f64 / 1000.0);
    }
    for (stage, status) in progress.groups() {
        metrics::counter!("keywatch_idle_rejoins_total", "stage" => stage)
            .absolute(status.idle_rejoins.load(std::sync::atomic::Ordering::Relaxed));
        for (partition, lag) in status.lag() {
            metrics::gauge!(
                "keywatch_consumer_lag",
                "stage" => stage,
                "topic" => partition.topic.clone(),
                "partition" => partition.partition.to_string()
            )
            .set(lag as f64);
        }
    }
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
