//! Downloading a base from the Hugging Face hub (`mynah base fetch ORG/NAME`): choosing what to
//! fetch from the repository's file list (a Hugging Face llama directory, or one GGUF file), one
//! commit for all files, resumable downloads into hf-hub's cache (outside the repository), and a
//! check of each large file against the hash the hub names it by. Installing is `import`'s work.

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};

use super::FILES;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0:?} is not a hub repository: write it as ORG/NAME (for example HuggingFaceTB/SmolLM2-135M-Instruct)")]
    BadRepo(String),
    #[error("{repo}: not found on the hub (a private or gated repository needs HF_TOKEN)")]
    NotFound { repo: String },
    #[error("{repo}: {reason}")]
    Unusable { repo: String, reason: String },
    #[error("{repo} has several GGUF files; choose one with --file: {}", files.join(", "))]
    Ambiguous { repo: String, files: Vec<String> },
    #[error("{file}: the download does not match the hub's hash (sha256 {got}, expected {want}); it was removed, run the command again")]
    Corrupt { file: String, got: String, want: String },
    #[error("hub: {0}")]
    Hub(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct Request {
    /// `ORG/NAME`.
    pub repo: String,
    /// A branch, tag or commit (default: `main`).
    pub revision: Option<String>,
    /// One `.gguf` file of the repository, when it has several (or to prefer it).
    pub file: Option<String>,
}

/// Where and how to download. [`Hub::from_env`] is what the command uses: `HF_ENDPOINT`,
/// `HF_HOME` (the cache) and `HF_TOKEN` as the Python client reads them.
#[derive(Debug, Clone, Default)]
pub struct Hub {
    pub endpoint: Option<String>,
    pub cache: Option<PathBuf>,
    pub token: Option<String>,
    pub progress: bool,
    /// Bytes per request, and so the granularity of resuming (hf-hub's default: 10 MB).
    pub chunk: Option<usize>,
}

impl Hub {
    pub fn from_env() -> Hub {
        Hub {
            token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
            progress: true,
            ..Hub::default()
        }
    }
}

/// What was downloaded: a directory to import (Hugging Face layout) or a GGUF file.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    /// `hf://ORG/NAME@COMMIT`, for the manifest.
    pub source: String,
    /// The name the base gets by default: the repository's, lower-cased.
    pub name: String,
}

/// Downloads what `request` names into the hub cache, resuming a download an earlier attempt
/// left unfinished, and checks every file the hub names by its sha256.
pub async fn fetch(hub: &Hub, request: &Request) -> Result<Fetched, FetchError> {
    let repo_id = request.repo.trim();
    let valid = repo_id.split('/').count() == 2
        && repo_id.split('/').all(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        });
    if !valid {
        return Err(FetchError::BadRepo(request.repo.clone()));
    }
    let api = build(hub)?;
    let revision = request.revision.clone().unwrap_or_else(|| "main".into());
    let info = api
        .repo(Repo::with_revision(repo_id.to_string(), RepoType::Model, revision))
        .info()
        .await
        .map_err(|e| not_found(repo_id, e))?;
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let wanted = choose(repo_id, &files, request.file.as_deref())?;
    // Every file from the commit the listing came from, even if the branch moves meanwhile.
    let repo = api.repo(Repo::with_revision(repo_id.to_string(), RepoType::Model, info.sha.clone()));
    let mut first = None;
    for file in &wanted.files {
        let path = repo.get(file).await.map_err(|e| not_found(repo_id, e))?;
        verify(&path, file)?;
        first.get_or_insert(path);
    }
    // A model card, for the licence it declares; a repository without one is fine.
    if wanted.directory && files.iter().any(|f| f == "README.md") {
        if let Ok(path) = repo.get("README.md").await {
            verify(&path, "README.md")?;
        }
    }
    let first = first
        .ok_or_else(|| FetchError::Unusable { repo: repo_id.into(), reason: "nothing to fetch".into() })?;
    let path = if wanted.directory { first.parent().map(Path::to_path_buf).unwrap_or(first) } else { first };
    // Hub names use a base name's characters but may be longer than its 64.
    let name: String =
        repo_id.rsplit('/').next().unwrap_or(repo_id).to_lowercase().chars().take(64).collect();
    Ok(Fetched { path, source: format!("hf://{repo_id}@{}", info.sha), name })
}

impl From<ApiError> for FetchError {
    /// One line: hf-hub's and reqwest's errors each repeat their source's message, so the chain
    /// would name the URL three times. The request's URL and the innermost cause say it all.
    fn from(e: ApiError) -> FetchError {
        let ApiError::RequestError(r) = &e else {
            return FetchError::Hub(e.to_string());
        };
        let url = r.url().map(|u| u.to_string()).unwrap_or_default();
        if let Some(status) = r.status() {
            return FetchError::Hub(format!("{url} answered {status}"));
        }
        let mut cause: &dyn std::error::Error = r;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        FetchError::Hub(format!("could not reach {url}: {cause}"))
    }
}

fn build(hub: &Hub) -> Result<hf_hub::api::tokio::Api, FetchError> {
    let mut builder = ApiBuilder::from_env().with_progress(hub.progress);
    if let Some(endpoint) = &hub.endpoint {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    if let Some(cache) = &hub.cache {
        builder = builder.with_cache_dir(cache.clone());
    }
    if hub.token.is_some() {
        builder = builder.with_token(hub.token.clone());
    }
    if hub.chunk.is_some() {
        builder = builder.with_chunk_size(hub.chunk);
    }
    Ok(builder.build()?)
}

/// A 401 or 404 from the hub means the repository (or file) is not there for us.
fn not_found(repo: &str, e: ApiError) -> FetchError {
    match &e {
        ApiError::RequestError(r) if matches!(r.status().map(|s| s.as_u16()), Some(401 | 403 | 404)) => {
            FetchError::NotFound { repo: repo.into() }
        }
        _ => e.into(),
    }
}

#[derive(Debug, PartialEq)]
struct Wanted {
    files: Vec<String>,
    /// The files make a Hugging Face directory (else: one GGUF file).
    directory: bool,
}

/// The files to download from a repository holding `files`.
fn choose(repo: &str, files: &[String], chosen: Option<&str>) -> Result<Wanted, FetchError> {
    let ggufs: Vec<String> = files.iter().filter(|f| f.to_lowercase().ends_with(".gguf")).cloned().collect();
    if let Some(file) = chosen {
        if !file.to_lowercase().ends_with(".gguf") {
            return Err(FetchError::Unusable {
                repo: repo.into(),
                reason: format!("--file takes a .gguf file, not {file:?}"),
            });
        }
        if !files.iter().any(|f| f == file) {
            let have = if ggufs.is_empty() { "none".to_string() } else { ggufs.join(", ") };
            return Err(FetchError::Unusable {
                repo: repo.into(),
                reason: format!("it has no file {file:?} (its GGUF files: {have})"),
            });
        }
        return Ok(Wanted { files: vec![file.to_string()], directory: false });
    }
    if FILES.iter().all(|f| files.iter().any(|have| have == f)) {
        return Ok(Wanted { files: FILES.iter().map(|f| f.to_string()).collect(), directory: true });
    }
    match ggufs.len() {
        1 => Ok(Wanted { files: ggufs, directory: false }),
        0 => {
            let sharded = files.iter().any(|f| f == "model.safetensors.index.json");
            Err(FetchError::Unusable {
                repo: repo.into(),
                reason: if sharded {
                    "its weights are split over several safetensors files, which mynah does not import; choose a repository with one model.safetensors or a GGUF file".into()
                } else {
                    format!("it is neither a Hugging Face llama directory ({FILES:?}) nor a GGUF file")
                },
            })
        }
        _ => Err(FetchError::Ambiguous { repo: repo.into(), files: ggufs }),
    }
}

/// Checks a downloaded file against the name hf-hub stored it under: for files the hub keeps in
/// LFS (weights) that name is the content's sha256. Small files are named by a git hash, which
/// is not checked. A mismatching file is removed so that the next attempt downloads it again.
fn verify(path: &Path, file: &str) -> Result<(), FetchError> {
    let blob = std::fs::canonicalize(path)?;
    let want = blob.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if want.len() != 64 || !want.chars().all(|c| c.is_ascii_hexdigit()) {
        return Ok(());
    }
    let got = super::sha256_file(&blob).map_err(|e| match e {
        super::BaseError::Io(e) => FetchError::Io(e),
        other => FetchError::Io(std::io::Error::other(other.to_string())),
    })?;
    if got.eq_ignore_ascii_case(&want) {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&blob);
    Err(FetchError::Corrupt { file: file.into(), got, want })
}

#[cfg(test)]
mod tests;
