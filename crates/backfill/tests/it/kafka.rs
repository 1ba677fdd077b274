//! Kafka replays (issue 23) against a real Kafka-protocol broker: tansu,
//! started per test on a random loopback port with in-memory storage, fed
//! by rskafka (the broker is in `harness/kafka.rs`). The oracle is DuckDB
//! over the same events written as NDJSON (the value as text), deciding on
//! its own which values decode.

use std::time::{Duration, Instant};

use crate::harness::*;

/// `n` payment events of `partition`, some of which do not decode: not
/// JSON, JSON but not an object, an amount that is not a number.
fn payments(partition: i32, n: usize, first_id: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let id = first_id + i as i64;
            let value = match i % 23 {
                5 => b"{not json".to_vec(),
                11 => b"[1, 2, 3]".to_vec(),
                17 => format!(r#"{{"id": {id}, "customer": "c{}", "amount": "lots"}}"#, i % 5)
                    .into_bytes(),
                _ => format!(
                    r#"{{"id": {id}, "customer": "c{}", "amount": {}.{}, "partition_hint": {partition}}}"#,
                    i % 5,
                    (i * 37) % 1000,
                    i % 10
                )
                .into_bytes(),
            };
            Event {
                // As a key-hashing producer would: a key lives in one
                // partition.
                key: Some(format!("k{}-p{partition}", i % 7)),
                value: Some(value),
                timestamp_ms: 1_700_000_000_000 + (i as i64) * 1000,
            }
        })
        .collect()
}

/// The events as DuckDB reads them: one NDJSON line per event with its
/// partition, offset, key and value (as text).
fn write_events(dir: &std::path::Path, events: &[(i32, i64, Event)]) -> String {
    let path = dir.join("events.ndjson");
    let mut text = String::new();
    for (p, o, e) in events {
        let line = serde_json::json!({
            "partition": p,
            "off": o,
            "ts": e.timestamp_ms,
            "key": e.key,
            "value": e.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write events");
    path.display().to_string()
}

/// DuckDB's verdict over the events file: per partition, the events whose
/// value is a JSON object with a numeric (or missing) amount, their count,
/// sum of ids and of amounts; and the count of the others.
fn oracle(events: &str) -> (Vec<Vec<serde_json::Value>>, i64) {
    let good = format!(
        "(SELECT partition, off, key, value FROM read_json('{events}', columns = {{partition: 'INTEGER', off: 'BIGINT', key: 'VARCHAR', value: 'VARCHAR'}}) \
          WHERE json_valid(value) AND json_type(value) = 'OBJECT' \
            AND coalesce(json_type(value, '$.amount') IN ('DOUBLE', 'UBIGINT', 'BIGINT'), true))"
    );
    let per_partition = duckdb(&format!(
        "SELECT partition, count(*), sum(CAST(json_extract(value, '$.id') AS BIGINT)), \
                round(sum(CAST(json_extract(value, '$.amount') AS DOUBLE)), 4) \
         FROM {good} GROUP BY partition ORDER BY partition"
    ));
    let all = duckdb(&format!("SELECT count(*) FROM read_json('{events}')"));
    let bad = int(&all[0][0]) - per_partition.iter().map(|r| int(&r[1])).sum::<i64>();
    (per_partition, bad)
}

fn target_per_partition(dir: &std::path::Path) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT _partition, count(*), sum(id), round(sum(amount), 4) \
         FROM read_parquet('{}/warehouse/**/*.parquet') GROUP BY _partition ORDER BY _partition",
        dir.display()
    ))
}

fn quarantined(dir: &std::path::Path) -> Vec<Vec<serde_json::Value>> {
    duckdb(&format!(
        "SELECT count(*), count(DISTINCT _decode_error IS NOT NULL) FROM read_parquet('{}/quarantine/**/*.parquet')",
        dir.display()
    ))
}

fn job(broker: &Broker, topic: &str, chunk: i64, extra: &str) -> String {
    format!(
        r#"[job]
name = "replay"

[source]
format = "kafka"
brokers = ["{}"]
topic = "{topic}"
value = "json"

[range]
column = "_offset"
start = "earliest"
end = "latest"
chunk = {chunk}

[target]
format = "parquet"
path = "warehouse"

[quarantine]
path = "quarantine"

[run]
parallelism = 3
retry_backoff = "10ms"
{extra}"#,
        broker.address
    )
}

struct Replay {
    demo: Demo,
    broker: Broker,
    topic: String,
    produced: Vec<(i32, i64, Event)>,
}

impl Replay {
    /// A topic of `partitions` with `n` events each, produced in batches of
    /// 10, and a job over it in chunks of `chunk` offsets.
    fn new(partitions: i32, n: usize, chunk: i64, extra: &str) -> Replay {
        Replay::on(Broker::start(), partitions, n, chunk, extra)
    }

    fn on(broker: Broker, partitions: i32, n: usize, chunk: i64, extra: &str) -> Replay {
        let topic = "payments".to_string();
        broker.create_topic(&topic, partitions);
        let demo = Demo {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let mut replay = Replay {
            demo,
            broker,
            topic,
            produced: Vec::new(),
        };
        for p in 0..partitions {
            replay.produce(p, &payments(p, n, i64::from(p) * 100_000));
        }
        std::fs::write(
            replay.demo.job(),
            job(&replay.broker, &replay.topic, chunk, extra),
        )
        .expect("write job");
        replay
    }

    fn produce(&mut self, partition: i32, events: &[Event]) {
        let offsets = self.broker.produce(&self.topic, partition, events, 10);
        assert_eq!(offsets.len(), events.len(), "one offset per event");
        self.produced.extend(
            offsets
                .into_iter()
                .zip(events)
                .map(|(o, e)| (partition, o, e.clone())),
        );
    }

    fn check_against_oracle(&self) {
        let events = write_events(self.demo.path(), &self.produced);
        let (expected, bad) = oracle(&events);
        assert_eq!(target_per_partition(self.demo.path()), expected);
        let q = quarantined(self.demo.path());
        assert_eq!(
            int(&q[0][0]),
            bad,
            "every event that does not decode is quarantined"
        );
    }
}

#[test]
fn a_topic_replays_into_parquet_exactly_with_bad_events_quarantined() {
    let replay = Replay::new(3, 120, 25, "");
    let out = replay.demo.run_ok(&[]);
    let log = text(&out);
    replay.check_against_oracle();
    // Chunks are windows of one partition: 120 offsets in 25s is 5 each.
    let status = replay.demo.status_json();
    let chunks = status["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), 15, "{log}");
    // A second run reads nothing again; the target is unchanged.
    replay.demo.run_ok(&[]);
    replay.check_against_oracle();
    // validate agrees: every chunk's events are in the target; plan shows
    // the frozen plan. (`gaps` looks for missing periods of time ranges.)
    for command in ["validate", "plan"] {
        let out = replay.demo.run(&[command, &replay.demo.job_str()]);
        assert_eq!(code(&out), 0, "{command}: {}", text(&out));
    }
    // The plan shows each partition's offsets in the log and in the plan,
    // bounds as partition and offset, and each chunk's rows: the offsets
    // in its window (no holes here).
    let plan = replay.demo.run(&["plan", "--json", &replay.demo.job_str()]);
    let plan: serde_json::Value = serde_json::from_str(&stdout(&plan)).expect("plan json");
    let partitions: Vec<(i64, i64, i64, i64, i64)> = plan["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_i64().expect(k);
            (
                f("partition"),
                f("earliest"),
                f("latest"),
                f("planned_start"),
                f("planned_end"),
            )
        })
        .collect();
    assert_eq!(
        partitions,
        (0..3).map(|p| (p, 0, 120, 0, 120)).collect::<Vec<_>>()
    );
    let rows: Vec<i64> = plan["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .map(|c| c["estimate"]["rows"].as_i64().expect("rows"))
        .collect();
    assert_eq!(rows, [25, 25, 25, 25, 20].repeat(3));
    let plan = stdout(&replay.demo.run(&["plan", &replay.demo.job_str()]));
    assert!(plan.contains("p1@25") && plan.contains("p2@120"), "{plan}");
    assert!(
        plan.contains("earliest") && plan.contains("0..120"),
        "{plan}"
    );
}

#[test]
fn a_replay_killed_at_each_step_of_the_commit_protocol_resumes_exactly() {
    for fp in [
        "after_write:4",
        "after_commit:4",
        "after_publish:4",
        "read:sleep=300",
    ] {
        let replay = Replay::new(2, 90, 20, "");
        let job = replay.demo.job_str();
        if fp.starts_with("read:sleep") {
            // kill -9 while chunks are being read and written.
            replay
                .demo
                .run_killed_after(&[("BACKFILL_FAILPOINTS", fp)], 700);
        } else {
            let out = replay
                .demo
                .run_env(&["run", &job], &[("BACKFILL_FAILPOINTS", fp)]);
            assert_eq!(
                out.status.code(),
                None,
                "{fp}: should have aborted:\n{}",
                text(&out)
            );
        }
        let out = replay.demo.run(&["run", &job]);
        assert_eq!(code(&out), 0, "{fp}: resume:\n{}", text(&out));
        replay.check_against_oracle();
        let out = replay.demo.run(&["validate", &job]);
        assert_eq!(code(&out), 0, "{fp}: validate:\n{}", text(&out));
    }
}

#[test]
fn dedup_by_key_keeps_the_latest_offset_like_a_compacted_topic() {
    let replay = Replay::new(
        3,
        60,
        16,
        "\n[dedup]\nkeys = [\"_key\"]\norder_by = [\"_offset DESC\"]\nscope = \"global\"\n",
    );
    replay.demo.run_ok(&[]);
    let events = write_events(replay.demo.path(), &replay.produced);
    let expected = duckdb(&format!(
        "SELECT count(*), sum(CAST(json_extract(value, '$.id') AS BIGINT)) FROM ( \
           SELECT *, row_number() OVER (PARTITION BY key ORDER BY off DESC) AS rn \
           FROM read_json('{events}', columns = {{partition: 'INTEGER', off: 'BIGINT', key: 'VARCHAR', value: 'VARCHAR'}}) \
           WHERE json_valid(value) AND json_type(value) = 'OBJECT' \
             AND coalesce(json_type(value, '$.amount') IN ('DOUBLE', 'UBIGINT', 'BIGINT'), true)) \
         WHERE rn = 1"
    ));
    let got = duckdb(&format!(
        "SELECT count(*), sum(id) FROM read_parquet('{}/warehouse/**/*.parquet')",
        replay.demo.path().display()
    ));
    assert_eq!(got, expected);
    assert_eq!(int(&got[0][0]), 21, "7 keys in each of 3 partitions");
}

#[test]
fn end_now_extends_the_plan_to_new_events_and_keeps_committed_chunks() {
    let mut replay = Replay::new(2, 45, 20, "");
    replay
        .demo
        .edit_job(|s| s.replace("end = \"latest\"", "end = \"now\""));
    replay.demo.run_ok(&[]);
    let before = replay.demo.status_json()["chunks"]
        .as_array()
        .expect("chunks")
        .clone();
    // 45 offsets in 20s: [0,20) [20,40) [40,45) per partition.
    assert_eq!(before.len(), 6);
    replay.produce(0, &payments(0, 30, 500_000));
    replay.produce(1, &payments(1, 3, 600_000));
    replay.demo.run_ok(&[]);
    replay.check_against_oracle();
    let after = replay.demo.status_json()["chunks"]
        .as_array()
        .expect("chunks")
        .clone();
    for c in &before {
        let same = after
            .iter()
            .find(|a| a["id"] == c["id"])
            .expect("chunk kept");
        assert_eq!(same["lo"], c["lo"]);
        assert_eq!(same["hi"], c["hi"]);
        assert_eq!(
            same["attempts"], c["attempts"],
            "a committed chunk is not re-read"
        );
    }
    // Partition 0 grew by [45,60) [60,75); partition 1 by [45,48).
    assert_eq!(after.len(), 9);
}

#[test]
fn offsets_the_log_no_longer_holds_are_refused_not_replaced_with_fewer_rows() {
    let mut replay = Replay::new(1, 50, 10, "");
    replay.demo.run_ok(&[]);
    let before = target_per_partition(replay.demo.path());
    // The topic is recreated (tansu 0.6 has no DeleteRecords to move the
    // log's start, and keeps its storage in memory): now 25 events.
    replay.broker = replay.broker.restart();
    replay.broker.create_topic(&replay.topic, 1);
    let fewer = payments(0, 25, 0);
    replay.broker.produce(&replay.topic, 0, &fewer, 10);
    let job = replay.demo.job_str();
    let out = replay.demo.run(&["reset", &job, "--all"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = replay.demo.run(&["run", &job]);
    assert_ne!(
        code(&out),
        0,
        "chunks past the log's end must fail:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("recreated or truncated"),
        "{}",
        text(&out)
    );
    // The same events at the same offsets: the chunks the log still holds
    // ran again to the same rows, and the others kept theirs.
    assert_eq!(target_per_partition(replay.demo.path()), before);
    let status = replay.demo.status_json();
    let failed = status["chunks"]
        .as_array()
        .expect("chunks")
        .iter()
        .filter(|c| c["status"] == "failed")
        .count();
    assert_eq!(
        failed, 3,
        "[20,30) is cut short, [30,40) and [40,50) are gone"
    );
    // validate tells the chunks the log forgot from rows missing from the
    // target.
    let out = replay.demo.run(&["validate", &job]);
    let shown = text(&out);
    assert_ne!(code(&out), 0, "{shown}");
    assert_eq!(shown.matches("SOURCE GONE").count(), 3, "{shown}");
    assert!(!shown.contains("MISMATCH"), "{shown}");
    assert!(shown.contains("the source no longer holds it"), "{shown}");
}

#[test]
fn a_replay_into_postgresql_replaces_each_partitions_windows_exactly() {
    let replay = Replay::new(3, 60, 16, "");
    let pg = Pg::new("kafka");
    let schema = pg.schema.clone();
    replay.demo.edit_job(|s| {
        let start = s.find("[target]").expect("target");
        let end = s.find("[run]").expect("run");
        format!(
            "{}[target]\nformat = \"postgres\"\nurl = \"${{{PG_ENV}}}\"\ntable = \"{schema}.payments\"\nmode = \"replace\"\ncreate = true\n\n{}",
            &s[..start],
            &s[end..]
        )
    });
    let events = write_events(replay.demo.path(), &replay.produced);
    let (expected, bad) = oracle(&events);
    let expected: Vec<Vec<String>> = expected
        .iter()
        .map(|r| {
            vec![
                int(&r[0]).to_string(),
                int(&r[1]).to_string(),
                int(&r[2]).to_string(),
                format!("{:.4}", float(&r[3])),
            ]
        })
        .collect();
    let table = |pg: &Pg| {
        pg.rows(&format!(
            "SELECT _partition, count(*), sum(id), round(sum(amount)::numeric, 4) \
             FROM {schema}.payments GROUP BY 1 ORDER BY 1"
        ))
    };
    run_pg_ok(&replay.demo, &pg, &["run"]);
    assert_eq!(table(&pg), expected);
    let quarantined = pg.one(&format!(
        "SELECT count(*) FROM {schema}.payments_quarantine WHERE _decode_error IS NOT NULL"
    ));
    assert_eq!(quarantined, bad.to_string());
    // Every chunk again: each deletes exactly its partition's window
    // (offsets repeat across partitions) before inserting it.
    run_pg_ok(&replay.demo, &pg, &["reset", "--all"]);
    run_pg_ok(&replay.demo, &pg, &["run"]);
    assert_eq!(table(&pg), expected);
    run_pg_ok(&replay.demo, &pg, &["validate"]);
}

/// Payment events of `partition` 5 s apart, each shifted by up to 50 s
/// either way: an event can be 95 s older than one before it.
fn jittered(partition: i32, n: usize) -> Vec<Event> {
    payments(partition, n, i64::from(partition) * 100_000)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            let jitter = ((i as i64 * 7919 + i64::from(partition) * 31) % 101) - 50;
            e.timestamp_ms = 1_700_000_000_000 + (i as i64) * 5_000 + jitter * 1_000;
            e
        })
        .collect()
}

/// A replay in time chunks of a minute over jittered events, with the
/// allowance `out_of_order`; per minute, the target's rows and DuckDB's
/// over the same events.
fn time_replay(out_of_order: &str) -> (Vec<Vec<serde_json::Value>>, Vec<Vec<serde_json::Value>>) {
    let mut replay = Replay::new(2, 0, 10, "");
    for p in 0..2 {
        replay.produce(p, &jittered(p, 150));
    }
    let allowance = format!("value = \"json\"\nout_of_order = \"{out_of_order}\"");
    replay.demo.edit_job(|s| {
        s.replace("column = \"_offset\"", "column = \"_timestamp\"")
            .replace("start = \"earliest\"", "start = \"2023-11-14T22:00:00Z\"")
            .replace("end = \"latest\"", "end = \"2023-11-14T23:00:00Z\"")
            .replace("chunk = 10", "chunk = \"1m\"")
            .replace("value = \"json\"", &allowance)
    });
    replay.demo.run_ok(&[]);
    let events = write_events(replay.demo.path(), &replay.produced);
    let expected = duckdb(&format!(
        "SELECT strftime(date_trunc('minute', make_timestamp(ts * 1000)), '%H:%M'), count(*), \
                sum(CAST(json_extract(value, '$.id') AS BIGINT)) \
         FROM read_json('{events}', columns = {{partition: 'INTEGER', off: 'BIGINT', ts: 'BIGINT', key: 'VARCHAR', value: 'VARCHAR'}}) \
         WHERE json_valid(value) AND json_type(value) = 'OBJECT' \
           AND coalesce(json_type(value, '$.amount') IN ('DOUBLE', 'UBIGINT', 'BIGINT'), true) \
         GROUP BY 1 ORDER BY 1"
    ));
    let got = duckdb(&format!(
        "SELECT strftime(date_trunc('minute', _timestamp AT TIME ZONE 'UTC'), '%H:%M'), count(*), sum(id) \
         FROM read_parquet('{}/warehouse/**/*.parquet') GROUP BY 1 ORDER BY 1",
        replay.demo.path().display()
    ));
    if out_of_order != "1ms" {
        for command in ["validate", "gaps"] {
            let out = replay.demo.run(&[command, &replay.demo.job_str()]);
            assert_eq!(code(&out), 0, "{command}: {}", text(&out));
        }
    }
    (got, expected)
}

#[test]
fn time_chunks_over_out_of_order_timestamps_hold_exactly_their_events() {
    let (got, expected) = time_replay("2m");
    assert_eq!(got, expected);
    assert!(expected.len() > 10, "events span many chunks: {expected:?}");
    // With almost no allowance these events break, chunks lose the events
    // that sit past their neighbours: the allowance is what makes it
    // exact.
    let (got, expected) = time_replay("1ms");
    assert_ne!(
        got, expected,
        "an allowance of 1 ms should miss late events"
    );
}

#[test]
fn a_login_the_broker_refuses_fails_at_the_brokers_key_without_showing_the_password() {
    // tansu with --authentication runs the SCRAM exchange; users it knows
    // live in persistent storage, which could not be made to work here
    // (S3 storage under moto forgets them), so the broker knows no one:
    // what is shown is the refusal, not a successful login.
    let how = Tansu {
        sasl: Some(("nobody".into(), String::new())),
        ..Tansu::default()
    };
    let broker = Broker::start_on(free_port(), &how);
    let demo = Demo {
        dir: tempfile::tempdir().expect("temp dir"),
    };
    let password = "pw-7e1c0c2b-not-to-be-printed";
    let sasl = "sasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"alice\"\nsasl_password = \"${KAFKA_PW}\"\nvalue = \"json\"";
    std::fs::write(
        demo.job(),
        job(&broker, "payments", 16, "").replace("value = \"json\"", sasl),
    )
    .expect("write job");
    let started = Instant::now();
    let out = demo.run_env(&["run", &demo.job_str()], &[("KAFKA_PW", password)]);
    let shown = text(&out);
    assert_eq!(
        code(&out),
        2,
        "a refused login is the job file's to fix: {shown}"
    );
    assert!(shown.contains("source.brokers"), "{shown}");
    assert!(
        shown.contains("unknown user"),
        "the broker's reason: {shown}"
    );
    assert!(!shown.contains(password), "{shown}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "a refused login is not retried for long"
    );
}

/// TLS as managed clusters speak it (MSK, Confluent Cloud): the broker's
/// certificate checked against the CA given, and a client certificate.
/// tansu's own TLS cannot be used here (its `--cert` and `--key` refuse
/// to be given together), so the TLS listener is socat's, in front of
/// tansu, with the test CA's certificate for localhost (from
/// `scripts/pg.sh`); tansu advertises it, so every connection is TLS.
#[test]
fn a_broker_behind_tls_is_replayed_with_a_client_certificate_and_a_wrong_ca_is_refused() {
    let how = Tansu {
        tls: true,
        ..Tansu::default()
    };
    let t = crate::postgres::tls::tls_dir();
    let t = t.display();
    let tls = |ca: &str, client: bool| {
        let mut keys = format!("tls_ca = \"{t}/{ca}.crt\"\n");
        if client {
            keys += &format!("tls_cert = \"{t}/client.crt\"\ntls_key = \"{t}/client.key\"\n");
        }
        keys + "value = \"json\""
    };
    let replay = Replay::on(Broker::start_on(free_port(), &how), 2, 60, 25, "");
    let job = std::fs::read_to_string(replay.demo.job()).expect("job");
    assert!(job.contains("localhost:"), "{job}");
    std::fs::write(
        replay.demo.job(),
        job.replace("value = \"json\"", &tls("ca", true)),
    )
    .expect("write job");
    let out = replay.demo.run_ok(&[]);
    replay.check_against_oracle();
    let out = text(&out);
    assert!(!out.contains("client.key"), "{out}");

    // A CA that did not sign the broker's certificate, and no client
    // certificate: both refused at the brokers' key, in seconds.
    for (ca, client, reason) in [("other-ca", true, "certificate"), ("ca", false, "")] {
        let demo = Demo {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        std::fs::write(
            demo.job(),
            job.replace("value = \"json\"", &tls(ca, client)),
        )
        .expect("write job");
        let started = Instant::now();
        let out = demo.run(&["plan", &demo.job_str()]);
        let shown = text(&out);
        assert_ne!(code(&out), 0, "{shown}");
        assert!(shown.contains("source.brokers"), "{shown}");
        assert!(shown.contains(reason), "{shown}");
        assert!(started.elapsed() < Duration::from_secs(90), "{shown}");
    }
}
