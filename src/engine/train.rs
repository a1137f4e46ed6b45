//! The training loop: chat lines → tokenizer → token streams per channel → AdamW with warm-up
//! and cosine decay, gradient clipping, a validation split by time, and validation loss in bits
//! per byte. Bounded by epochs and a wall-clock budget; cancellable between steps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use candle_nn::{ParamsAdamW, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;

use super::model::{Model, ModelConfig};
use super::optim::Optimiser;
use super::tokenizer::{ChatLine, ChatTokenizer};
use super::{EngineError, Preset};

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOptions {
    pub preset: Preset,
    pub epochs: usize,
    /// Stop after this long (seconds), whatever the epochs say.
    pub max_seconds: Option<f64>,
    pub weight_decay: f64,
    pub clip_norm: f64,
    /// The newest fraction of messages held out for validation.
    pub val_fraction: f64,
    /// At most this many validation windows are scored (keeps evaluation quick).
    pub max_val_windows: usize,
    /// Evaluations during training, spread evenly over its steps, for the loss curve; each
    /// scores a quarter of `max_val_windows`. The final evaluation comes on top.
    pub evals: usize,
    pub seed: u64,
    /// Fine-tuning a base trains low-rank adapters of this shape; `None` trains every weight.
    pub lora: Option<super::lora::LoraSpec>,
    /// A base with fewer parameters than this is fine-tuned whole, whatever `lora` says.
    pub full_fine_tune_below: u64,
    /// Train through candle's graph even where [`super::direct`] would take the steps (to
    /// compare the two).
    pub through_graph: bool,
}

impl TrainOptions {
    pub fn new(preset: Preset) -> TrainOptions {
        TrainOptions {
            preset,
            epochs: 1,
            max_seconds: None,
            weight_decay: 0.1,
            clip_norm: 1.0,
            val_fraction: 0.1,
            max_val_windows: 64,
            evals: 4,
            seed: 42,
            lora: Some(super::lora::LoraSpec::default()),
            full_fine_tune_below: super::finetune::FULL_FINE_TUNE_MAX_PARAMS,
            through_graph: false,
        }
    }
}

/// The phases of a training run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Training the tokenizer (from-scratch runs).
    Tokenizer,
    /// Turning the corpus into token streams.
    Preparing,
    /// Optimisation steps; `step` and `total_steps` mean something.
    Training,
    /// Scoring the held-out split.
    Validating,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Tokenizer => "tokenizer",
            Phase::Preparing => "preparing",
            Phase::Training => "training",
            Phase::Validating => "validating",
        })
    }
}

/// Where a training run is, reported after every step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub phase: Phase,
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    pub loss: f32,
    /// Training tokens seen so far.
    pub tokens: u64,
    pub tokens_per_second: f64,
    pub eta_seconds: f64,
    /// Validation bits per byte, on the steps where training evaluated (see
    /// [`TrainOptions::evals`]).
    pub val_bits_per_byte: Option<f64>,
}

impl Progress {
    /// A phase that has no steps yet.
    pub(super) fn starting(phase: Phase) -> Progress {
        Progress {
            phase,
            step: 0,
            total_steps: 0,
            epoch: 0.0,
            loss: 0.0,
            tokens: 0,
            tokens_per_second: 0.0,
            eta_seconds: 0.0,
            val_bits_per_byte: None,
        }
    }
}

/// What a finished run achieved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub steps: usize,
    pub epochs: f64,
    pub tokens: u64,
    pub train_loss: f32,
    pub val_bits_per_byte: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub train_messages: usize,
    pub val_messages: usize,
    /// True when the wall-clock budget ended the run before its epochs.
    pub stopped_by_budget: bool,
}

/// A trained model with everything needed to save it.
pub struct Trained {
    pub model: Model,
    pub varmap: VarMap,
    pub tokenizer: ChatTokenizer,
    pub config: ModelConfig,
    pub report: Report,
    /// The adapters trained on a base's frozen weights; `None` when every weight trained.
    pub lora: Option<super::lora::LoraSpec>,
}

/// The lines split by time and turned into token streams.
pub struct Data {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
    pub train_messages: usize,
    pub val_messages: usize,
}

/// Splits lines (oldest first) by time and renders each split as one stream of messages,
/// channel by channel, so a sequence is consecutive messages of one channel.
pub fn prepare(lines: &[ChatLine], tok: &ChatTokenizer, val_fraction: f64) -> Result<Data, EngineError> {
    let (train, val) = split(lines, val_fraction)?;
    Ok(Data {
        train: stream(train, tok)?,
        val: stream(val, tok)?,
        train_messages: train.len(),
        val_messages: val.len(),
    })
}

/// Lines (oldest first) split by time into training and the newest `val_fraction` held out.
pub fn split(lines: &[ChatLine], val_fraction: f64) -> Result<(&[ChatLine], &[ChatLine]), EngineError> {
    if lines.len() < 20 {
        return Err(EngineError::NotEnoughData(format!("{} messages; at least 20 are needed", lines.len())));
    }
    let n_val = ((lines.len() as f64 * val_fraction).ceil() as usize).clamp(1, lines.len() / 2);
    Ok(lines.split_at(lines.len() - n_val))
}

pub(crate) fn stream(lines: &[ChatLine], tok: &ChatTokenizer) -> Result<Vec<u32>, EngineError> {
    let mut by_channel: BTreeMap<&str, Vec<&ChatLine>> = BTreeMap::new();
    for l in lines {
        by_channel.entry(l.channel.as_str()).or_default().push(l);
    }
    let mut out = Vec::new();
    for msgs in by_channel.values() {
        for m in msgs {
            out.extend(tok.encode_message(&m.author, &m.content)?);
        }
    }
    Ok(out)
}

/// Non-overlapping windows of `len + 1` tokens (inputs plus the shifted targets).
pub(crate) fn windows(stream: &[u32], len: usize) -> Vec<usize> {
    if stream.len() < len + 1 {
        return Vec::new();
    }
    (0..(stream.len() - 1) / len).map(|i| i * len).collect()
}

/// The inputs and targets (the same tokens one later) of the windows at `starts`.
pub(crate) fn batch_ids(stream: &[u32], starts: &[usize], len: usize) -> (Vec<u32>, Vec<u32>) {
    let mut inputs = Vec::with_capacity(starts.len() * len);
    let mut targets = Vec::with_capacity(starts.len() * len);
    for &s in starts {
        inputs.extend_from_slice(&stream[s..s + len]);
        targets.extend_from_slice(&stream[s + 1..s + len + 1]);
    }
    (inputs, targets)
}

pub(crate) fn batch_tensors(
    stream: &[u32],
    starts: &[usize],
    len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor), EngineError> {
    let (inputs, targets) = batch_ids(stream, starts, len);
    let b = starts.len();
    Ok((Tensor::from_vec(inputs, (b, len), device)?, Tensor::from_vec(targets, b * len, device)?))
}

/// Validation bits per byte: total negative log-likelihood over the scored windows, in bits,
/// divided by the UTF-8 bytes the target tokens stand for.
pub fn bits_per_byte(
    model: &Model,
    tok: &ChatTokenizer,
    stream: &[u32],
    len: usize,
    max_windows: usize,
) -> Result<f64, EngineError> {
    let len = len.min(model.cfg.max_position_embeddings);
    let model = &model.detached();
    let all = windows(stream, len);
    if all.is_empty() {
        return Err(EngineError::NotEnoughData("the validation split is shorter than one sequence".into()));
    }
    // Evenly spaced windows across the split, not just its start.
    let step = (all.len() as f64 / max_windows.max(1) as f64).max(1.0);
    let picked: Vec<usize> = (0..all.len().min(max_windows))
        .map(|i| all[((i as f64 * step) as usize).min(all.len() - 1)])
        .collect();
    let (mut nats, mut bytes) = (0f64, 0u64);
    for chunk in picked.chunks(windows_per_pass(len, model.cfg.vocab_size)) {
        let (x, y) = batch_tensors(stream, chunk, len, model.device())?;
        let logits = model.forward_train(&x)?;
        let n = y.dims1()?;
        let logits = logits.reshape((n, ()))?;
        let loss = super::ops::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
        nats += loss * n as f64;
        bytes += y.to_vec1::<u32>()?.iter().map(|&t| tok.byte_len(t) as u64).sum::<u64>();
    }
    Ok(nats / std::f64::consts::LN_2 / bytes.max(1) as f64)
}

/// How many logits [`token_probs`] and [`bits_per_byte`] compute at once (16 MB of them), unless
/// one window holds more.
const LOGITS_PER_PASS: usize = 4 << 20;

/// Windows of `len` over a vocabulary of `vocab` tokens whose logits fit [`LOGITS_PER_PASS`]:
/// one at least, eight at most.
pub(crate) fn windows_per_pass(len: usize, vocab: usize) -> usize {
    (LOGITS_PER_PASS / (len * vocab).max(1)).clamp(1, 8)
}

/// What the network said of a token: its probability, and that of its most likely token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Predicted {
    pub p: f32,
    pub top: f32,
}

/// The network's prediction of each token of `stream` but the first, given up to `len` tokens
/// before it, as the bot predicts a reply after its channel's preceding messages: windows of
/// `len` overlap by half, and each token is scored in the first window where it has at least
/// half a window of context (or all there is, near the start).
pub fn token_probs(model: &Model, stream: &[u32], len: usize) -> Result<Vec<Option<Predicted>>, EngineError> {
    let len = len.min(model.cfg.max_position_embeddings).min(stream.len().saturating_sub(1));
    let mut out = vec![None; stream.len()];
    if len == 0 {
        return Ok(out);
    }
    let model = &model.detached();
    // Windows per forward pass: all their logits are held at once (and their log-softmax beside
    // them), 805 MB for 8 windows of 512 over SmolLM2's 49 152 tokens.
    let per_pass = windows_per_pass(len, model.cfg.vocab_size);
    let last = stream.len() - 1 - len;
    let mut starts: Vec<usize> = (0..=last).step_by((len / 2).max(1)).collect();
    if starts.last() != Some(&last) {
        starts.push(last);
    }
    // The first position no window has scored yet.
    let mut next = 1;
    for chunk in starts.chunks(per_pass) {
        let (x, y) = batch_tensors(stream, chunk, len, model.device())?;
        let n = y.dims1()?;
        let logits = model.forward_train(&x)?.reshape((n, ()))?;
        let all = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
        let logp = all.gather(&y.unsqueeze(1)?, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let top = all.max(candle_core::D::Minus1)?.to_vec1::<f32>()?;
        for (w, &start) in chunk.iter().enumerate() {
            for j in (next.max(start + 1) - start - 1)..len {
                let at = w * len + j;
                out[start + 1 + j] = Some(Predicted { p: logp[at].exp(), top: top[at].exp() });
            }
            next = start + 1 + len;
        }
    }
    Ok(out)
}

/// A fresh model for `cfg`, with its variables.
pub fn init_model(cfg: &ModelConfig, device: &Device, seed: u64) -> Result<(Model, VarMap), EngineError> {
    let varmap = VarMap::new();
    let model = Model::new(cfg, super::seeded::var_builder(&varmap, seed, device))?;
    Ok((model, varmap))
}

/// Whether step `step` (from 1) of about `total` is where evaluation number `done + 1` of
/// `evals` falls: they split the run into `evals + 1` equal parts. The last step is left to the
/// final evaluation.
pub(crate) fn eval_due(step: usize, total: usize, done: usize, evals: usize) -> bool {
    done < evals && step < total && step * (evals + 1) >= (done + 1) * total
}

pub(crate) fn learning_rate(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    let floor = peak * 0.1;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// Scales all gradients so their global norm is at most `max_norm`; returns the norm before.
pub(crate) fn clip_gradients(
    grads: &mut candle_core::backprop::GradStore,
    vars: &[candle_core::Var],
    max_norm: f64,
) -> Result<f64, EngineError> {
    let mut sum = 0f64;
    for v in vars {
        if let Some(g) = grads.get(v.as_tensor()) {
            sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = sum.sqrt();
    if norm > max_norm && norm.is_finite() {
        let scale = max_norm / norm;
        for v in vars {
            if let Some(g) = grads.remove(v.as_tensor()) {
                grads.insert(v.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// One batch's loss, its gradients clipped to `clip_norm`, and the tokens it scored: the part
/// of a training step every trainer shares (the optimiser steps after).
pub(crate) fn gradients(
    model: &Model,
    stream: &[u32],
    starts: &[usize],
    len: usize,
    vars: &[candle_core::Var],
    clip_norm: f64,
    device: &Device,
) -> Result<(f32, candle_core::backprop::GradStore, usize), EngineError> {
    let (x, y) = batch_tensors(stream, starts, len, device)?;
    let n = y.dims1()?;
    let loss = model.loss(&x, &y)?;
    let mut grads = loss.backward()?;
    clip_gradients(&mut grads, vars, clip_norm)?;
    Ok((loss.to_scalar::<f32>()?, grads, n))
}

/// Trains a tokenizer and a model on `lines` (oldest first).
pub fn train(
    lines: &[ChatLine],
    opts: &TrainOptions,
    device: &Device,
    cancel: &AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> Result<Trained, EngineError> {
    let started = Instant::now();
    let p = &opts.preset;
    progress(&Progress::starting(Phase::Tokenizer));
    let (train_lines, _) = split(lines, opts.val_fraction)?;
    let tok = ChatTokenizer::train(train_lines, p.vocab_size)?;
    let data = prepare(lines, &tok, opts.val_fraction)?;
    let cfg = p.model_config(tok.vocab_size());
    let (model, varmap) = init_model(&cfg, device, opts.seed)?;
    let trained = fit(model, varmap, &tok, &data, opts, device, cancel, &mut progress, started)?;
    Ok(Trained { config: cfg, tokenizer: tok, ..trained })
}

/// The schedule is fitted to the time budget after this many steps, and again every as many.
const SCHEDULE_PROBE_STEPS: usize = 5;

/// The optimisation loop on prepared data, for a model that may start from pretrained weights.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    model: Model,
    varmap: VarMap,
    tok: &ChatTokenizer,
    data: &Data,
    opts: &TrainOptions,
    device: &Device,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&Progress),
    started: Instant,
) -> Result<Trained, EngineError> {
    let p = &opts.preset;
    let len = p.seq_len.min(model.cfg.max_position_embeddings);
    let mut order = windows(&data.train, len);
    if order.is_empty() {
        return Err(EngineError::NotEnoughData("the training split is shorter than one sequence".into()));
    }
    let batch = p.batch.min(order.len()).max(1);
    let steps_per_epoch = order.len().div_ceil(batch);
    let epoch_total = (steps_per_epoch * opts.epochs.max(1)).max(1);
    let (mut total, mut warmup) = (epoch_total, (epoch_total / 10).clamp(1, 100));
    let params =
        ParamsAdamW { lr: p.lr, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: opts.weight_decay };
    // A model whose every weight trains on the CPU skips candle's graph; adapters go through it.
    let mut opt = Optimiser::new(&model, &varmap, params, batch, len, opts.through_graph)?;
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let _keep = super::allocator::KeepFreedMemory::new();
    let loop_start = Instant::now();
    let (mut step, mut tokens, mut last_loss, mut stopped_by_budget) = (0usize, 0u64, f32::NAN, false);
    // Evaluations during training: their time is budgeted but is not training throughput.
    let (mut evals_done, mut eval_seconds) = (0usize, 0f64);
    'epochs: for _epoch in 0..opts.epochs.max(1) {
        order.shuffle(&mut rng);
        for starts in order.chunks(batch) {
            if cancel.load(Ordering::Relaxed) {
                return Err(EngineError::Cancelled);
            }
            if opts.max_seconds.is_some_and(|max| started.elapsed().as_secs_f64() >= max) {
                stopped_by_budget = true;
                break 'epochs;
            }
            let lr = learning_rate(step, total, warmup, p.lr);
            let (loss, n) = opt.step(&model, &data.train, starts, len, lr, opts.clip_norm, device)?;
            last_loss = loss;
            if !last_loss.is_finite() {
                return Err(EngineError::BadConfig(format!(
                    "training diverged at step {step} (loss {last_loss})"
                )));
            }
            step += 1;
            tokens += n as u64;
            // When the time budget, not the epochs, will end training, the schedule is fitted to
            // the steps that fit in it (a large base makes only a few dozen), so the warm-up ends
            // and the learning rate decays within the budget.
            // Re-estimated as steps are timed (the first are slower).
            if step >= SCHEDULE_PROBE_STEPS && step % SCHEDULE_PROBE_STEPS == 0 {
                if let Some(max) = opts.max_seconds {
                    let per_step = loop_start.elapsed().as_secs_f64() / step as f64;
                    let left = (max - started.elapsed().as_secs_f64()).max(0.0);
                    let fits = step + (left / per_step.max(1e-9)) as usize;
                    if fits < epoch_total {
                        total = fits.max(step + 1);
                        warmup = warmup.min((total / 10).max(1));
                    }
                }
            }
            let mut val = None;
            if eval_due(step, total, evals_done, opts.evals) {
                let t = Instant::now();
                let windows = opts.max_val_windows.div_ceil(4).max(1);
                opt.sync()?;
                val = Some(bits_per_byte(&model, tok, &data.val, len, windows)?);
                evals_done += 1;
                eval_seconds += t.elapsed().as_secs_f64();
            }
            let elapsed = loop_start.elapsed().as_secs_f64().max(1e-9);
            let tps = tokens as f64 / (elapsed - eval_seconds).max(1e-9);
            let mut eta = (total - step.min(total)) as f64 * elapsed / step as f64;
            if let Some(max) = opts.max_seconds {
                eta = eta.min((max - started.elapsed().as_secs_f64()).max(0.0));
            }
            progress(&Progress {
                phase: Phase::Training,
                step,
                total_steps: total.max(step),
                epoch: step as f64 / steps_per_epoch as f64,
                loss: last_loss,
                tokens,
                tokens_per_second: tps,
                eta_seconds: eta,
                val_bits_per_byte: val,
            });
        }
    }
    opt.sync()?;
    // The optimiser's buffers are done with: the final validation and what follows need none.
    drop(opt);
    // The training loop's own time: validation below is not training throughput.
    let loop_seconds = loop_start.elapsed().as_secs_f64();
    if step == 0 {
        return Err(EngineError::NotEnoughData("the time budget ended before the first step".into()));
    }
    progress(&Progress {
        phase: Phase::Validating,
        step,
        total_steps: total.max(step),
        epoch: step as f64 / steps_per_epoch as f64,
        loss: last_loss,
        tokens,
        tokens_per_second: 0.0,
        eta_seconds: 0.0,
        val_bits_per_byte: None,
    });
    let val = bits_per_byte(&model, tok, &data.val, len, opts.max_val_windows)?;
    let seconds = started.elapsed().as_secs_f64();
    let report = Report {
        steps: step,
        epochs: step as f64 / steps_per_epoch as f64,
        tokens,
        train_loss: last_loss,
        val_bits_per_byte: val,
        seconds,
        tokens_per_second: tokens as f64 / (loop_seconds - eval_seconds).max(1e-9),
        train_messages: data.train_messages,
        val_messages: data.val_messages,
        stopped_by_budget,
    };
    let config = model.cfg.clone();
    Ok(Trained { model, varmap, tokenizer: tok.clone(), config, report, lora: None })
}
