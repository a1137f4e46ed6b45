//! Pretraining a small chat base from nothing on a large corpus of public chat: a tokenizer for
//! `author: content` lines, a llama-style model, and a run that checkpoints every few minutes and
//! resumes where it stopped (weights, optimiser moments, schedule and data order), so hours of
//! CPU time can be spread over several sittings. The result is a base like any imported one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{ParamsAdamW, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::model::{Model, ModelConfig};
use super::optim::Optimiser;
use super::tokenizer::{ChatLine, ChatTokenizer};
use super::train::{bits_per_byte, learning_rate, stream, windows};
use super::{EngineError, Preset};

/// The tokenized corpus: every source's oldest messages for training, its newest held out.
pub struct Corpus {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub train_messages: usize,
    pub val_messages: usize,
}

impl Corpus {
    /// `sources` are the corpus's parts (one per file), each oldest first; the newest
    /// `val_fraction` of each is held out, so every source is in the validation figure.
    pub fn build(
        sources: &[Vec<ChatLine>],
        tok: &ChatTokenizer,
        val_fraction: f64,
    ) -> Result<Corpus, EngineError> {
        use rayon::prelude::*;
        let parts: Vec<(Vec<u32>, Vec<u32>, usize, usize)> = sources
            .par_iter()
            .map(|lines| {
                let n_val = ((lines.len() as f64 * val_fraction).ceil() as usize).min(lines.len() / 2);
                let (train, val) = lines.split_at(lines.len() - n_val);
                Ok((stream(train, tok)?, stream(val, tok)?, train.len(), val.len()))
            })
            .collect::<Result<_, EngineError>>()?;
        let mut c = Corpus { train: Vec::new(), val: Vec::new(), train_messages: 0, val_messages: 0 };
        for (t, v, nt, nv) in parts {
            c.train.extend(t);
            c.val.extend(v);
            c.train_messages += nt;
            c.val_messages += nv;
        }
        Ok(c)
    }
}

/// The tokenizer a pretraining trains: on its training part only.
pub fn train_tokenizer(
    sources: &[Vec<ChatLine>],
    vocab_size: usize,
    val_fraction: f64,
) -> Result<ChatTokenizer, EngineError> {
    let train: Vec<ChatLine> = sources
        .iter()
        .flat_map(|lines| {
            let n_val = ((lines.len() as f64 * val_fraction).ceil() as usize).min(lines.len() / 2);
            lines[..lines.len() - n_val].iter().cloned()
        })
        .collect();
    ChatTokenizer::train_lines(&train, vocab_size)
}

/// How to pretrain.
#[derive(Debug, Clone)]
pub struct Options {
    pub preset: Preset,
    pub epochs: usize,
    /// This sitting stops after this long (seconds); the run can be resumed.
    pub max_seconds: Option<f64>,
    /// The whole run's budget (seconds) that the first sitting fits the schedule to.
    pub budget_seconds: Option<f64>,
    /// A checkpoint (and a validation figure) this often.
    pub checkpoint_seconds: f64,
    pub val_windows: usize,
    pub weight_decay: f64,
    pub clip_norm: f64,
    pub seed: u64,
}

/// One validation figure on the way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Eval {
    pub step: usize,
    pub tokens: u64,
    pub train_loss: f32,
    pub val_bits_per_byte: f64,
}

/// Where a run is: saved beside its weights, read back to resume.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub preset: String,
    pub seed: u64,
    pub step: usize,
    pub total_steps: usize,
    pub warmup_steps: usize,
    /// The schedule is fixed once the first sitting has fitted it to the budget.
    pub schedule_fixed: bool,
    pub tokens: u64,
    /// Seconds spent in training loops, over all sittings.
    pub seconds: f64,
    pub sittings: usize,
    pub train_tokens: usize,
    pub history: Vec<Eval>,
}

impl State {
    pub fn done(&self) -> bool {
        self.step >= self.total_steps
    }
}

/// Progress of a sitting, reported after every step.
#[derive(Debug, Clone)]
pub struct Progress {
    pub step: usize,
    pub total_steps: usize,
    pub loss: f32,
    pub tokens_per_second: f64,
    pub eta_seconds: f64,
    pub last_eval: Option<Eval>,
}

const CHECKPOINT: &str = "checkpoint";
const STATE: &str = "state.json";
const WEIGHTS: &str = "model.safetensors";
const MOMENTS: &str = "optimizer.safetensors";
const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";

fn ck(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint { path: path.display().to_string(), reason: reason.to_string() }
}

/// The tokenizer of the run in `work`, if one was started there.
pub fn saved_tokenizer(work: &Path) -> Result<Option<ChatTokenizer>, EngineError> {
    let path = work.join(TOKENIZER);
    if !path.exists() {
        return Ok(None);
    }
    ChatTokenizer::load_base(&path).map(Some)
}

/// Starts a run in `work` (which must hold no run yet): the tokenizer is saved first, so a run
/// that stops before its first checkpoint resumes with the same tokens.
pub fn start(work: &Path, tok: &ChatTokenizer) -> Result<(), EngineError> {
    std::fs::create_dir_all(work).map_err(|e| ck(work, e))?;
    if work.join(TOKENIZER).exists() {
        return Err(ck(work, "a run was started here already (resume it, or choose another directory)"));
    }
    let tmp = work.join(".tokenizer.json.tmp");
    tok.save(&tmp)?;
    std::fs::rename(&tmp, work.join(TOKENIZER)).map_err(|e| ck(work, e))
}

/// The newest complete checkpoint: `checkpoint/`, or the previous one while a new one was being
/// put in place.
fn checkpoint_dir(work: &Path) -> Option<PathBuf> {
    [CHECKPOINT, "checkpoint.old"].iter().map(|d| work.join(d)).find(|d| d.join(STATE).exists())
}

/// The state of the run in `work`, if it has a checkpoint.
pub fn saved_state(work: &Path) -> Result<Option<State>, EngineError> {
    let Some(dir) = checkpoint_dir(work) else { return Ok(None) };
    let text = std::fs::read_to_string(dir.join(STATE)).map_err(|e| ck(&dir, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| ck(&dir, e))
}

fn save_checkpoint(
    work: &Path,
    varmap: &VarMap,
    opt: &Optimiser,
    cfg: &ModelConfig,
    state: &State,
) -> Result<(), EngineError> {
    opt.sync()?;
    let tmp = work.join("checkpoint.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ck(&tmp, e))?;
    varmap.save(tmp.join(WEIGHTS)).map_err(|e| ck(&tmp, e))?;
    candle_core::safetensors::save(&opt.moments()?, tmp.join(MOMENTS)).map_err(|e| ck(&tmp, e))?;
    super::checkpoint::write_synced(&tmp.join(CONFIG), super::checkpoint::pretty(cfg).as_bytes())?;
    super::checkpoint::write_synced(&tmp.join(STATE), super::checkpoint::pretty(state).as_bytes())?;
    super::checkpoint::sync_dir(&tmp);
    let (cur, old) = (work.join(CHECKPOINT), work.join("checkpoint.old"));
    let _ = std::fs::remove_dir_all(&old);
    if cur.exists() {
        std::fs::rename(&cur, &old).map_err(|e| ck(&cur, e))?;
    }
    std::fs::rename(&tmp, &cur).map_err(|e| ck(&cur, e))?;
    super::checkpoint::sync_dir(work);
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Runs (or resumes) the pretraining in `work` until its schedule ends, this sitting's time is
/// up, or `cancel` is set; a checkpoint is written every `checkpoint_seconds` and at the end.
pub fn run(
    work: &Path,
    tok: &ChatTokenizer,
    corpus: &Corpus,
    opts: &Options,
    device: &Device,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
) -> Result<State, EngineError> {
    let p = &opts.preset;
    let mut cfg = p.model_config(tok.vocab_size());
    let len = p.seq_len;
    let mut order = windows(&corpus.train, len);
    if order.len() < p.batch {
        return Err(EngineError::NotEnoughData("the corpus is shorter than one batch".into()));
    }
    let steps_per_epoch = order.len() / p.batch;
    let varmap = VarMap::new();
    let resumed = checkpoint_dir(work);
    let mut state = match &resumed {
        Some(dir) => {
            let text = std::fs::read_to_string(dir.join(CONFIG)).map_err(|e| ck(dir, e))?;
            cfg = serde_json::from_str(&text).map_err(|e| ck(dir, e))?;
            let state = saved_state(work)?.ok_or_else(|| ck(dir, "no state"))?;
            if state.train_tokens != corpus.train.len() || state.preset != p.name {
                return Err(ck(
                    dir,
                    format!(
                        "this run was started with preset {} on {} training tokens, not {} on {}: \
                     resume it with the corpus and preset it started with",
                        state.preset,
                        state.train_tokens,
                        p.name,
                        corpus.train.len()
                    ),
                ));
            }
            state
        }
        None => {
            let total = steps_per_epoch * opts.epochs.max(1);
            State {
                preset: p.name.clone(),
                seed: opts.seed,
                step: 0,
                total_steps: total,
                warmup_steps: (total / 50).clamp(1, 500),
                schedule_fixed: opts.budget_seconds.is_none(),
                tokens: 0,
                seconds: 0.0,
                sittings: 0,
                train_tokens: corpus.train.len(),
                history: Vec::new(),
            }
        }
    };
    let model = Model::new(&cfg, super::seeded::var_builder(&varmap, state.seed, device))?;
    if let Some(dir) = &resumed {
        let mut vm = varmap.clone();
        vm.load(dir.join(WEIGHTS)).map_err(|e| ck(dir, e))?;
    }
    let params =
        ParamsAdamW { lr: p.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: opts.weight_decay };
    let mut opt = Optimiser::new(&model, &varmap, params, p.batch, len, false)?;
    match &resumed {
        Some(dir) => {
            let moments =
                candle_core::safetensors::load(dir.join(MOMENTS), device).map_err(|e| ck(dir, e))?;
            opt.restore(&moments, state.step)?;
        }
        // The random initial weights are the first checkpoint: from then on the run is
        // reproducible, whatever sittings it takes.
        None => save_checkpoint(work, &varmap, &opt, &cfg, &state)?,
    }
    state.sittings += 1;

    let sitting = Instant::now();
    let mut last_checkpoint = Instant::now();
    let (start_step, start_seconds) = (state.step, state.seconds);
    let mut last_loss = f32::NAN;
    let mut last_eval = state.history.last().cloned();
    let _keep = crate::engine::allocator::KeepFreedMemory::new();
    while state.step < state.total_steps {
        if cancel.load(Ordering::Relaxed)
            || opts.max_seconds.is_some_and(|m| sitting.elapsed().as_secs_f64() >= m)
        {
            break;
        }
        // The data order of an epoch follows from the seed, so a resumed run sees what it
        // would have seen.
        let epoch = state.step / steps_per_epoch;
        let in_epoch = state.step % steps_per_epoch;
        if in_epoch == 0 || state.step == start_step {
            order.sort_unstable();
            order.shuffle(&mut StdRng::seed_from_u64(state.seed.wrapping_add(epoch as u64)));
        }
        let starts = &order[in_epoch * p.batch..(in_epoch + 1) * p.batch];
        let lr = learning_rate(state.step, state.total_steps, state.warmup_steps, p.lr);
        let (loss, n) = opt.step(&model, &corpus.train, starts, len, lr, opts.clip_norm, device)?;
        last_loss = loss;
        if !last_loss.is_finite() {
            return Err(EngineError::BadConfig(format!(
                "pretraining diverged at step {} (loss {last_loss})",
                state.step
            )));
        }
        state.step += 1;
        state.tokens += n as u64;
        let done_here = (state.step - start_step) as f64;
        let per_step = sitting.elapsed().as_secs_f64() / done_here;
        state.seconds = start_seconds + sitting.elapsed().as_secs_f64();
        // The first sitting fits the schedule to the run's budget as steps are timed.
        if !state.schedule_fixed && state.step % 20 == 0 {
            if let Some(budget) = opts.budget_seconds {
                let fits = state.step + ((budget - state.seconds).max(0.0) / per_step) as usize;
                state.total_steps = fits.clamp(state.step + 1, steps_per_epoch * opts.epochs.max(1));
                state.warmup_steps = state.warmup_steps.min((state.total_steps / 50).max(1));
            }
        }
        let finished = state.step >= state.total_steps;
        // A finished run's schedule is what it was: a resumption has nothing left to fit.
        state.schedule_fixed |= finished;
        if finished || last_checkpoint.elapsed().as_secs_f64() >= opts.checkpoint_seconds {
            opt.sync()?;
            let val = bits_per_byte(&model, tok, &corpus.val, len, opts.val_windows)?;
            let eval = Eval {
                step: state.step,
                tokens: state.tokens,
                train_loss: last_loss,
                val_bits_per_byte: val,
            };
            state.history.push(eval.clone());
            last_eval = Some(eval);
            save_checkpoint(work, &varmap, &opt, &cfg, &state)?;
            last_checkpoint = Instant::now();
        }
        progress(&Progress {
            step: state.step,
            total_steps: state.total_steps,
            loss: last_loss,
            tokens_per_second: (state.step - start_step) as f64 * (p.batch * len) as f64
                / sitting.elapsed().as_secs_f64().max(1e-9),
            eta_seconds: (state.total_steps - state.step) as f64 * per_step,
            last_eval: last_eval.clone(),
        });
    }
    if state.step > start_step && state.history.last().is_none_or(|e| e.step != state.step) {
        opt.sync()?;
        let val = bits_per_byte(&model, tok, &corpus.val, len, opts.val_windows)?;
        state.history.push(Eval {
            step: state.step,
            tokens: state.tokens,
            train_loss: last_loss,
            val_bits_per_byte: val,
        });
        save_checkpoint(work, &varmap, &opt, &cfg, &state)?;
    }
    Ok(state)
}

/// Writes the run's newest checkpoint as a base in Hugging Face layout (`config.json`,
/// `model.safetensors` in `f16`, `tokenizer.json`) into `out`, ready for `bases::import`.
pub fn export(work: &Path, out: &Path) -> Result<ModelConfig, EngineError> {
    let dir = checkpoint_dir(work).ok_or_else(|| ck(work, "no checkpoint to export yet"))?;
    let text = std::fs::read_to_string(dir.join(CONFIG)).map_err(|e| ck(&dir, e))?;
    let cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| ck(&dir, e))?;
    let tensors = candle_core::safetensors::load(dir.join(WEIGHTS), &Device::Cpu).map_err(|e| ck(&dir, e))?;
    let mut half: HashMap<String, Tensor> = HashMap::new();
    for name in super::model::tensor_names(&cfg) {
        let t = tensors.get(&name).ok_or_else(|| ck(&dir, format!("the checkpoint lacks {name}")))?;
        half.insert(name, t.to_dtype(DType::F16)?);
    }
    std::fs::create_dir_all(out).map_err(|e| ck(out, e))?;
    candle_core::safetensors::save(&half, out.join(WEIGHTS)).map_err(|e| ck(out, e))?;
    let cfg_text = serde_json::to_string_pretty(&cfg).map_err(|e| ck(out, e))?;
    std::fs::write(out.join(CONFIG), cfg_text).map_err(|e| ck(out, e))?;
    std::fs::copy(work.join(TOKENIZER), out.join(TOKENIZER)).map_err(|e| ck(out, e))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests;
