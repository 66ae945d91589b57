//! The Kafka pipeline against librdkafka's in-process mock cluster: the real
//! protocol, no broker to install. Runs the broker scenarios of
//! [`crate::kafka_scenarios`] (outputs and dead letters, the repartition
//! stage and replay, a crash and restart), and the two that only the mock
//! cluster can hold: a member dying while another takes over its
//! partitions, and exactly-once mode.
//!
//! The mock cluster keeps only the last 5 MiB / 100,000 message sets of a
//! partition, has no offset lookup by timestamp and drops offsets committed
//! inside a transaction; the scenarios stay far below those limits and the
//! pipeline does not depend on the other two.

use std::collections::BTreeSet;

use keywatch::pipeline::Progress;

use crate::kafka_scenarios;
use crate::kafka_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dead_letters_flow_through_the_keyed_pipeline() {
    // The only test in this binary that serves metrics: the recorder is global.
    kafka_scenarios::keyed_flow(&Brokers::mock(), Some(free_port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_input_is_repartitioned_by_fingerprint_and_replays_like_live() {
    kafka_scenarios::repartition_and_replay(&Brokers::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_and_restart_loses_no_alert() {
    kafka_scenarios::crash_and_restart(&Brokers::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surviving_member_takes_over_partitions_with_their_state() {
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let catch_up = cluster.catch_up();
    let (mut config, input) = cluster.prepare("takeover", true).await;
    kafka_of_mut(&mut config).batch_max_events = 20;
    // Three parts: shared by both members, then some for the member that
    // dies, then the trips, which only the survivor sees.
    let records = travel_scenario(12, 16, 0);
    let trips = first_trip(&records);
    let split = trips * 2 / 3;
    let mut landed = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;

    let mut config_a = config.clone();
    kafka_of_mut(&mut config_a).instance_id = Some("a".into());
    let mut config_b = config.clone();
    kafka_of_mut(&mut config_b).instance_id = Some("b".into());
    let survivor = RunningPipeline::start(&config_a);
    let victim = RunningPipeline::start(&config_b);

    let first_ends = end_offsets(&brokers, &input);
    wait_until("both members to share the first part", catch_up, || {
        let owned = |progress: &Progress| {
            progress
                .snapshot()
                .assigned
                .get("keyed")
                .is_some_and(|partitions| !partitions.is_empty())
        };
        owned(&survivor.progress)
            && owned(&victim.progress)
            && first_ends.iter().all(|(partition, end)| {
                *end == 0
                    || committed_anywhere(&[&survivor.progress, &victim.progress], "keyed", &input, *partition)
                        == Some(*end)
            })
    })
    .await;
    let victim_partitions = victim.progress.snapshot().assigned["keyed"].clone();
    let victim_records = victim.progress.snapshot().counts.records;
    assert!(victim_records > 0, "the member to be stopped did work");

    landed.extend(produce(&brokers, &input, &records[split..trips], Placement::KeyedByKeyId).await);
    victim.wait_for_records(victim_records + 5, catch_up).await;
    victim.kill().await;
    landed.extend(produce(&brokers, &input, &records[trips..], Placement::KeyedByKeyId).await);

    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&survivor.progress], "keyed", &input, &ends, catch_up).await;
    let owned_at_end = survivor.progress.snapshot().assigned["keyed"].clone();
    survivor.stop().await;
    for partition in &victim_partitions {
        assert!(owned_at_end.contains(partition), "{partition} moved to the survivor");
    }

    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 6);
    let alerts = read_alerts(&brokers, &kafka_of(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(ids, expected, "no alert lost or invented across the takeover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_mode_repeats_nothing_across_a_crash() {
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let catch_up = cluster.catch_up();
    let (mut config, input) = cluster.prepare("eos", true).await;
    {
        let kafka = kafka_of_mut(&mut config);
        kafka.batch_max_events = 20;
        kafka.exactly_once = true;
        kafka.instance_id = Some("eos-1".into());
    }
    let records = travel_scenario(10, 16, 30);
    let split = first_trip(&records);
    let mut landed = produce(&brokers, &input, &records[..split], Placement::KeyedByKeyId).await;

    let first = RunningPipeline::start(&config);
    first.wait_for_records(split as u64 / 2, catch_up).await;
    first.kill().await;
    landed.extend(produce(&brokers, &input, &records[split..], Placement::KeyedByKeyId).await);
    let expected = reference_alert_ids(&landed, true);
    assert!(expected.len() >= 5);

    // The same instance id: the restart fences the dead producer and aborts
    // its open transaction.
    let second = RunningPipeline::start(&config);
    let ends = end_offsets(&brokers, &input);
    wait_caught_up(&[&second.progress], "keyed", &input, &ends, catch_up).await;
    second.stop().await;

    let alerts = read_alerts(&brokers, &kafka_of(&config).alerts_topic);
    let ids: BTreeSet<String> = alerts.iter().map(|alert| alert.id.clone()).collect();
    assert_eq!(ids, expected);
    assert_eq!(alerts.len(), ids.len(), "committed outputs hold no repeat");
    let dead_letters = read_topic(&brokers, &kafka_of(&config).dead_letter_topic);
    let malformed = landed.iter().filter(|record| record.record.malformed).count();
    assert_eq!(
        dead_letters.len(),
        malformed,
        "each malformed record dead-lettered exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_spraying_keys_over_every_partition_is_one_incident_out_of_run() {
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let catch_up = cluster.catch_up();
    let (config, input) = cluster.prepare("spray", true).await;
    // 40 guessed key ids, three refused calls each, from one address over
    // four minutes; the keys spread over every partition of the input. A
    // few calls later, on every key (so on every partition), let the
    // engines' and the source view's reorder waits pass.
    let guessed: Vec<String> = (0..40).map(|guess| format!("AKIAKWSPRAY{guess:09}")).collect();
    let mut records = Vec::new();
    for round in 0..3i64 {
        for (index, key) in guessed.iter().enumerate() {
            let ts = T0_MS + round * 80_000 + index as i64 * 2_000;
            records.push(ScenarioRecord {
                key: Some(key.clone()),
                payload: canonical(ts, key, &ip("saopaulo", 40), "/v1/orders", 401),
                malformed: false,
            });
        }
    }
    for later in 0..3i64 {
        for (index, key) in guessed.iter().enumerate() {
            let ts = T0_MS + 10 * 60_000 + later * 60_000 + index as i64 * 100;
            records.push(ScenarioRecord {
                key: Some(key.clone()),
                payload: canonical(ts, key, &ip("saopaulo", 40), "/v1/orders", 401),
                malformed: false,
            });
        }
    }
    produce(&brokers, &input, &records, Placement::KeyedByKeyId).await;

    let running = RunningPipeline::start(&config);
    let alerts_topic = kafka_of(&config).alerts_topic.clone();
    let sprays = || -> Vec<keywatch::alert::Alert> {
        read_alerts(&brokers, &alerts_topic)
            .into_iter()
            .filter(|alert| alert.detector.as_str() == "source_spray")
            .collect()
    };
    wait_until("the spray to be judged", catch_up, || {
        sprays().iter().any(|alert| alert.keys.len() == guessed.len())
    })
    .await;
    running.stop().await;

    let sprays = sprays();
    assert!((1..=3).contains(&sprays.len()), "{sprays:#?}");
    assert!(sprays.iter().all(|alert| alert.incident_id == sprays[0].incident_id));
    assert!(
        sprays
            .iter()
            .all(|alert| alert.severity == keywatch::alert::Severity::High)
    );
    // Alerts go to the partition of their key: read back, the incident's
    // alerts need not come in the order they were raised. Its fullest lists
    // every key.
    let listed: BTreeSet<String> = sprays
        .iter()
        .max_by_key(|alert| alert.keys.len())
        .map(|alert| alert.keys.iter().cloned().collect())
        .unwrap_or_default();
    let expected: BTreeSet<String> = guessed
        .iter()
        .map(|key| keywatch::event::key_fingerprint(key))
        .collect();
    assert_eq!(listed, expected, "the incident lists every sprayed key");
    let text = serde_json::to_string(&sprays).unwrap_or_default();
    assert!(!text.contains("AKIAKWSPRAY"), "no raw key");
    let by_source = read_topic(&brokers, &kafka_of(&config).source_topic);
    // The last minutes of each partition wait for its event time to move
    // on (the engines' reorder bound); every call of the spray is out.
    assert!(
        by_source.len() >= 3 * guessed.len(),
        "every refused call of the spray was repartitioned by source"
    );
    assert!(
        by_source
            .iter()
            .all(|message| !String::from_utf8_lossy(&message.payload).contains("AKIAKWSPRAY")),
        "the source topic holds fingerprints, never raw keys"
    );
}

/// A spray over every partition of the input, one partition of which
/// arrives (its spray calls and all that follow) only after the others
/// have run three hours of event time past it, with calls for the source
/// view throughout: the view waits for that partition's watermark, so its
/// `source_spray` alerts are those of one engine judging every event in
/// time order, where judging on arrival would have found the late
/// partition's calls outside the spray window and raised another alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_whose_partition_runs_far_behind_the_others_is_judged_as_replay_judges_it() {
    use keywatch::alert::{Alert, Output};
    use keywatch::decode::{Decoder, Format};
    use keywatch::engine::Engine;

    const MINUTE: i64 = 60_000;
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let (config, input) = cluster.prepare("spraybehind", true).await;
    let placement = Placement::Unkeyed { partitions: PARTITIONS };
    let late_partition = (PARTITIONS - 1) as usize;
    let record = |ts: i64, key: &str, ip: &str, status: u16| ScenarioRecord {
        key: Some(key.to_string()),
        payload: canonical(ts, key, ip, "/v1/orders", status),
        malformed: false,
    };
    // Every partition has an owner calling from home for two hours before
    // the spray, so every partition has judged events to report.
    let mut early = Vec::new();
    let mut ahead = Vec::new();
    let mut behind = Vec::new();
    for owner in 0..PARTITIONS as usize {
        let key = key_id(900 + owner);
        for minute in 0..120 {
            early.push(record(
                T0_MS - 2 * 60 * MINUTE + minute * MINUTE,
                &key,
                &ip("paris", 5),
                200,
            ));
        }
        let after = if (900 + owner) % PARTITIONS as usize == late_partition {
            &mut behind
        } else {
            &mut ahead
        };
        for minute in 0..180 {
            after.push(record(T0_MS + minute * MINUTE, &key, &ip("paris", 5), 200));
        }
    }
    // 60 guessed ids, one every 5 s from one address, refused; a third of
    // them on the partition that runs behind.
    for guess in 0..60usize {
        let key = key_id(guess);
        let to = if guess % PARTITIONS as usize == late_partition {
            &mut behind
        } else {
            &mut ahead
        };
        to.push(record(T0_MS + guess as i64 * 5_000, &key, &ip("saopaulo", 40), 401));
    }
    // Refused calls from elsewhere every 10 minutes on the partitions ahead:
    // they move the view's clock far past the spray.
    for step in 1..18usize {
        let key = key_id(3000 + step * PARTITIONS as usize);
        let host = step as u8;
        ahead.push(record(
            T0_MS + step as i64 * 10 * MINUTE,
            &key,
            &ip("sydney", host),
            401,
        ));
    }
    // In time order within each part; the canonical `ts` sorts as text.
    let ts_of =
        |record: &ScenarioRecord| serde_json::from_str::<serde_json::Value>(&record.payload).unwrap()["ts"].to_string();
    for records in [&mut early, &mut ahead, &mut behind] {
        records.sort_by_key(ts_of);
    }

    // The reference: one engine over every event in time order.
    let mut everything: Vec<ScenarioRecord> = early.iter().chain(&ahead).chain(&behind).cloned().collect();
    everything.sort_by_key(ts_of);
    let decoder = Decoder::new(Format::Canonical, None, 1 << 20);
    let events: Vec<_> = everything
        .iter()
        .flat_map(|record| decoder.decode_to_vec(record.payload.as_bytes()))
        .map(|result| result.expect("valid record"))
        .collect();
    let mut engine = Engine::new(model(), geo());
    let mut outputs = Vec::new();
    engine.process(&events, &mut outputs);
    engine.finish(&mut outputs);
    let line = |alert: &Alert| (alert.id.clone(), alert.revision, alert.ts.clone(), alert.keys.clone());
    let reference: Vec<_> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Alert(alert) if alert.detector.as_str() == "source_spray" => Some(line(alert)),
            _ => None,
        })
        .collect();
    assert!(reference.len() >= 2, "{reference:#?}");
    assert_eq!(reference.last().map(|line| line.3.len()), Some(60));

    produce(&brokers, &input, &early, placement).await;
    produce(&brokers, &input, &ahead, placement).await;
    let running = RunningPipeline::start(&config);
    let kafka = kafka_of(&config).clone();
    let source_topic = kafka.source_topic.clone();
    let refused_ahead = 60 - 20 + 17;
    wait_until(
        "the partitions ahead to reach the source view",
        cluster.catch_up(),
        || {
            read_topic(&brokers, &source_topic)
                .iter()
                .filter(|message| String::from_utf8_lossy(&message.payload).contains("\"refused\":true"))
                .count()
                >= refused_ahead
        },
    )
    .await;
    produce(&brokers, &input, &behind, placement).await;
    let sprays = || -> Vec<Alert> {
        read_alerts(&brokers, &kafka.alerts_topic)
            .into_iter()
            .filter(|alert| alert.detector.as_str() == "source_spray")
            .collect()
    };
    // The live view raises what replay raises before the input's end: every
    // line but the closing one, which only the end of input gives replay.
    let deadline = std::time::Instant::now() + cluster.catch_up();
    while sprays().len() + 1 < reference.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    running.stop().await;

    let live: Vec<_> = sprays().iter().map(line).collect();
    assert!(
        live.len() + 1 >= reference.len(),
        "live: {live:#?}\nreplay: {reference:#?}\nsource topic: {:#?}",
        read_topic(&brokers, &source_topic)
            .iter()
            .map(|message| (
                message.partition,
                String::from_utf8_lossy(&message.payload).into_owned()
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        live.iter().min_by_key(|line| line.1),
        reference.first(),
        "the spray is raised by the same call, listing the same keys, as in replay"
    );
    for alert in &live {
        assert!(
            reference.contains(alert),
            "live alert not raised in replay: {alert:#?}\nreplay: {reference:#?}"
        );
    }
}

/// The kill switch on the control topic, read from its start: the model
/// says enforce, the newest control message says shadow, so the pipeline
/// sends no request and writes each to the shadow topic, in the request
/// format; then `off` drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_topic_overrides_the_model_mode_and_shadow_mode_sends_nothing() {
    use rdkafka::producer::FutureRecord;
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let (config, input) = cluster.prepare("killswitch", true).await;
    let kafka = kafka_of(&config).clone();
    let control = producer(&brokers, false);
    for mode in ["off", "shadow"] {
        let payload = format!(r#"{{"mode":"{mode}","at":"2026-01-01T00:00:00Z","by":"test"}}"#);
        control
            .send(
                FutureRecord::<str, str>::to(&kafka.control_topic).payload(&payload),
                std::time::Duration::from_secs(5),
            )
            .await
            .expect("control message");
    }
    let records = travel_scenario(8, 16, 0);
    produce(&brokers, &input, &records, Placement::KeyedByKeyId).await;
    let pipeline = RunningPipeline::start(&config);
    wait_until("shadow requests", cluster.catch_up(), || {
        pipeline.progress.snapshot().counts.revocations_shadow > 0
    })
    .await;
    let ends = end_offsets(&brokers, &input);
    wait_until("the input to be consumed", cluster.catch_up(), || {
        ends.iter().all(|(partition, end)| {
            *end == 0 || committed_anywhere(&[&pipeline.progress], "keyed", &input, *partition) == Some(*end)
        })
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let summary = pipeline.stop().await;
    assert_eq!(summary.counts.revocations, 0);
    assert!(
        read_topic(&brokers, &kafka.revocations_topic).is_empty(),
        "shadow mode sends nothing"
    );
    let shadow = read_topic(&brokers, &kafka.revocations_shadow_topic);
    assert_eq!(shadow.len() as u64, summary.counts.revocations_shadow);
    for message in &shadow {
        let request: keywatch::alert::RevocationRequest =
            serde_json::from_slice(&message.payload).expect("the request format");
        assert_eq!(message.key.as_deref(), Some(request.key_fingerprint.as_str()));
    }
}
