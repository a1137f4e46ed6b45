//! What only the PostgreSQL pass can test (CI's second run of the suite, with
//! `MYNAH_TEST_POSTGRES` naming a throwaway server): moving a SQLite store over.

use crate::support::{database_url, mynah, sqlite_url};

pub fn postgres() -> bool {
    let set = std::env::var("MYNAH_TEST_POSTGRES").is_ok_and(|s| !s.is_empty());
    if !set {
        eprintln!("skipped: MYNAH_TEST_POSTGRES names no PostgreSQL server (CI's second pass sets it)");
    }
    set
}

fn run(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The counts line of one table in the command's report.
fn line<'a>(report: &'a str, table: &str) -> Vec<&'a str> {
    let row = report.lines().find(|l| l.split_whitespace().next() == Some(table));
    row.map(|l| l.split_whitespace().skip(1).collect()).unwrap_or_default()
}

#[test]
fn a_sqlite_store_moves_to_postgres_and_a_second_run_copies_nothing() {
    if !postgres() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_url(dir.path());
    let corpus = dir.path().join("sample.jsonl");
    std::fs::write(&corpus, mynah::playground::SAMPLE).unwrap();
    let (ok, _, err) =
        run(mynah(dir.path()).env("DATABASE_URL", &sqlite).args(["corpus", "import"]).arg(&corpus));
    assert!(ok, "{err}");
    let (ok, _, err) = run(mynah(dir.path())
        .env("DATABASE_URL", &sqlite)
        .args(["user", "opt-out", "--guild", "fcc-city", "--user", "x"]));
    assert!(ok, "{err}");

    let pg = database_url(&dir.path().join("pg"));
    let migrate = || {
        let mut cmd = mynah(dir.path());
        cmd.env("DATABASE_URL", &pg).args(["db", "migrate-sqlite-to-postgres", "--from", &sqlite]);
        cmd
    };
    let (ok, out, err) = run(&mut migrate());
    assert!(ok, "{err}");
    assert_eq!(line(&out, "messages"), vec!["1500", "1500", "0"], "{out}");
    assert_eq!(line(&out, "opt_outs"), vec!["1", "1", "0"], "{out}");
    let (ok, out, err) = run(&mut migrate());
    assert!(ok, "{err}");
    assert_eq!(line(&out, "messages"), vec!["1500", "0", "1500"], "resumed, nothing new: {out}");

    let (ok, out, err) = run(mynah(dir.path()).env("DATABASE_URL", &pg).args(["stats", "--json"]));
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats["guilds"][0]["messages"], 1500, "{stats}");

    // A wrong source is named, and nothing is written.
    let missing = format!("sqlite://{}/nothing.db", dir.path().display());
    let (ok, _, err) = run(mynah(dir.path()).env("DATABASE_URL", &pg).args([
        "db",
        "migrate-sqlite-to-postgres",
        "--from",
        &missing,
    ]));
    assert!(!ok && err.contains("no SQLite database at"), "{err}");
    assert!(!dir.path().join("nothing.db").exists());
}
