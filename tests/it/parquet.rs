//! End to end: `keywatch generate --format parquet` and `keywatch replay
//! --format parquet`, through the real binary. The same generated traffic
//! replayed from JSON lines and from Parquet gives byte-identical alerts,
//! revocations and digests; bad rows are rejected with the reasons and row
//! numbers the same values get as JSON lines, while the rows around them
//! are processed; columns are found through the config's field mapping,
//! nested structs included; a file that is not Parquet is refused cleanly.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::builder::{StringBuilder, UInt16Builder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Fields};
use parquet::arrow::ArrowWriter;
use serde_json::Value;

fn keywatch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keywatch"))
        .args(args)
        .output()
        .expect("keywatch runs")
}

fn succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn generate(out: &Path, format: &str) {
    let out = out.to_str().unwrap();
    succeeded(&keywatch(&[
        "generate", "--keys", "60", "--days", "6", "--seed", "5", "--format", format, "--out", out,
    ]));
}

fn replay(input: &Path, format: &str, dir: &Path, out: &Path, extra: &[&str]) -> Output {
    let (city, asn) = (dir.join("geoip-city.mmdb"), dir.join("geoip-asn.mmdb"));
    let mut args = vec![
        "replay",
        "--input",
        input.to_str().unwrap(),
        "--format",
        format,
        "--geoip-city",
        city.to_str().unwrap(),
        "--geoip-asn",
        asn.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    keywatch(&args)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn read_lines(path: &Path) -> Vec<Value> {
    read(path)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn generated_parquet_replays_to_the_same_alerts_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let json_run = dir.path().join("json");
    let parquet_run = dir.path().join("parquet");
    generate(&json_run, "jsonl");
    generate(&parquet_run, "parquet");
    for name in ["labels.jsonl", "benign.jsonl", "meta.json", "geoip-city.mmdb"] {
        assert_eq!(
            std::fs::read(json_run.join(name)).unwrap(),
            std::fs::read(parquet_run.join(name)).unwrap(),
            "{name}"
        );
    }
    assert!(!parquet_run.join("events.jsonl").exists());

    let from_json = dir.path().join("from-json");
    let from_parquet = dir.path().join("from-parquet");
    succeeded(&replay(
        &json_run.join("events.jsonl"),
        "auto",
        &json_run,
        &from_json,
        &[],
    ));
    succeeded(&replay(
        &parquet_run.join("events.parquet"),
        "parquet",
        &parquet_run,
        &from_parquet,
        &["--batch-size", "1000"],
    ));
    let alerts = read(&from_json.join("alerts.jsonl"));
    assert!(alerts.lines().count() > 5, "the run has incidents to find");
    for name in [
        "alerts.jsonl",
        "revocations.jsonl",
        "revocations.shadow.jsonl",
        "digests.jsonl",
        "summary.json",
    ] {
        assert!(
            read(&from_json.join(name)) == read(&from_parquet.join(name)),
            "{name} differs between the JSON and the Parquet replay"
        );
    }
}

fn text(values: &[Option<&str>]) -> ArrayRef {
    let mut builder = StringBuilder::new();
    for value in values {
        builder.append_option(*value);
    }
    Arc::new(builder.finish())
}

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let mut writer = ArrowWriter::try_new(File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(batch).unwrap();
    writer.close().unwrap();
}

/// Eight rows, of which row 3 has no key, row 4 a bad address and row 6 an
/// impossible time: as Parquet with text times, and as the same JSON lines.
fn write_rows_with_bad_ones(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut ts = Vec::new();
    let mut keys = Vec::new();
    let mut ips = Vec::new();
    let mut statuses = UInt16Builder::new();
    for row in 1..=8u32 {
        ts.push(match row {
            6 => "2026-13-45T00:00:00Z".to_string(),
            _ => format!("2026-01-05T10:00:0{row}Z"),
        });
        keys.push((row != 3).then(|| format!("AKIAPARQUETTEST{:05}", row % 2)));
        ips.push(if row == 4 {
            "999.1.1.1".to_string()
        } else {
            format!("192.0.2.{row}")
        });
        statuses.append_value(200);
    }
    fn as_refs(values: &[String]) -> Vec<Option<&str>> {
        values.iter().map(|value| Some(value.as_str())).collect()
    }
    let key_refs: Vec<Option<&str>> = keys.iter().map(Option::as_deref).collect();
    let batch = RecordBatch::try_from_iter([
        ("ts", text(&as_refs(&ts))),
        ("key_id", text(&key_refs)),
        ("ip", text(&as_refs(&ips))),
        ("method", text(&[Some("GET"); 8])),
        ("endpoint", text(&[Some("/v1/orders"); 8])),
        ("status", Arc::new(statuses.finish()) as ArrayRef),
    ])
    .unwrap();
    let parquet = dir.join("rows.parquet");
    write_parquet(&parquet, &batch);
    let lines: Vec<String> = (0..8)
        .map(|row| {
            serde_json::json!({
                "ts": ts[row], "key_id": keys[row], "ip": ips[row],
                "method": "GET", "endpoint": "/v1/orders", "status": 200,
            })
            .to_string()
        })
        .collect();
    let json = dir.join("rows.jsonl");
    std::fs::write(&json, lines.join("\n") + "\n").unwrap();
    (parquet, json)
}

#[test]
fn bad_rows_are_rejected_like_json_lines_and_the_rest_processed() {
    let dir = tempfile::tempdir().unwrap();
    let (parquet, json) = write_rows_with_bad_ones(dir.path());
    let from_parquet = dir.path().join("from-parquet");
    let from_json = dir.path().join("from-json");
    succeeded(&keywatch(&[
        "replay",
        "--format",
        "parquet",
        "--input",
        parquet.to_str().unwrap(),
        "--out",
        from_parquet.to_str().unwrap(),
        "--no-progress",
    ]));
    succeeded(&keywatch(&[
        "replay",
        "--format",
        "canonical",
        "--input",
        json.to_str().unwrap(),
        "--out",
        from_json.to_str().unwrap(),
        "--no-progress",
    ]));
    let summary: Value = serde_json::from_str(&read(&from_parquet.join("summary.json"))).unwrap();
    assert_eq!(summary["records"], 8);
    assert_eq!(summary["events"], 5, "the rows around the bad ones are processed");
    assert_eq!(summary["skipped_no_key"], 1);
    assert_eq!(summary["rejected"], 2);
    assert_eq!(
        read(&from_parquet.join("summary.json")),
        read(&from_json.join("summary.json"))
    );

    let rejected = read_lines(&from_parquet.join("rejected.jsonl"));
    let as_json = read_lines(&from_json.join("rejected.jsonl"));
    let shown = |entries: &[Value]| -> Vec<(String, String, u64)> {
        entries
            .iter()
            .map(|entry| {
                (
                    entry["reason_kind"].as_str().unwrap().to_string(),
                    entry["reason"].as_str().unwrap().to_string(),
                    entry["source"]["line"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        shown(&rejected),
        [
            ("bad_ip".to_string(), "unparsable ip address `999.1.1.1`".to_string(), 4),
            (
                "bad_timestamp".to_string(),
                "impossible or unparsable timestamp `2026-13-45T00:00:00Z`".to_string(),
                6
            ),
        ]
    );
    assert_eq!(shown(&rejected), shown(&as_json), "same reasons and rows as JSON");
    assert!(
        rejected[0]["source"]["file"]
            .as_str()
            .unwrap()
            .ends_with("rows.parquet")
    );
    let excerpts = read(&from_parquet.join("rejected.jsonl"));
    assert!(
        excerpts.contains("999.1.1.1") && !excerpts.contains("AKIAPARQUETTEST"),
        "{excerpts}"
    );
}

#[test]
fn mapped_and_nested_columns_are_read_through_the_config_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let request_fields = Fields::from(vec![
        Field::new("x-api-key", DataType::Utf8, true),
        Field::new("route", DataType::Utf8, true),
    ]);
    let rows = 4;
    let request = StructArray::new(
        request_fields,
        vec![
            text(&[
                Some("kg_live_a"),
                Some("kg_live_b"),
                Some("kg_live_a"),
                Some("kg_live_b"),
            ]),
            text(&[Some("/v2/items"); 4]),
        ],
        None,
    );
    let started: Vec<i64> = (0..rows).map(|row| 1_767_607_200 + row).collect();
    let batch = RecordBatch::try_from_iter([
        ("started_at", Arc::new(Int64Array::from(started)) as ArrayRef),
        ("request", Arc::new(request) as ArrayRef),
        ("client_ip", text(&[Some("203.0.113.9, 10.0.0.1"); 4])),
        ("ignored", text(&[Some("x"); 4])),
    ])
    .unwrap();
    let input = dir.path().join("gateway.parquet");
    write_parquet(&input, &batch);
    let config = dir.path().join("keywatch.toml");
    std::fs::write(
        &config,
        r#"
[input]
format = "parquet"

[input.mapping]
ts = "started_at"
ts_format = "epoch_s"
key_id = "request.x-api-key"
endpoint = "request.route"
ip = "client_ip"
trusted_proxies = ["10.0.0.0/8"]
default_method = "GET"
default_status = 200
"#,
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = keywatch(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-progress",
    ]);
    succeeded(&run);
    let summary: Value = serde_json::from_str(&read(&out.join("summary.json"))).unwrap();
    assert_eq!(
        (summary["events"].as_u64(), summary["keys"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(summary["rejected"], 0);

    // A mapping naming a column the file lacks is refused before any row.
    std::fs::write(
        &config,
        "[input]\nformat = \"parquet\"\n[input.mapping]\nkey_id = \"api_key\"\n",
    )
    .unwrap();
    let refused = keywatch(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.path().join("refused").to_str().unwrap(),
        "--no-progress",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("api_key") && stderr.contains("gateway.parquet"),
        "{stderr}"
    );
}

#[test]
fn a_file_that_is_not_parquet_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, "{\"ts\":\"2026-01-05T00:00:00Z\",\"key_id\":\"k\"}\n").unwrap();
    let run = keywatch(&[
        "replay",
        "--format",
        "parquet",
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
        "--no-progress",
    ]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("events.jsonl") && stderr.contains("not a readable parquet file"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
