//! The engine through the service: per-guild models and their isolation.

use mynah::service::{Core, Mode, ReplyRequest, TrainRequest, Trigger};
use mynah::store::Store;

use crate::support;

const RU: &str = include_str!("../../data/sample/fcc-ru-excerpt.jsonl");

fn has_cyrillic(s: &str) -> bool {
    s.chars().any(|c| ('\u{0400}'..='\u{04FF}').contains(&c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guild_replies_only_with_its_own_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::config(dir.path());
    cfg.engine.max_minutes = 0.25;
    let store = Store::open(&cfg.database_url).await.unwrap();
    let core = Core::open(cfg, store).await.unwrap();
    core.import_jsonl(support::sample(), Some("1001"), true).await.unwrap();
    core.import_jsonl(RU, Some("2002"), true).await.unwrap();
    assert!(has_cyrillic(RU));

    for guild in ["1001", "2002"] {
        let req = TrainRequest { force: true, ..TrainRequest::new(Some(guild.into()), Trigger::Cli) };
        core.request_training(req).await.unwrap();
        assert_eq!(support::wait_training_done(&core).await.outcome, mynah::store::RunOutcome::Succeeded);
    }
    let en = core.model("1001").unwrap();
    let ru = core.model("2002").unwrap();
    assert_ne!(en.dir, ru.dir, "each guild has its own checkpoint");
    assert_ne!(en.tokenizer.vocab_size(), 0);

    let mut english_replies = Vec::new();
    for i in 0..8 {
        let req = ReplyRequest {
            guild_id: "1001".into(),
            author: "bob".into(),
            text: format!("hey, how is everyone doing? question {i}"),
            ..Default::default()
        };
        let out = core.reply(&req).await.unwrap();
        assert_eq!(out.mode, Mode::Model);
        english_replies.push(out.text);
    }
    for r in &english_replies {
        assert!(!has_cyrillic(r), "the English guild's reply contains Cyrillic: {r}");
    }
    let mut ru_cyrillic = 0;
    for _ in 0..8 {
        let req = ReplyRequest {
            guild_id: "2002".into(),
            author: "isomoar".into(),
            text: "привет".into(),
            ..Default::default()
        };
        let out = core.reply(&req).await.unwrap();
        ru_cyrillic += has_cyrillic(&out.text) as usize;
    }
    assert!(ru_cyrillic > 0, "the Russian guild's model speaks Russian");
}
