//! One whole training run, from chat lines to a checkpoint on disk loaded back: train (from
//! scratch or from a pretrained base), fit the mixer with the count model, write the manifest,
//! save, load. Every trainer (the bot,
//! remote training, the benchmarks, the tests) goes through [`train_and_save`], so what serves
//! is exactly what was saved.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Device;

use super::checkpoint::{self, BaseRef, Loaded, Meta};
use super::tokenizer::ChatLine;
use super::train::{self, Progress, Report, TrainOptions};
use super::EngineError;

/// What to train and where to put it.
#[derive(Debug, Clone)]
pub struct RunSpec<'a> {
    /// The corpus, oldest first.
    pub lines: &'a [ChatLine],
    pub opts: &'a TrainOptions,
    /// A pretrained llama checkpoint (Hugging Face layout) to start from.
    pub base: Option<BaseRun<'a>>,
    /// The directory the run is saved in (created), and the run's name inside it.
    pub parent: &'a Path,
    pub name: &'a str,
    /// How the manifest describes the model's make (`small`, `default from models/base`, …).
    pub preset_label: String,
    /// The timestamps of the corpus's first and last message, for the manifest.
    pub corpus_span: (Option<String>, Option<String>),
}

/// The base a run starts from: where its files are, and how the run will name it.
#[derive(Debug, Clone)]
pub struct BaseRun<'a> {
    pub path: &'a Path,
    pub reference: BaseRef,
}

/// Trains, saves the checkpoint as `parent/name` and loads it back. Returns the loaded model,
/// the training report and the run directory. A cancellation after training saves nothing.
pub fn train_and_save(
    spec: &RunSpec<'_>,
    device: &Device,
    cancel: &AtomicBool,
    progress: impl FnMut(&Progress),
) -> Result<(Loaded, Report, PathBuf), EngineError> {
    let trained = match &spec.base {
        // No time to train: the base serves as it is.
        Some(b) if spec.opts.max_seconds == Some(0.0) => {
            super::finetune::zero_shot(spec.lines, b.path, spec.opts, device)?
        }
        Some(b) => super::finetune::train_from_base(spec.lines, b.path, spec.opts, device, cancel, progress)?,
        None => train::train(spec.lines, spec.opts, device, cancel, progress)?,
    };
    // The count model is mixed in with weights fitted on the training part only.
    let (train_part, _) = super::train::split(spec.lines, spec.opts.val_fraction)?;
    let mixer = match super::voice::fit_mixer(&trained.model, &trained.tokenizer, train_part) {
        Ok(m) => Some(m.weights.to_vec()),
        // Too little data for a slice of its own: the defaults serve.
        Err(EngineError::NotEnoughData(_)) => None,
        Err(e) => return Err(e),
    };
    let meta = Meta {
        corpus_first: spec.corpus_span.0.clone(),
        corpus_last: spec.corpus_span.1.clone(),
        mixer,
        base: spec.base.as_ref().map(|b| b.reference.clone()),
        lora: trained.lora,
        ..Meta::trained(&trained.config, &trained.report, spec.lines.len(), spec.preset_label.clone())
    };
    if cancel.load(Ordering::Relaxed) {
        return Err(EngineError::Cancelled);
    }
    let dir = checkpoint::save(
        spec.parent,
        spec.name,
        &trained.varmap,
        &trained.config,
        &trained.tokenizer,
        &meta,
    )?;
    let base_path = spec.base.as_ref().map(|b| b.path.to_path_buf());
    let loaded = checkpoint::load_with_bases(&dir, device, &|_| base_path.clone(), true)?;
    Ok((loaded, trained.report, dir))
}
