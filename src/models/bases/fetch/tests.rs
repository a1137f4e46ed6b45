//! `fetch` against a hub lookalike on loopback that speaks the parts of the Hugging Face API
//! hf-hub uses (the repository listing, ranged downloads with the commit and hash headers), and
//! can fail a request or corrupt a file on purpose. Nothing reaches the internet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::*;
use crate::models::bases::{embedded, import_labelled, sha256_bytes, Format};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const CHUNK: usize = 1 << 20;

#[derive(Default)]
struct Lookalike {
    repos: HashMap<String, HashMap<String, Vec<u8>>>,
    /// Fail the ranged request for this file that starts at this offset, once.
    fail_at: Mutex<Option<(String, usize)>>,
    /// Flip a byte of this file as it is served.
    corrupt: Mutex<Option<String>>,
    /// Bytes served per file.
    served: Mutex<HashMap<String, usize>>,
}

type Shared = Arc<Lookalike>;

async fn listing(
    State(hub): State<Shared>,
    UrlPath((org, name, _rev)): UrlPath<(String, String, String)>,
) -> Response {
    match hub.repos.get(&format!("{org}/{name}")) {
        Some(files) => {
            let mut names: Vec<&String> = files.keys().collect();
            names.sort();
            let siblings: Vec<_> = names.iter().map(|f| serde_json::json!({ "rfilename": f })).collect();
            Json(serde_json::json!({ "sha": COMMIT, "siblings": siblings })).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn resolve(
    State(hub): State<Shared>,
    UrlPath((org, name, rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(content) = hub.repos.get(&format!("{org}/{name}")).and_then(|r| r.get(&file)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    assert_eq!(rev, COMMIT, "every file is fetched from the listed commit");
    // hf-hub always asks for a range, and may ask past the end.
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or("bytes=0-");
    let (a, b) = range.trim_start_matches("bytes=").split_once('-').unwrap_or(("0", ""));
    let start: usize = a.parse().unwrap_or(0);
    let end = b.parse::<usize>().unwrap_or(usize::MAX).min(content.len() - 1);
    {
        let mut fail = hub.fail_at.lock().unwrap();
        if fail.as_ref() == Some(&(file.clone(), start)) {
            *fail = None;
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    let mut body = content[start..=end].to_vec();
    if hub.corrupt.lock().unwrap().as_deref() == Some(file.as_str()) && body.len() > 1 {
        body[0] ^= 0xff;
    }
    *hub.served.lock().unwrap().entry(file.clone()).or_default() += body.len();
    // Weights are named by their sha256 (as the hub's LFS files are), small files by a git-like
    // 40-digit hash.
    let etag = if file.ends_with(".safetensors") || file.ends_with(".gguf") {
        sha256_bytes(content)
    } else {
        sha256_bytes(content)[..40].to_string()
    };
    (
        StatusCode::PARTIAL_CONTENT,
        [
            ("x-repo-commit", COMMIT.to_string()),
            ("etag", format!("\"{etag}\"")),
            ("content-range", format!("bytes {start}-{end}/{}", content.len())),
        ],
        body,
    )
        .into_response()
}

async fn start(hub: Shared) -> String {
    let app = Router::new()
        .route("/api/models/{org}/{name}/revision/{rev}", get(listing))
        .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn embedded_file(name: &str) -> Vec<u8> {
    embedded::FILES.iter().find(|(n, _)| *n == name).map(|(_, b)| b.to_vec()).unwrap()
}

fn hub(url: &str, cache: &Path) -> Hub {
    Hub {
        endpoint: Some(url.into()),
        cache: Some(cache.into()),
        token: None,
        progress: false,
        chunk: Some(CHUNK),
    }
}

fn request(repo: &str, file: Option<&str>) -> Request {
    Request { repo: repo.into(), revision: None, file: file.map(str::to_string) }
}

#[tokio::test]
async fn a_base_is_fetched_resumed_after_a_failure_checked_and_installed() {
    let mut repo = HashMap::new();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "README.md"] {
        repo.insert(f.to_string(), embedded_file(f));
    }
    repo.insert(".gitattributes".into(), b"*.safetensors filter=lfs".to_vec());
    let weights = repo["model.safetensors"].len();
    assert!(weights > 3 * CHUNK, "the weights span several requests");
    let mut lookalike = Lookalike::default();
    lookalike.repos.insert("mynah/Base-S".into(), repo);
    lookalike.repos.insert(
        "mynah/quantised".into(),
        HashMap::from([("m.Q4.gguf".to_string(), vec![1u8; 10]), ("m.Q8.gguf".to_string(), vec![2u8; 10])]),
    );
    let lookalike = Arc::new(lookalike);
    let url = start(lookalike.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let hub = hub(&url, cache.path());

    for bad in ["nope", "a/b/c", "../x", "org/"] {
        let e = fetch(&hub, &request(bad, None)).await.unwrap_err();
        assert!(matches!(e, FetchError::BadRepo(_)), "{bad}: {e}");
    }
    let e = fetch(&hub, &request("mynah/missing", None)).await.unwrap_err();
    assert!(matches!(e, FetchError::NotFound { .. }), "{e}");
    let e = fetch(&hub, &request("mynah/quantised", None)).await.unwrap_err();
    assert!(e.to_string().contains("--file: m.Q4.gguf, m.Q8.gguf"), "{e}");
    let e = fetch(&hub, &request("mynah/quantised", Some("m.Q5.gguf"))).await.unwrap_err();
    assert!(e.to_string().contains("no file \"m.Q5.gguf\""), "{e}");

    // The connection fails in the middle of the weights: the command reports it…
    *lookalike.fail_at.lock().unwrap() = Some(("model.safetensors".into(), 2 * CHUNK));
    let e = fetch(&hub, &request("mynah/Base-S", None)).await.unwrap_err();
    assert!(matches!(e, FetchError::Hub(_)), "{e}");
    // (hf-hub lets the requests it had already started run to their end.)
    loop {
        let before = lookalike.served.lock().unwrap().clone();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if *lookalike.served.lock().unwrap() == before {
            break;
        }
    }
    // …and the next attempt downloads only what was missing.
    lookalike.served.lock().unwrap().clear();
    let fetched = fetch(&hub, &request("mynah/Base-S", None)).await.unwrap();
    let again = lookalike.served.lock().unwrap()["model.safetensors"];
    assert!(again <= weights - 2 * CHUNK + 1, "resumed: {again} of {weights} bytes fetched again");
    assert_eq!(fetched.source, format!("hf://mynah/Base-S@{COMMIT}"));
    assert_eq!(fetched.name, "base-s");
    assert_eq!(
        std::fs::read(fetched.path.join("model.safetensors")).unwrap(),
        embedded_file("model.safetensors")
    );

    // Installed from the cache, the manifest names the repository and commit.
    let models = tempfile::tempdir().unwrap();
    let base =
        import_labelled(models.path(), &fetched.path, &fetched.source, Some(&fetched.name), None).unwrap();
    assert_eq!(base.manifest.format, Format::Hf);
    assert_eq!(base.manifest.source, fetched.source);
    assert_eq!(base.manifest.sha256, embedded::manifest().unwrap().sha256);

    // A corrupted download is refused and removed, so the next attempt fetches it whole.
    let fresh = tempfile::tempdir().unwrap();
    let hub = Hub { cache: Some(fresh.path().into()), ..hub };
    *lookalike.corrupt.lock().unwrap() = Some("model.safetensors".into());
    let e = fetch(&hub, &request("mynah/Base-S", None)).await.unwrap_err();
    assert!(matches!(e, FetchError::Corrupt { .. }), "{e}");
    *lookalike.corrupt.lock().unwrap() = None;
    let fetched = fetch(&hub, &request("mynah/Base-S", None)).await.unwrap();
    assert_eq!(
        std::fs::read(fetched.path.join("model.safetensors")).unwrap(),
        embedded_file("model.safetensors")
    );
}

#[test]
fn the_files_to_fetch_are_chosen_from_the_listing() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let hf = names(&["config.json", "model.safetensors", "tokenizer.json", "x.Q4.gguf"]);
    assert_eq!(choose("o/n", &hf, None).unwrap(), Wanted { files: names(&FILES), directory: true });
    assert_eq!(
        choose("o/n", &hf, Some("x.Q4.gguf")).unwrap(),
        Wanted { files: names(&["x.Q4.gguf"]), directory: false }
    );
    assert!(choose("o/n", &hf, Some("config.json")).is_err(), "--file takes GGUF files only");
    let sharded = names(&["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json"]);
    let e = choose("o/n", &sharded, None).unwrap_err();
    assert!(e.to_string().contains("split over several"), "{e}");
}
