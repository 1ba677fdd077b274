//! TLS to PostgreSQL as libpq's `sslmode` asks, against the suite's server,
//! which `scripts/pg.sh` starts with `ssl=on` and certificates of its own:
//! a CA, a server certificate naming `localhost` only, a second CA that
//! signed nothing, and a client certificate for the role `backfill_cert`.
//! The role `backfill_tls` may connect over TLS only (`hostnossl ...
//! reject`, as RDS's `force_ssl`), so a run that succeeds as that role
//! proves every connection it made was encrypted.

use std::path::PathBuf;

use super::*;

const TLS_PASSWORD: &str = "tls-secret-5f3a";

pub(crate) fn tls_dir() -> PathBuf {
    PathBuf::from(std::env::var("BACKFILL_TEST_PG_TLS").unwrap_or_else(|_| {
        panic!("BACKFILL_TEST_PG_TLS is not set: scripts/pg.sh makes the test certificates")
    }))
}

fn server_port() -> u16 {
    let url = pg_url();
    let after_host = url.rsplit_once(':').expect("a port in the test URL").1;
    after_host
        .split('/')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a numeric port in the test URL")
}

/// The TLS-only and certificate roles (cluster-wide, so made once by
/// whichever test gets there first), and this test's schema handed to the
/// TLS-only role.
fn tls_roles(admin: &Pg) {
    // Catalog updates of two tests at once collide ("tuple concurrently
    // updated"): one at a time.
    admin.exec(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock(7331);
         DO $$ BEGIN
            CREATE ROLE backfill_tls LOGIN PASSWORD '{TLS_PASSWORD}';
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         DO $$ BEGIN
            CREATE ROLE backfill_cert LOGIN;
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
         ALTER ROLE backfill_tls PASSWORD '{TLS_PASSWORD}';
         GRANT CREATE ON DATABASE postgres TO backfill_tls, backfill_cert;
         ALTER SCHEMA {0} OWNER TO backfill_tls;
         GRANT ALL ON SCHEMA {0} TO backfill_cert;
         COMMIT;",
        admin.schema
    ));
}

fn tls_url(user_and_password: &str, host: &str, params: &str) -> String {
    format!(
        "postgres://{user_and_password}@{host}:{}/postgres?{params}",
        server_port()
    )
}

fn ca(name: &str) -> String {
    tls_dir().join(format!("{name}.crt")).display().to_string()
}

fn run_with(demo: &Demo, url: &str, args: &[&str]) -> std::process::Output {
    let job = demo.job_str();
    let mut all = vec![args[0], job.as_str()];
    all.extend_from_slice(&args[1..]);
    // HOME without ~/.postgresql, so no default root certificate is found.
    let home = demo.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    demo.run_env(&all, &[(PG_ENV, url), ("HOME", home.to_str().unwrap())])
}

#[test]
fn a_job_runs_over_verified_tls_from_source_to_target_with_shared_state() {
    let admin = Pg::new("tls_run");
    tls_roles(&admin);
    let demo = Demo::new(6_000, "\"1 month\"");
    admin.load_demo(&demo);
    admin.exec(&format!(
        "ALTER TABLE {}.raw OWNER TO backfill_tls",
        admin.schema
    ));
    let url = tls_url(
        &format!("backfill_tls:{TLS_PASSWORD}"),
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca("ca")),
    );
    source_to_pg(&demo, &admin, "");
    target_to_pg(&demo, &admin, "tx", "replace");
    state_to_pg(&demo, &admin, "30s");

    // The role refuses plain connections: the same job without TLS fails,
    // naming the server's refusal, and prints no password.
    let plain = tls_url(
        &format!("backfill_tls:{TLS_PASSWORD}"),
        "localhost",
        "sslmode=disable",
    );
    let out = run_with(&demo, &plain, &["run"]);
    assert_ne!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("no encryption"), "{}", text(&out));
    assert!(!text(&out).contains(TLS_PASSWORD), "{}", text(&out));

    let out = run_with(&demo, &url, &["run"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(!text(&out).contains(TLS_PASSWORD), "{}", text(&out));
    let (months, _) = expected_global(&demo);
    assert_months_equal(&months, &admin.months("tx"));
    let v = run_with(&demo, &url, &["validate"]);
    assert_eq!(code(&v), 0, "{}", text(&v));
    // The server saw encrypted sessions only from this role.
    assert_eq!(
        admin.one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.usename = 'backfill_tls' AND NOT s.ssl"
        ),
        "0"
    );
}

#[test]
fn certificate_checks_follow_sslmode() {
    let admin = Pg::new("tls_modes");
    tls_roles(&admin);
    let demo = Demo::new(500, "\"1 month\"");
    admin.load_demo(&demo);
    admin.exec(&format!(
        "ALTER TABLE {0}.raw OWNER TO backfill_tls; GRANT SELECT ON {0}.raw TO backfill_cert",
        admin.schema
    ));
    source_to_pg(&demo, &admin, "");
    let user = format!("backfill_tls:{TLS_PASSWORD}");
    let (good, other) = (ca("ca"), ca("other-ca"));
    // (host, parameters, expected: Ok or a phrase of the error)
    let cases: Vec<(&str, String, Result<(), &str>)> = vec![
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={good}"),
            Ok(()),
        ),
        (
            "localhost",
            format!("sslmode=verify-full&sslrootcert={other}"),
            Err("not signed by a CA in sslrootcert"),
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-full&sslrootcert={good}"),
            Err("does not name the host"),
        ),
        // verify-ca checks the chain, not the name.
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={good}"),
            Ok(()),
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&sslrootcert={other}"),
            Err("not signed by a CA in sslrootcert"),
        ),
        // require encrypts without checking, unless given a CA (libpq's rule).
        ("127.0.0.1", "sslmode=require".into(), Ok(())),
        (
            "127.0.0.1",
            format!("sslmode=require&sslrootcert={other}"),
            Err("not signed by a CA in sslrootcert"),
        ),
        // The default (prefer) takes TLS when the server offers it.
        ("127.0.0.1", String::new(), Ok(())),
        (
            "localhost",
            "sslmode=verify-full".into(),
            Err("sslmode=verify-full needs the CA to trust"),
        ),
        (
            "localhost",
            "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".into(),
            Err("sslrootcert /nonexistent/ca.pem"),
        ),
    ];
    for (host, params, expected) in cases {
        let url = tls_url(&user, host, &params);
        let out = run_with(&demo, &url, &["plan"]);
        let shown = format!("{host} ?{params}: {}", text(&out));
        assert!(!text(&out).contains(TLS_PASSWORD), "{shown}");
        match expected {
            Ok(()) => assert_eq!(code(&out), 0, "{shown}"),
            Err(phrase) => {
                assert_ne!(code(&out), 0, "{shown}");
                assert!(text(&out).contains(phrase), "wanted \"{phrase}\": {shown}");
            }
        }
    }

    // A client certificate logs in the role it names; without it the
    // server refuses.
    let dir = tls_dir();
    let with_cert = tls_url(
        "backfill_cert",
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={good}&sslcert={}&sslkey={}",
            dir.join("client.crt").display(),
            dir.join("client.key").display()
        ),
    );
    let out = run_with(&demo, &with_cert, &["plan"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let without = tls_url(
        "backfill_cert",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={good}"),
    );
    let out = run_with(&demo, &without, &["plan"]);
    assert_ne!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).contains("certificate"), "{}", text(&out));
}
