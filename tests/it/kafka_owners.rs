//! The owners topic against librdkafka's mock cluster: entries produced to
//! `kafka.owners_topic` before `keywatch run` starts reach the alerts and
//! revocation requests it produces, and a tombstone takes a key's owner
//! away.

use std::time::Duration;

use keywatch::alert::RevocationRequest;
use keywatch::event::Fingerprinter;
use rdkafka::producer::FutureRecord;

use crate::kafka_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_on_the_owners_topic_reach_alerts_and_revocations_in_run() {
    let cluster = Brokers::mock();
    let brokers = cluster.bootstrap_servers();
    let (mut config, input) = cluster.prepare("owners", true).await;
    let owners_topic = "owners-owners".to_string();
    if let Brokers::Mock(mock) = &cluster {
        mock.create_topic(&owners_topic, 1, 1).expect("owners topic");
    }
    kafka_of_mut(&mut config).owners_topic = Some(owners_topic.clone());
    // The revocation gate judges a candidate once every keyed partition's
    // event time has passed it; at the end of the input, idle partitions
    // let their held events and candidates go.
    kafka_of_mut(&mut config).idle_release = Duration::from_secs(1);
    let fingerprinter = Fingerprinter::unkeyed();
    let owned = fingerprinter.fingerprint(&key_id(1));
    let disowned = fingerprinter.fingerprint(&key_id(3));
    let producer = producer(&brokers, false);
    let entry = r#"{"owner":"alice","team":"payments","criticality":"high"}"#;
    for (key, value) in [(&owned, Some(entry)), (&disowned, Some(entry)), (&disowned, None)] {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(&owners_topic).key(key.as_str());
        if let Some(value) = value {
            record = record.payload(value);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("owners entry delivered");
    }
    produce(&brokers, &input, &travel_scenario(4, 16, 0), Placement::KeyedByKeyId).await;

    let kafka = kafka_of(&config).clone();
    let pipeline = RunningPipeline::start(&config);
    wait_until(
        "alerts on both travelling keys and a revocation",
        cluster.catch_up(),
        || {
            let alerts = read_alerts(&brokers, &kafka.alerts_topic);
            let revoked = read_topic(&brokers, &kafka.revocations_topic).iter().any(|message| {
                serde_json::from_slice::<RevocationRequest>(&message.payload)
                    .is_ok_and(|request| request.key_fingerprint == owned)
            });
            revoked
                && [&owned, &disowned]
                    .iter()
                    .all(|key| alerts.iter().any(|alert| &&alert.key_fingerprint == key))
        },
    )
    .await;
    pipeline.stop().await;

    let alerts = read_alerts(&brokers, &kafka.alerts_topic);
    let revocations: Vec<RevocationRequest> = read_topic(&brokers, &kafka.revocations_topic)
        .into_iter()
        .map(|message| serde_json::from_slice(&message.payload).expect("a revocation request"))
        .collect();
    let mut checked = 0;
    for (fingerprint, owner) in alerts.iter().map(|alert| (&alert.key_fingerprint, &alert.owner)).chain(
        revocations
            .iter()
            .map(|request| (&request.key_fingerprint, &request.owner)),
    ) {
        if fingerprint == &owned {
            let owner = owner.as_ref().expect("the owned key's outputs carry its owner");
            assert_eq!(owner.owner.as_deref(), Some("alice"));
            assert_eq!(owner.team.as_deref(), Some("payments"));
            checked += 1;
        } else {
            assert!(
                owner.is_none(),
                "{fingerprint} has no owner (tombstoned or never listed)"
            );
        }
    }
    assert!(checked >= 2, "an alert and a revocation of the owned key were checked");
    assert!(revocations.iter().any(|request| request.key_fingerprint == owned));
}
