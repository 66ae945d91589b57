//! The Kafka pipeline against a real Kafka-compatible broker named by
//! `KEYWATCH_TEST_BROKERS` (CI starts tansu with `.ci/start-tansu.sh`): the
//! broker scenarios of [`crate::kafka_scenarios`], as on the mock cluster.
//! Without the variable each test says why and returns. The pipeline creates
//! its own output and changelog topics here, through the admin API.
//!
//! Known gaps of tansu 0.6 that shape these tests: offset queries (high
//! watermarks, lookups by timestamp) answer per record batch, a fetch that
//! starts inside a record batch returns nothing, and records of aborted
//! transactions are shown. So exactly-once mode is tested on the mock
//! cluster only, replay checks its timestamp lookups and falls back to a
//! scan, and the crash test writes its input one record per batch so that
//! resuming at a checkpoint starts a batch.

use crate::kafka_scenarios;
use crate::kafka_support::Brokers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_dead_letters_and_checkpoints_on_a_real_broker() {
    let Some(brokers) = Brokers::real("alerts_dead_letters_and_checkpoints_on_a_real_broker") else {
        return;
    };
    kafka_scenarios::keyed_flow(&brokers, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_loses_no_alert_on_a_real_broker() {
    let Some(brokers) = Brokers::real("a_crash_and_restart_loses_no_alert_on_a_real_broker") else {
        return;
    };
    kafka_scenarios::crash_and_restart(&brokers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repartitioned_input_and_replay_on_a_real_broker() {
    let Some(brokers) = Brokers::real("repartitioned_input_and_replay_on_a_real_broker") else {
        return;
    };
    kafka_scenarios::repartition_and_replay(&brokers).await;
}
