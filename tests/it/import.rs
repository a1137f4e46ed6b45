//! `mynah corpus import` of DiscordChatExporter exports through the binary: a directory of
//! them (the hand-written sample in `tests/data/dce/`), the skip report, idempotency, opt-outs,
//! and a broken file that costs only itself.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::mynah;

const GUILD: &str = "1000000000000000001";
const GENERAL: &str = "2000000000000000001";
const DAVE: &str = "4000000000000000004";

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dce")
}

fn import(dir: &Path, args: &[&str], input: &Path) -> Output {
    mynah(dir).args(["corpus", "import"]).args(args).arg(input).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The guild's stored messages, as `mynah corpus export` gives them.
fn stored(dir: &Path, guild: &str) -> Vec<serde_json::Value> {
    let out = mynah(dir).args(["corpus", "export", "--guild", guild]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ids(records: &[serde_json::Value]) -> Vec<String> {
    let mut ids: Vec<String> = records.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn by_id<'a>(records: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    records.iter().find(|r| r["id"] == id).unwrap()
}

#[test]
fn a_directory_of_exports_is_imported_with_a_report_of_what_was_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let out = import(dir.path(), &[], &sample_dir());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "imported 6, skipped 0 malformed, 0 already present",
            "skipped 2 from bots, 3 system messages, 2 empty or attachment-only",
            "read 2 files: 2 DiscordChatExporter JSON, 0 JSONL",
        ]
    );

    let records = stored(dir.path(), GUILD);
    let expected: Vec<String> =
        ["001", "002", "006", "008", "101", "102"].iter().map(|n| format!("3000000000000000{n}")).collect();
    assert_eq!(ids(&records), expected);

    let first = by_id(&records, "3000000000000000001");
    assert_eq!(first["author"], "Alice A.", "the member's nickname is the author's name");
    assert_eq!(first["author_id"], "4000000000000000001");
    assert_eq!((&first["channel_id"], &first["channel"]), (&GENERAL.into(), &"general".into()));
    assert!(first.get("parent_channel_id").is_none());
    let content = first["content"].as_str().unwrap();
    assert!(content.contains("[email]") && !content.contains("alice@example.org"), "scrubbed: {content}");
    assert_eq!(by_id(&records, "3000000000000000002")["timestamp"], "2024-03-01T10:05:30+01:00");
    assert_eq!(by_id(&records, "3000000000000000002")["author"], "bob");

    let in_thread = by_id(&records, "3000000000000000102");
    assert_eq!(in_thread["channel_id"], "2000000000000000101");
    assert_eq!(in_thread["channel"], "release plans");
    assert_eq!(in_thread["parent_channel_id"], GENERAL);

    let again = import(dir.path(), &[], &sample_dir());
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again).lines().next(), Some("imported 0, skipped 0 malformed, 6 already present"));
    assert_eq!(stored(dir.path(), GUILD).len(), 6);
}

#[test]
fn an_opted_out_authors_exported_messages_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let out = mynah(dir.path()).args(["user", "opt-out", "--guild", GUILD, "--user", DAVE]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let out = import(dir.path(), &[], &sample_dir());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().next(),
        Some("imported 5, skipped 0 malformed, 0 already present, 1 left out (their authors opted out)")
    );
    let records = stored(dir.path(), GUILD);
    assert_eq!(records.len(), 5);
    assert!(records.iter().all(|r| r["author_id"] != DAVE));
}

#[test]
fn a_broken_file_is_named_and_the_others_are_still_imported() {
    let input = tempfile::tempdir().unwrap();
    let general = "Mynah Test Server - Text Channels - general [2000000000000000001].json";
    std::fs::copy(sample_dir().join(general), input.path().join(general)).unwrap();
    let thread = std::fs::read_to_string(
        sample_dir().join("threads/Mynah Test Server - general - release plans [2000000000000000101].json"),
    )
    .unwrap();
    std::fs::create_dir(input.path().join("more")).unwrap();
    std::fs::write(input.path().join("more/broken.json"), &thread[..thread.len() / 2]).unwrap();
    let line = r#"{"id": "j1", "guild_id": "g", "channel_id": "c", "channel": "misc", "author_id": "a", "author": "ann", "content": "from a JSONL file", "timestamp": "2024-03-03T00:00:00Z"}"#;
    std::fs::write(input.path().join("more/older.jsonl"), format!("{line}\nnot json\n")).unwrap();
    std::fs::write(input.path().join("notes.txt"), "not an input").unwrap();

    // --strict reads everything first and imports nothing.
    let dir = tempfile::tempdir().unwrap();
    let out = import(dir.path(), &["--strict", "--guild", "77"], input.path());
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("more/broken.json") && err.contains("more/older.jsonl: line 2"), "{err}");
    assert_eq!(stored(dir.path(), "77").len(), 0);

    let out = import(dir.path(), &["--guild", "77"], input.path());
    assert!(!out.status.success(), "a failed file fails the command");
    let err = stderr(&out);
    assert!(err.contains("more/broken.json: Failed to import"), "{err}");
    assert!(err.contains("1 of 3 files could not be imported"), "{err}");
    assert!(err.contains("more/older.jsonl: line 2:"), "{err}");
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "imported 5, skipped 1 malformed, 0 already present",
            "skipped 1 from bots, 3 system messages, 1 empty or attachment-only",
            "read 3 files: 1 DiscordChatExporter JSON, 1 JSONL, 1 failed",
        ]
    );
    let records = stored(dir.path(), "77");
    assert_eq!(records.len(), 5, "--guild applies to both formats");
    assert!(records.iter().any(|r| r["id"] == "j1"));
}

#[test]
fn a_single_export_file_and_standard_input_are_imported_too() {
    let dir = tempfile::tempdir().unwrap();
    let file =
        sample_dir().join("threads/Mynah Test Server - general - release plans [2000000000000000101].json");
    let out = import(dir.path(), &[], &file);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        [
            "imported 2, skipped 0 malformed, 0 already present",
            "skipped 1 from bots, 0 system messages, 1 empty or attachment-only",
        ]
    );

    let mut child = mynah(dir.path())
        .args(["corpus", "import", "--guild", "9", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let text = std::fs::read(&file).unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &text).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stored(dir.path(), "9").len(), 2);
}
