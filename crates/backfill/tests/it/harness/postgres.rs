//! A PostgreSQL schema of a test's own on the suite's server, and the
//! demo job pointed at it as source, target or shared state.

use futures::SinkExt;

use super::*;

pub fn pg_url() -> String {
    std::env::var("BACKFILL_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "BACKFILL_TEST_PG_URL is not set: run the suite through scripts/test.sh, which starts \
             a throwaway PostgreSQL (scripts/pg.sh)"
        )
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A schema of this test's own, dropped at the end.
pub struct Pg {
    pub url: String,
    pub schema: String,
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    pub fn new(name: &str) -> Pg {
        Pg::on(pg_url(), name)
    }

    /// A schema of its own on the server at `url`.
    pub fn on(url: String, name: &str) -> Pg {
        let rt = runtime();
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to the test PostgreSQL");
            tokio::spawn(conn);
            client
        });
        let schema = format!("t_{name}_{}", std::process::id());
        let pg = Pg {
            url,
            schema,
            rt,
            client,
        };
        pg.exec(&format!(
            "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}; SET TIME ZONE 'UTC'",
            pg.schema
        ));
        pg
    }

    /// A new connection, after the server restarted.
    pub fn reconnect(&mut self) {
        let url = self.url.clone();
        self.client = self.rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("reconnect to PostgreSQL");
            tokio::spawn(conn);
            client
        });
        self.exec("SET TIME ZONE 'UTC'");
    }

    pub fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Rows as text, NULL as "NULL".
    pub fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        let msgs = self
            .rt
            .block_on(self.client.simple_query(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_string())
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// The first value, or `None` when the query fails (a table not there yet).
    pub fn try_one(&self, sql: &str) -> Option<String> {
        let msgs = self.rt.block_on(self.client.simple_query(sql)).ok()?;
        msgs.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
    }

    pub fn one(&self, sql: &str) -> String {
        self.rows(sql)[0][0].clone()
    }

    /// The demo source as the table `raw` (with an index on the range column).
    pub fn load_demo(&self, demo: &Demo) {
        let csv = demo.path().join("raw.csv");
        duckdb(&format!(
            "COPY (SELECT * FROM read_parquet('{}')) TO '{}' (HEADER)",
            demo.source_glob(),
            csv.display()
        ));
        self.exec(&format!(
            "CREATE TABLE {}.raw (transaction_id bigint, customer_id bigint, created_at timestamp, \
             amount double precision, status text, region text, category text, email text); \
             CREATE INDEX ON {0}.raw (created_at)",
            self.schema
        ));
        let data = std::fs::read(&csv).expect("read csv");
        let sql = format!("COPY {}.raw FROM STDIN (FORMAT csv, HEADER)", self.schema);
        self.rt.block_on(async {
            let sink = self.client.copy_in(sql.as_str()).await.expect("copy in");
            futures::pin_mut!(sink);
            sink.send(bytes::Bytes::from(data)).await.expect("send csv");
            sink.finish().await.expect("finish copy");
        });
    }

    /// Per month: rows and sum(amount), like `expected_global`.
    pub fn months(&self, table: &str) -> Vec<Vec<serde_json::Value>> {
        self.rows(&format!(
            "SELECT extract(month FROM created_at)::int AS m, count(*), round(sum(amount)::numeric, 2) \
             FROM {}.{table} GROUP BY m ORDER BY m",
            self.schema
        ))
        .into_iter()
        .map(|r| {
            vec![
                serde_json::json!(r[0].parse::<i64>().unwrap()),
                serde_json::json!(r[1].parse::<i64>().unwrap()),
                serde_json::json!(r[2].parse::<f64>().unwrap()),
            ]
        })
        .collect()
    }

    /// Count and an order-independent digest of every row of a table
    /// (without the quarantine's `_run`, which numbers the run that wrote it).
    pub fn fingerprint(&self, table: &str) -> (String, String) {
        let r = self.rows(&format!(
            "SELECT count(*), coalesce(md5(string_agg(j, '|' ORDER BY j)), '') \
             FROM (SELECT (to_jsonb(t) - '_run')::text AS j FROM {}.{table} t) rows",
            self.schema
        ));
        (r[0][0].clone(), r[0][1].clone())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.rt.block_on(
            self.client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema)),
        );
    }
}

pub const PG_ENV: &str = "BF_PG_URL";

/// Points the demo job's source at `schema.raw` in PostgreSQL.
pub fn source_to_pg(demo: &Demo, pg: &Pg, extra: &str) {
    let schema = pg.schema.clone();
    demo.edit_job(|s| {
        s.replace(
            "format = \"parquet\"          # parquet | csv | json (newline-delimited)\npath = \"source/\"",
            &format!("format = \"postgres\"\nurl = \"${{{PG_ENV}}}\"\ntable = \"{schema}.raw\"\n{extra}\n#"),
        )
    });
}

/// Points the demo job's target (and quarantine) at PostgreSQL.
pub fn target_to_pg(demo: &Demo, pg: &Pg, table: &str, mode: &str) {
    let schema = pg.schema.clone();
    demo.edit_job(|s| {
        let start = s.find("[quarantine]").expect("quarantine section");
        let end = s[start..].find("[validate]").expect("validate section") + start;
        let s = format!("{}{}", &s[..start], &s[end..]);
        let start = s.find("[target]").expect("target section");
        let end = s[start..].find("[run]").expect("run section") + start;
        format!(
            "{}[target]\nformat = \"postgres\"\nurl = \"${{{PG_ENV}}}\"\ntable = \"{schema}.{table}\"\nmode = \"{mode}\"\nkeys = [\"transaction_id\"]\n\n{}",
            &s[..start],
            &s[end..]
        )
    });
}

pub fn run_pg(demo: &Demo, pg: &Pg, args: &[&str]) -> std::process::Output {
    let job = demo.job_str();
    let mut all = vec![args[0], job.as_str()];
    all.extend_from_slice(&args[1..]);
    demo.run_env(&all, &[(PG_ENV, &pg.url)])
}

pub fn run_pg_ok(demo: &Demo, pg: &Pg, args: &[&str]) -> std::process::Output {
    let out = run_pg(demo, pg, args);
    assert_eq!(code(&out), 0, "{}", text(&out));
    out
}

pub fn quarantine_per_rule(pg: &Pg, table: &str) -> Vec<Vec<serde_json::Value>> {
    pg.rows(&format!(
        "SELECT _rule, count(*) FROM {}.{table} GROUP BY _rule ORDER BY _rule",
        pg.schema
    ))
    .into_iter()
    .map(|r| {
        vec![
            serde_json::json!(r[0]),
            serde_json::json!(r[1].parse::<i64>().unwrap()),
        ]
    })
    .collect()
}

/// Adds a shared PostgreSQL state store (schema of its own) to the job.
pub fn state_to_pg(demo: &Demo, pg: &Pg, lease: &str) {
    let schema = format!("{}_state", pg.schema);
    demo.edit_job(|s| {
        s.replace(
            "[state]\n",
            &format!(
                "[state]\nurl = \"${{{PG_ENV}}}\"\nschema = \"{schema}\"\nlease = \"{lease}\"\n"
            ),
        )
    });
}
