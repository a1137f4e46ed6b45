//! The store with the JSONL corpus: import, export, malformed lines.

use mynah::corpus::Record;
use mynah::store::Store;

use crate::support;

async fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&support::config(dir.path()).database_url).await.unwrap();
    (store, dir)
}

fn records(text: &str) -> Vec<Record> {
    text.lines().map(|l| Record::parse_line(l, None).unwrap()).collect()
}

#[tokio::test]
async fn the_sample_round_trips_through_import_and_export() {
    let (store, _dir) = store().await;
    // Scrubbing off: this checks the interchange format itself.
    let summary = mynah::service::import_jsonl(&store, support::sample(), None, true, false).await.unwrap();
    assert_eq!((summary.imported, summary.skipped, summary.already_present), (1500, 0, 0));
    let exported = store.export(None).await.unwrap();
    assert_eq!(exported, records(support::sample()), "export gives back exactly what was imported, in order");

    let again = mynah::service::import_jsonl(&store, support::sample(), None, true, false).await.unwrap();
    assert_eq!((again.imported, again.already_present), (0, 1500), "importing twice stores nothing twice");
}

#[tokio::test]
async fn imports_are_scrubbed() {
    let (store, _dir) = store().await;
    mynah::service::import_jsonl(&store, support::sample(), None, true, true).await.unwrap();
    let all: Vec<String> = store.export(None).await.unwrap().into_iter().map(|r| r.content).collect();
    assert!(!all.iter().any(|c| c.contains("@gmail.com")), "the sample's one e-mail address is gone");
    assert_eq!(all.iter().filter(|c| c.contains("[email]")).count(), 1);
    let changed = all.iter().zip(records(support::sample())).filter(|(a, b)| **a != b.content).count();
    assert_eq!(changed, 1, "nothing else in the sample looks like a secret");
}

#[tokio::test]
async fn malformed_lines_are_skipped_or_abort_a_strict_import() {
    let (store, _dir) = store().await;
    let mut lines: Vec<String> = support::sample().lines().take(5).map(str::to_string).collect();
    lines.insert(2, "{\"id\": \"x\"}".into());
    lines.insert(4, "garbage".into());
    let text = lines.join("\n");

    let err = mynah::service::import_jsonl(&store, &text, None, true, true).await.unwrap_err();
    assert!(err.to_string().contains("2 malformed"), "{err}");
    assert_eq!(store.export(None).await.unwrap().len(), 0, "strict: nothing written");

    let summary = mynah::service::import_jsonl(&store, &text, None, false, true).await.unwrap();
    assert_eq!((summary.imported, summary.skipped), (5, 2));
}

#[tokio::test]
async fn a_guild_override_files_everything_under_that_guild() {
    let (store, _dir) = store().await;
    mynah::service::import_jsonl(&store, support::sample(), Some("777"), true, true).await.unwrap();
    let summaries = store.guild_summaries().await.unwrap();
    assert_eq!(summaries.len(), 1);
    assert_eq!((summaries[0].guild_id.as_str(), summaries[0].messages), ("777", 1500));
}
