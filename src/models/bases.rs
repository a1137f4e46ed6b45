//! Pretrained bases on disk: `models/base/<name>/` holds a llama checkpoint in Hugging Face
//! layout (`config.json`, `model.safetensors`, `tokenizer.json`) and `manifest.json` (source,
//! licence, parameters, hash). Importing from GGUF or from a Hugging Face directory, listing,
//! removing, and choosing the base new trainings start from.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::checkpoint::{self, BaseRef};
use crate::engine::model::{self, ModelConfig};
use crate::engine::run::BaseRun;
use crate::engine::{gguf, EngineError};

pub mod embedded;
pub mod fetch;

/// The directory under `models/` that holds the bases.
pub const DIR: &str = "base";
/// Files every base has besides its manifest.
pub const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("{0:?} is not a valid base name: use letters, digits, '.', '-' and '_' (at most 64)")]
    BadName(String),
    #[error("a base named {0:?} is already installed; remove it first or choose --name")]
    Exists(String),
    #[error("no base named {0:?} is installed (see `mynah base list`)")]
    Missing(String),
    #[error("{path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a base's weights came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A llama.cpp GGUF file, dequantised on import.
    Gguf,
    /// A Hugging Face directory (`config.json`, `model.safetensors`, `tokenizer.json`).
    Hf,
}

/// `manifest.json` of an installed base.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// The file or directory it was imported from, or the hub repository it was fetched from.
    pub source: String,
    pub format: Format,
    /// The licence the source declares, `unknown` when it declares none.
    pub licence: String,
    pub parameters: u64,
    /// SHA-256 of `model.safetensors`: runs refer to their base by it.
    pub sha256: String,
    pub imported: chrono::DateTime<chrono::Utc>,
}

/// An installed base.
#[derive(Debug, Clone, PartialEq)]
pub struct Base {
    pub path: PathBuf,
    pub manifest: Manifest,
}

impl Base {
    /// How a run fine-tuned from this base names it.
    pub fn reference(&self) -> BaseRef {
        BaseRef { name: self.manifest.name.clone(), sha256: self.manifest.sha256.clone() }
    }

    /// The base as a training starts from it.
    pub fn run(&self) -> BaseRun<'_> {
        BaseRun { path: &self.path, reference: self.reference() }
    }
}

/// The installed base a run refers to: the one with its hash, whatever it is called here.
pub fn find(models_dir: &Path, reference: &BaseRef) -> Option<PathBuf> {
    if let Some(b) = list(models_dir).into_iter().find(|b| b.manifest.sha256 == reference.sha256) {
        return Some(b.path);
    }
    // A run of the embedded base finds it even where it was never installed (or was removed).
    let embedded = embedded::manifest().ok()?;
    (embedded.sha256 == reference.sha256).then(|| embedded::install(models_dir).ok()).flatten()
}

/// Loads a run directory, putting a run of adapters on its base from those installed under
/// `models_dir`; without `keep_model`, as it serves (see [`checkpoint::load_with_bases`]).
pub fn load_run(
    run: &Path,
    device: &Device,
    models_dir: &Path,
    keep_model: bool,
) -> Result<checkpoint::Loaded, EngineError> {
    checkpoint::load_with_bases(run, device, &|r| find(models_dir, r), keep_model)
}

/// Which base new trainings start from (`MYNAH_BASE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Choice {
    /// The newest base an operator imported, or else mynah's embedded one.
    #[default]
    Auto,
    /// From scratch, whatever is installed.
    None,
    Named(String),
}

impl std::str::FromStr for Choice {
    type Err = BaseError;
    fn from_str(s: &str) -> Result<Choice, BaseError> {
        match s.trim() {
            "" | "auto" => Ok(Choice::Auto),
            "none" => Ok(Choice::None),
            name => {
                check_name(name)?;
                Ok(Choice::Named(name.to_string()))
            }
        }
    }
}

/// A base name: letters, digits, `.`, `-` and `_`, at most 64.
pub fn check_name(name: &str) -> Result<(), BaseError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(BaseError::BadName(name.to_string()))
    }
}

/// A name a new base may take under `models_dir`: valid, and not a directory there already.
pub fn check_new_name(models_dir: &Path, name: &str) -> Result<(), BaseError> {
    check_name(name)?;
    if models_dir.join(DIR).join(name).exists() {
        return Err(BaseError::Exists(name.to_string()));
    }
    Ok(())
}

fn unreadable(path: &Path, reason: impl std::fmt::Display) -> BaseError {
    BaseError::Unreadable { path: path.display().to_string(), reason: reason.to_string() }
}

/// The bases installed under `models_dir`, newest import first. Directories that are not
/// complete bases (an import in progress, files removed by hand) are skipped.
pub fn list(models_dir: &Path) -> Vec<Base> {
    let Ok(entries) = std::fs::read_dir(models_dir.join(DIR)) else { return Vec::new() };
    let mut bases: Vec<Base> = entries.flatten().filter_map(|e| open(&e.path()).ok()).collect();
    bases.sort_by(|a, b| {
        b.manifest.imported.cmp(&a.manifest.imported).then(a.manifest.name.cmp(&b.manifest.name))
    });
    bases
}

/// Reads an installed base's manifest and checks that its files are there.
pub fn open(dir: &Path) -> Result<Base, BaseError> {
    let text = std::fs::read_to_string(dir.join(MANIFEST))
        .map_err(|e| unreadable(dir, format!("{MANIFEST}: {e}")))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| unreadable(dir, format!("{MANIFEST}: {e}")))?;
    if let Some(f) = FILES.iter().find(|f| !dir.join(f).is_file()) {
        return Err(unreadable(dir, format!("{f} is missing")));
    }
    Ok(Base { path: dir.to_path_buf(), manifest })
}

/// The base a new training starts from under `choice`, if any.
pub fn resolve(models_dir: &Path, choice: &Choice) -> Result<Option<Base>, BaseError> {
    match choice {
        Choice::None => Ok(None),
        Choice::Auto => match list(models_dir).into_iter().find(|b| b.manifest.name != embedded::NAME) {
            Some(imported) => Ok(Some(imported)),
            None => embedded::installed(models_dir).map(Some),
        },
        Choice::Named(name) => {
            let dir = models_dir.join(DIR).join(name);
            if name == embedded::NAME {
                return embedded::installed(models_dir).map(Some);
            }
            if !dir.exists() {
                return Err(BaseError::Missing(name.clone()));
            }
            open(&dir).map(Some)
        }
    }
}

/// Removes an installed base. Runs fine-tuned from it keep working only while it is installed.
pub fn remove(models_dir: &Path, name: &str) -> Result<(), BaseError> {
    check_name(name)?;
    let dir = models_dir.join(DIR).join(name);
    if !dir.join(MANIFEST).is_file() {
        return Err(BaseError::Missing(name.to_string()));
    }
    // Renamed away first, so a half-removed base is never listed.
    let doomed = models_dir.join(DIR).join(format!(".removing-{name}"));
    std::fs::rename(&dir, &doomed)?;
    std::fs::remove_dir_all(&doomed)?;
    Ok(())
}

/// Imports a GGUF file or a Hugging Face directory as base `name` (default: the file's name),
/// with `licence` overriding what the source declares.
pub fn import(
    models_dir: &Path,
    source: &Path,
    name: Option<&str>,
    licence: Option<&str>,
) -> Result<Base, BaseError> {
    import_labelled(models_dir, source, &source.display().to_string(), name, licence)
}

/// [`import`], with `label` as the source the manifest records (a hub download records its
/// repository and commit, not the cache path it was read from).
pub fn import_labelled(
    models_dir: &Path,
    source: &Path,
    label: &str,
    name: Option<&str>,
    licence: Option<&str>,
) -> Result<Base, BaseError> {
    let name = match name {
        Some(n) => n.to_string(),
        None => default_name(source),
    };
    check_new_name(models_dir, &name)?;
    let root = models_dir.join(DIR);
    let dir = root.join(&name);
    std::fs::create_dir_all(&root)?;
    let staging = tempfile::Builder::new().prefix(".importing-").tempdir_in(&root)?;
    let (format, declared) = if source.is_dir() {
        (Format::Hf, import_hf(source, staging.path())?)
    } else {
        (Format::Gguf, import_gguf(source, staging.path())?)
    };
    let cfg = load_config(staging.path())?;
    let manifest = Manifest {
        name: name.clone(),
        source: label.to_string(),
        format,
        licence: licence.map(str::to_string).or(declared).unwrap_or_else(|| "unknown".into()),
        parameters: cfg.params(),
        sha256: sha256_file(&staging.path().join("model.safetensors"))?,
        imported: chrono::Utc::now(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| unreadable(&dir, e))?;
    crate::engine::checkpoint::write_synced(&staging.path().join(MANIFEST), &json)?;
    std::fs::rename(staging.keep(), &dir)?;
    crate::engine::checkpoint::sync_dir(&root);
    open(&dir)
}

fn default_name(source: &Path) -> String {
    let stem = source.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let name: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    let name = name.trim_matches(|c| c == '.' || c == '-').chars().take(64).collect::<String>();
    if name.is_empty() {
        "base".into()
    } else {
        name
    }
}

/// Writes a GGUF file's weights (as f16), config and tokenizer into `dir`; returns the declared licence.
fn import_gguf(source: &Path, dir: &Path) -> Result<Option<String>, BaseError> {
    let imported = gguf::read(source)?;
    let tensors: HashMap<String, Tensor> = imported
        .tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_dtype(DType::F16)?)))
        .collect::<Result<_, candle_core::Error>>()
        .map_err(EngineError::from)?;
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).map_err(EngineError::from)?;
    let config = serde_json::to_vec_pretty(&imported.config).map_err(|e| unreadable(source, e))?;
    std::fs::write(dir.join("config.json"), config)?;
    imported
        .tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| unreadable(source, format!("tokenizer: {e}")))?;
    Ok(imported.licence)
}

/// Copies a Hugging Face llama directory into `dir` after checking that it loads; returns the
/// licence its `config.json` or README declares, if any.
fn import_hf(source: &Path, dir: &Path) -> Result<Option<String>, BaseError> {
    for f in FILES {
        if !source.join(f).is_file() {
            return Err(unreadable(
                source,
                format!("{f} is missing (a Hugging Face llama directory has {FILES:?})"),
            ));
        }
    }
    let cfg = load_config(source)?;
    tokenizers::Tokenizer::from_file(source.join("tokenizer.json"))
        .map_err(|e| unreadable(source, format!("tokenizer.json: {e}")))?;
    let tensors = candle_core::safetensors::load(source.join("model.safetensors"), &Device::Cpu)
        .map_err(|e| unreadable(source, format!("model.safetensors: {e}")))?;
    check_tensors(&cfg, &tensors).map_err(|e| unreadable(source, e))?;
    drop(tensors);
    for f in FILES {
        std::fs::copy(source.join(f), dir.join(f))?;
    }
    let licence = std::fs::read_to_string(source.join("README.md")).ok().and_then(|readme| {
        readme.lines().find_map(|l| l.trim().strip_prefix("license:").map(|v| v.trim().to_string()))
    });
    Ok(licence)
}

fn load_config(dir: &Path) -> Result<ModelConfig, BaseError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, e))?;
    let cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| unreadable(&path, e))?;
    cfg.validate()?;
    Ok(cfg)
}

/// Every tensor the config needs is present with its shape.
fn check_tensors(cfg: &ModelConfig, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let kv = cfg.kv_heads() * cfg.head_dim();
    for name in model::tensor_names(cfg) {
        let t = tensors.get(&name).ok_or(format!("tensor {name} is missing"))?;
        let want: Vec<usize> = match name.rsplit('.').nth(1).unwrap_or("") {
            "embed_tokens" | "lm_head" => vec![v, d],
            "q_proj" | "o_proj" => vec![d, d],
            "k_proj" | "v_proj" => vec![kv, d],
            "gate_proj" | "up_proj" => vec![f, d],
            "down_proj" => vec![d, f],
            _ => vec![d],
        };
        if t.dims() != want.as_slice() {
            return Err(format!("tensor {name} is {:?}, the config needs {want:?}", t.dims()));
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, BaseError> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
fn sha256_bytes(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
