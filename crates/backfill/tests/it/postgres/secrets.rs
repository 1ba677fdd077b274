//! Passwords in URLs and `${ENV}` values never reach any output, file or
//! state row.

use super::*;

#[test]
fn the_password_never_appears_in_any_output() {
    let pg = Pg::new("secret");
    let password = pg
        .url
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("the test URL has a password");
    let demo = Demo::new(2_000, "\"1 month\"");
    target_to_pg(&demo, &pg, "tx", "replace");
    let job = demo.job_str();
    let wrong = pg.url.replace(&password, "WrongPassw0rd");
    let mut outputs = vec![
        demo.run_env(&["-v", "run", &job], &[(PG_ENV, &pg.url)]),
        demo.run_env(&["status", &job], &[(PG_ENV, &pg.url)]),
        demo.run_env(&["plan", &job, "--json"], &[(PG_ENV, &pg.url)]),
        demo.run_env(&["validate", &job], &[(PG_ENV, &pg.url)]),
        demo.run_env(
            &["-v", "run", &job, "--from", "2023-01-01"],
            &[(PG_ENV, &wrong)],
        ),
    ];
    // A literal URL in the job file (no ${VAR}) is masked too.
    demo.edit_job(|s| s.replace(&format!("${{{PG_ENV}}}"), &pg.url));
    demo.run_ok(&["--dry-run"]);
    outputs.push(demo.run(&["-v", "run", &job]));
    outputs.push(demo.run(&["reset", &job, "--all"]));
    outputs.push(demo.run(&["-v", "run", &job]));
    let bad_host = pg.url.replace("127.0.0.1", "127.0.0.1:1");
    demo.edit_job(|s| s.replace(&pg.url, &bad_host));
    outputs.push(demo.run(&["-v", "run", &job]));
    // The password as a query parameter of a literal URL, in a job of its
    // own (its state is new: the target's identity is recorded there).
    let in_query = format!(
        "{}?application_name=x&password={password}",
        pg.url.replace(&format!(":{password}@"), "@")
    );
    let other = Demo::new(2_000, "\"1 month\"");
    target_to_pg(&other, &pg, "tx_query", "replace");
    other.edit_job(|s| s.replace(&format!("${{{PG_ENV}}}"), &in_query));
    let other_job = other.job_str();
    for args in [
        vec!["-v", "run", other_job.as_str()],
        vec!["status", other_job.as_str(), "--json"],
        vec!["plan", other_job.as_str(), "--json"],
        vec!["validate", other_job.as_str()],
    ] {
        outputs.push(other.run(&args));
    }
    assert_eq!(
        code(&outputs[outputs.len() - 4]),
        0,
        "{}",
        text(&outputs[outputs.len() - 4])
    );
    assert_not_stored(other.path(), &password);
    for out in &outputs {
        let all = text(out);
        assert!(!all.contains(&password), "password printed:\n{all}");
        assert!(!all.contains("WrongPassw0rd"), "password printed:\n{all}");
    }
    // The wrong password fails clearly, naming the masked URL.
    let failed = text(&outputs[4]);
    assert!(
        failed.contains("password authentication failed"),
        "{failed}"
    );
    // Nor is it stored.
    assert_not_stored(demo.path(), &password);
}

/// No file under `dir` but the job file holds `password`.
fn assert_not_stored(dir: &std::path::Path, password: &str) {
    for entry in walk(dir) {
        if let Ok(bytes) = std::fs::read(&entry) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains(password)
                    || entry.ends_with("backfill.toml"),
                "password stored in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_secret_in_every_place_never_reaches_any_output_file_or_state_row() {
    // Issue 20: one password, with the characters that escaping changes
    // (`"`, `\`, `'`), in the source, target and state URLs at once; every
    // command, text and JSON, success and failure; every file the job
    // leaves; every row of the state.
    let pg = Pg::new("sweep");
    let secret = "Sw\"e\\ep'9x";
    pg.exec(&format!(
        "DO $$ BEGIN CREATE ROLE bf_sweep LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         ALTER ROLE bf_sweep PASSWORD '{}'",
        secret.replace('\'', "''")
    ));
    let encoded: String = secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let host = pg
        .url
        .split_once('@')
        .map(|(_, h)| h.to_string())
        .expect("a URL with a host");
    let url = format!("postgres://bf_sweep:{encoded}@{host}");
    let demo = Demo::new(2_000, "\"1 month\"");
    pg.load_demo(&demo);
    source_to_pg(&demo, &pg, "");
    target_to_pg(&demo, &pg, "tx", "replace");
    state_to_pg(&demo, &pg, "30s");
    let job = demo.job_str();
    let env = [(PG_ENV, url.as_str())];
    let mut outputs = Vec::new();
    for args in [
        vec!["-v", "run", &job],
        vec!["run", &job, "--json"],
        vec!["run", &job, "--dry-run"],
        vec!["status", &job],
        vec!["status", &job, "--json"],
        vec!["plan", &job, "--json"],
        vec!["validate", &job],
        vec!["validate", &job, "--json"],
        vec!["gaps", &job, "--json"],
        vec!["gaps", &job, "--fix", "--run"],
        vec!["reset", &job, "--all"],
        vec!["-v", "run", &job],
        vec!["unlock", &job],
    ] {
        outputs.push((args.join(" "), demo.run_env(&args, &env)));
    }
    assert_eq!(code(&outputs[0].1), 0, "{}", text(&outputs[0].1));
    // Failures: a wrong password, an unreachable port.
    let wrong = url.replace(&encoded, &format!("{encoded}0"));
    outputs.push((
        "wrong password".into(),
        demo.run_env(&["-v", "run", &job], &[(PG_ENV, &wrong)]),
    ));
    let unreachable = url.replace("127.0.0.1:", "127.0.0.1:1");
    outputs.push((
        "unreachable".into(),
        demo.run_env(&["-v", "validate", &job], &[(PG_ENV, &unreachable)]),
    ));
    let forms = [
        secret.to_string(),
        encoded.clone(),
        // As JSON escapes it, and as Debug output does.
        secret.replace('\\', "\\\\").replace('"', "\\\""),
        "Sw\\\"e".to_string(),
    ];
    for (what, out) in &outputs {
        let all = text(out);
        for form in &forms {
            assert!(
                !all.contains(form.as_str()),
                "`{what}` printed the secret as {form:?}:\n{all}"
            );
        }
    }
    for form in &forms {
        assert_not_stored(demo.path(), form);
    }
    // No state row holds it either.
    let state_rows = pg.rows(&format!(
        "SELECT string_agg(t::text, '|') FROM (SELECT to_jsonb(r)::text AS t FROM {0}_state.runs r \
         UNION ALL SELECT to_jsonb(c)::text FROM {0}_state.chunks c \
         UNION ALL SELECT to_jsonb(a)::text FROM {0}_state.attempts a \
         UNION ALL SELECT to_jsonb(j)::text FROM {0}_state.jobs j \
         UNION ALL SELECT to_jsonb(n)::text FROM {0}_state.notes n) all_rows",
        pg.schema
    ));
    let dump = state_rows[0][0].clone();
    assert!(dump.len() > 100, "the state holds rows: {dump}");
    for form in &forms {
        assert!(
            !dump.contains(form.as_str()),
            "a state row holds the secret as {form:?}"
        );
    }
}
