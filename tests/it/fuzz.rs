//! Bad input, generated: JSONL imports, model bundles and API bodies. Whatever comes in, the
//! answer is a clear error (or success), never a panic, and nothing is half-written.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::ServiceExt;

use mynah::corpus::Record;
use mynah::service::Core;
use mynah::store::Store;

use crate::support;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A corpus line, a broken variant of one, or noise.
fn line() -> impl Strategy<Value = String> {
    let good = (1u64..1_000_000, "[a-z]{1,8}", ".{0,40}").prop_map(|(id, who, text)| {
        Record {
            id: id.to_string(),
            guild_id: "g".into(),
            channel_id: "c".into(),
            channel: "general".into(),
            author_id: who.clone(),
            author: who,
            content: text,
            timestamp: "2024-05-01T10:00:00Z".into(),
            parent_channel_id: None,
        }
        .to_line()
    });
    prop_oneof![
        4 => good.clone(),
        1 => (good, any::<prop::sample::Index>()).prop_map(|(l, i)| {
            let n = l.chars().count();
            l.chars().take(i.index(n + 1)).collect()
        }),
        1 => "[^\r\n]{0,80}",
        1 => Just(r#"{"id": 5, "content": null}"#.to_string()),
        1 => Just(r#"{"id":"1","guild_id":"g","channel_id":"c","author_id":"a","author":"a","content":"x","timestamp":"yesterday"}"#.to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_jsonl_import_stores_exactly_the_good_lines_or_nothing(lines in prop::collection::vec(line(), 0..30), strict in any::<bool>()) {
        let text = lines.join("\n");
        let (good, bad) = mynah::corpus::parse_all(&text, None);
        for r in &good {
            prop_assert!(r.validate().is_ok());
        }
        for b in &bad {
            prop_assert!(b.line >= 1 && b.line <= lines.len().max(1));
            prop_assert!(!b.error.is_empty());
        }
        let rt = runtime();
        rt.block_on(async {
            let store = Store::open("sqlite::memory:").await.unwrap();
            let result = mynah::service::import_jsonl(&store, &text, None, strict, true).await;
            let stored = store.export(None).await.unwrap().len();
            let distinct: std::collections::HashSet<&str> = good.iter().map(|r| r.id.as_str()).collect();
            match result {
                Ok(summary) => {
                    assert!(!strict || bad.is_empty());
                    assert_eq!(stored as u64, summary.imported);
                    assert_eq!(stored, distinct.len());
                    assert_eq!(summary.skipped as usize, bad.len());
                }
                Err(e) => {
                    assert!(strict && !bad.is_empty(), "only a strict import with bad lines fails: {e}");
                    assert_eq!(stored, 0, "a refused import writes nothing");
                }
            }
        });
    }
}

/// A valid bundle of a tiny model, trained once for all cases.
fn valid_bundle() -> &'static [u8] {
    static BUNDLE: OnceLock<Vec<u8>> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        use mynah::engine::{run, train};
        let lines: Vec<_> = support::sample()
            .lines()
            .take(300)
            .map(|l| Record::parse_line(l, None).unwrap().chat_line())
            .collect();
        let mut opts = train::TrainOptions::new(mynah::engine::Preset::tiny());
        opts.epochs = 1;
        opts.max_seconds = Some(10.0);
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let spec = run::RunSpec {
            lines: &lines,
            opts: &opts,
            base: None,
            parent: dir.path(),
            name: "run-1",
            preset_label: "tiny".into(),
            corpus_span: (None, None),
        };
        let (_, _, run) = run::train_and_save(&spec, &candle_core::Device::Cpu, &cancel, |_| {}).unwrap();
        mynah::models::bundle::pack(&run).unwrap()
    })
}

/// Ways to spoil a bundle.
#[derive(Debug, Clone)]
enum Damage {
    Truncate(prop::sample::Index),
    Flip(Vec<(prop::sample::Index, u8)>),
    Garbage(Vec<u8>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..8).prop_map(Damage::Flip),
        prop::collection::vec(any::<u8>(), 0..2048).prop_map(Damage::Garbage),
    ]
}

fn apply(d: &Damage, valid: &[u8]) -> Vec<u8> {
    match d {
        Damage::Truncate(i) => valid[..i.index(valid.len())].to_vec(),
        Damage::Flip(flips) => {
            let mut b = valid.to_vec();
            for (i, x) in flips {
                let at = i.index(b.len());
                b[at] ^= x;
            }
            b
        }
        Damage::Garbage(g) => g.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_bundle_is_refused_whole_or_installed_whole(d in damage()) {
        let bytes = apply(&d, valid_bundle());
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = support::config(dir.path());
            let store = Store::open(&cfg.database_url).await.unwrap();
            let core = Core::open(cfg.clone(), store).await.unwrap();
            match core.install_bundle("42", bytes).await {
                Ok(accepted) => {
                    // Damage that missed everything that matters (tar padding, say).
                    assert_eq!(core.status().await.unwrap().models[0].run, format!("run-{}", accepted.run_id));
                }
                Err(e) => {
                    assert!(matches!(e, mynah::service::ServiceError::BadBundle(_)), "{e}");
                    let guild_dir = cfg.models_dir.join("42");
                    let left: Vec<_> = std::fs::read_dir(&guild_dir)
                        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
                        .unwrap_or_default();
                    assert!(left.is_empty(), "nothing is left behind: {left:?}");
                    assert!(core.status().await.unwrap().models.is_empty());
                    assert!(core.runs(None, 5).await.unwrap().is_empty(), "no run is recorded");
                }
            }
        });
    }
}

/// A body for the API: JSON of any shape, or bytes.
fn body() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    let json = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("epochs".to_string()),
                    Just("force".to_string()),
                    Just("guild_id".to_string()),
                    Just("max_minutes".to_string()),
                    "[a-z]{1,6}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop_oneof![3 => json.prop_map(|v| v.to_string()), 1 => any::<String>()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn api_bodies_get_an_answer_never_a_server_error(
        body in body(),
        route in prop::sample::select(vec![("POST", "/api/ml/train"), ("POST", "/api/ml/initialize"), ("DELETE", "/api/ml/train"), ("GET", "/api/ml/should-train")]),
    ) {
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let cfg = support::config(dir.path());
            let store = Store::open(&cfg.database_url).await.unwrap();
            let core: Arc<Core> = Core::open(cfg, store).await.unwrap();
            core.import_jsonl(&support::sample().lines().take(15).collect::<Vec<_>>().join("\n"), Some("42"), true).await
                .unwrap();
            let req = Request::builder()
                .method(route.0)
                .uri(route.1)
                .header("content-type", "application/json")
                .body(Body::from(body.clone()))
                .unwrap();
            let res = mynah::api::router(core.clone()).oneshot(req).await.unwrap();
            let status = res.status();
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            assert!(!status.is_server_error(), "{} {} with {body:?}: {status} {bytes:?}", route.0, route.1);
            if status.is_client_error() && status != StatusCode::METHOD_NOT_ALLOWED {
                let v: serde_json::Value = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|e| panic!("errors are JSON ({e}): {bytes:?}"));
                assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
            }
            // A request that started a training must be a well-formed one.
            if core.is_training() {
                core.cancel_training();
            }
        });
    }
}
