//! The models that answer mentions: one loaded checkpoint per guild, swapped in atomically when
//! a new one is trained, with the guild's voice (count model, vocabulary, copy index) beside it,
//! and a dedicated generation thread fed by a bounded queue, so replies never run on the async
//! runtime's workers and never wait behind a training run.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};

use candle_core::Device;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::oneshot;

use super::prompts::KeptPrompts;
use super::registry::{self, Found};
use crate::engine::checkpoint::Loaded;
use crate::engine::decode;
use crate::engine::generate::{Generated, Sampling};
use crate::engine::voice::Voice;
use crate::engine::EngineError;

/// Requests waiting for the generation thread at most; more are refused rather than queued.
const QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the reply queue is full")]
    Busy,
    #[error("the generation thread is gone")]
    Gone,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// A guild's voice, shared by the generation thread (reading) and ingest (learning).
pub type SharedVoice = Arc<RwLock<Voice>>;

struct Job {
    model: Arc<Loaded>,
    voice: Option<SharedVoice>,
    history: Vec<(String, String)>,
    sampling: Sampling,
    seed: u64,
    /// Where the context is kept between replies (the guild and channel), with the guild's
    /// epoch (see [`super::prompts`]); `None` keeps nothing.
    kept: Option<(super::prompts::Key, u64)>,
    answer: oneshot::Sender<Result<Generated, EngineError>>,
}

/// The generation thread's loop: each job answered in turn. A bug in one generation must not
/// end the thread, or every later reply would fall back for the rest of the process's life.
fn work(queue: std::sync::mpsc::Receiver<Job>, mut run: impl FnMut(&Job) -> Result<Generated, EngineError>) {
    for job in queue {
        let out =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&job))).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(panic = %what, "a generation panicked; the reply falls back");
                Err(EngineError::Panicked(what))
            });
        // The asker may have given up waiting; that is fine.
        let _ = job.answer.send(out);
    }
}

/// One job's reply: the best-ranked candidate, continuing the channel's kept context.
fn generate_one(job: &Job, kept: &mut KeptPrompts) -> Result<Generated, EngineError> {
    let mut rng = StdRng::seed_from_u64(job.seed);
    let voice = job.voice.as_ref().map(|v| v.read().unwrap_or_else(|p| p.into_inner()));
    let model = Arc::as_ptr(&job.model) as usize;
    let context = job.kept.as_ref().and_then(|(key, epoch)| kept.take(key, model, *epoch));
    let (mut ranked, context) = decode::reply_with(
        &job.model.fast,
        &job.model.tokenizer,
        &job.history,
        &job.sampling,
        voice.as_deref(),
        &mut rng,
        context,
    )?;
    if let Some((key, epoch)) = &job.kept {
        kept.keep(key.clone(), model, *epoch, context);
    }
    Ok(ranked.swap_remove(0).reply)
}

/// The per-guild models and the generation worker.
pub struct Serving {
    models: RwLock<HashMap<String, Arc<Loaded>>>,
    voices: RwLock<HashMap<String, SharedVoice>>,
    /// The newest voice build started per guild (see [`Serving::voice_ticket`]).
    voice_tickets: Mutex<HashMap<String, u64>>,
    broken: RwLock<HashMap<String, String>>,
    jobs: SyncSender<Job>,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving").finish_non_exhaustive()
    }
}

impl Default for Serving {
    fn default() -> Self {
        Self::new()
    }
}

impl Serving {
    /// Starts the generation thread.
    pub fn new() -> Serving {
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let spawned = std::thread::Builder::new().name("mynah-generate".into()).spawn(move || {
            let mut kept = KeptPrompts::default();
            work(queue, |job| generate_one(job, &mut kept))
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the generation thread; replies will use fallback mode");
        }
        Serving {
            models: RwLock::new(HashMap::new()),
            voices: RwLock::new(HashMap::new()),
            voice_tickets: Mutex::new(HashMap::new()),
            broken: RwLock::new(HashMap::new()),
            jobs,
        }
    }

    pub fn get(&self, guild: &str) -> Option<Arc<Loaded>> {
        self.models.read().unwrap_or_else(|p| p.into_inner()).get(guild).cloned()
    }

    /// Why the guild's model on disk could not be loaded, if it could not.
    pub fn broken(&self, guild: &str) -> Option<String> {
        self.broken.read().unwrap_or_else(|p| p.into_inner()).get(guild).cloned()
    }

    /// Makes `loaded` the guild's model; replies started before keep the old one.
    pub fn install(&self, guild: &str, loaded: Arc<Loaded>) {
        self.models.write().unwrap_or_else(|p| p.into_inner()).insert(guild.to_string(), loaded);
        // The old voice speaks the old model's tokens; the new one is built for the new model.
        self.voices.write().unwrap_or_else(|p| p.into_inner()).remove(guild);
        self.broken.write().unwrap_or_else(|p| p.into_inner()).remove(guild);
    }

    /// The guild's voice, if one was built for its model.
    pub fn voice(&self, guild: &str) -> Option<SharedVoice> {
        self.voices.read().unwrap_or_else(|p| p.into_inner()).get(guild).cloned()
    }

    /// A ticket for building the guild's voice from the store as it is now: a build started
    /// later (after a removal, say) supersedes it.
    pub fn voice_ticket(&self, guild: &str) -> u64 {
        let mut tickets = self.voice_tickets.lock().unwrap_or_else(|p| p.into_inner());
        let t = tickets.entry(guild.to_string()).or_default();
        *t += 1;
        *t
    }

    /// The guild's latest voice ticket: it changes whenever the guild's messages are removed
    /// (a voice rebuild starts), which is when kept contexts must go.
    fn voice_epoch(&self, guild: &str) -> u64 {
        self.voice_tickets.lock().unwrap_or_else(|p| p.into_inner()).get(guild).copied().unwrap_or(0)
    }

    /// Sets the guild's voice, built for `model`'s tokenizer under `ticket`; refused (false) if
    /// another model serves the guild by now, or a later build was started (this one may hold
    /// messages removed since).
    pub fn set_voice(&self, guild: &str, model: &Arc<Loaded>, ticket: u64, voice: Voice) -> bool {
        let tickets = self.voice_tickets.lock().unwrap_or_else(|p| p.into_inner());
        let latest = tickets.get(guild) == Some(&ticket);
        let current = latest && self.get(guild).is_some_and(|m| Arc::ptr_eq(&m, model));
        if current {
            self.voices
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(guild.to_string(), Arc::new(RwLock::new(voice)));
        }
        current
    }

    /// Stops serving the guild (the bot left it).
    pub fn remove(&self, guild: &str) {
        self.models.write().unwrap_or_else(|p| p.into_inner()).remove(guild);
        self.voices.write().unwrap_or_else(|p| p.into_inner()).remove(guild);
        self.broken.write().unwrap_or_else(|p| p.into_inner()).remove(guild);
    }

    pub fn all(&self) -> Vec<(String, Arc<Loaded>)> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = models.iter().map(|(g, m)| (g.clone(), m.clone())).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Reads `models/` and loads the current checkpoint of every guild that `holds` says this
    /// process serves (its gateway shards' guilds), blocking: call it off the async workers. A
    /// checkpoint that fails to load leaves its guild in fallback mode with the reason.
    pub fn load_all(&self, root: &Path, device: &Device, holds: impl Fn(&str) -> bool) {
        let mut models = HashMap::new();
        let mut broken = HashMap::new();
        let mine = |f: &Found| match f {
            Found::Ready(dir) => holds(&dir.guild_id),
            Found::Broken { guild_id, .. } => holds(guild_id),
        };
        for found in registry::scan(root).into_iter().filter(mine) {
            match found {
                Found::Ready(dir) => match super::bases::load_run(&dir.path, device, root, false) {
                    Ok(loaded) => {
                        models.insert(dir.guild_id, Arc::new(loaded.serving_only()));
                    }
                    Err(e) => {
                        tracing::warn!(guild = %dir.guild_id, error = %e, "model failed to load; fallback mode");
                        broken.insert(dir.guild_id, e.to_string());
                    }
                },
                Found::Broken { guild_id, reason } => {
                    tracing::warn!(guild = %guild_id, %reason, "model unusable; fallback mode");
                    broken.insert(guild_id, reason);
                }
            }
        }
        *self.models.write().unwrap_or_else(|p| p.into_inner()) = models;
        self.voices.write().unwrap_or_else(|p| p.into_inner()).clear();
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = broken;
    }

    /// Generates a message on the generation thread: the best of `sampling.candidates`, mixed
    /// with and guarded by the guild's voice when it has one. With a `channel`, the context is
    /// kept for the channel's next reply (`history` must then be its recent messages, oldest
    /// first, and the message replied to).
    pub async fn generate(
        &self,
        guild: &str,
        channel: Option<&str>,
        model: Arc<Loaded>,
        history: Vec<(String, String)>,
        sampling: Sampling,
        seed: u64,
    ) -> Result<Generated, ServeError> {
        let (answer, answered) = oneshot::channel();
        let voice = self.voice(guild);
        let kept = channel.map(|c| ((guild.to_string(), c.to_string()), self.voice_epoch(guild)));
        let job = Job { model, voice, history, sampling, seed, kept, answer };
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ServeError::Busy,
            TrySendError::Disconnected(_) => ServeError::Gone,
        })?;
        Ok(answered.await.map_err(|_| ServeError::Gone)??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_model() -> (Arc<Loaded>, tempfile::TempDir) {
        let lines: Vec<_> = crate::corpus::parse_all(crate::playground::SAMPLE, None)
            .0
            .iter()
            .take(200)
            .map(crate::corpus::Record::chat_line)
            .collect();
        let mut opts = crate::engine::train::TrainOptions::new(crate::engine::Preset::tiny());
        opts.max_seconds = Some(0.3);
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::engine::run::RunSpec {
            lines: &lines,
            opts: &opts,
            base: None,
            parent: dir.path(),
            name: "r",
            preset_label: "tiny".into(),
            corpus_span: (None, None),
        };
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let (loaded, _, _) =
            crate::engine::run::train_and_save(&spec, &Device::Cpu, &cancel, |_| {}).unwrap();
        (Arc::new(loaded), dir)
    }

    #[test]
    fn a_generation_that_panics_is_answered_with_an_error_and_the_thread_goes_on() {
        let (model, _dir) = tiny_model();
        let (jobs, queue) = sync_channel::<Job>(4);
        std::thread::spawn(move || {
            let mut kept = KeptPrompts::default();
            work(queue, |job| if job.seed == 666 { panic!("a bug") } else { generate_one(job, &mut kept) })
        });
        let ask = |seed| {
            let (answer, answered) = oneshot::channel();
            let history = vec![("bob".to_string(), "hi".to_string())];
            let sampling = Sampling { max_tokens: 4, ..Sampling::default() };
            let kept = Some((("g".to_string(), "c".to_string()), 0));
            jobs.send(Job { model: model.clone(), voice: None, history, sampling, seed, kept, answer })
                .unwrap();
            answered.blocking_recv().unwrap()
        };
        assert!(matches!(ask(666), Err(EngineError::Panicked(m)) if m == "a bug"));
        assert!(ask(1).is_ok(), "the next reply is generated as usual");
    }

    #[test]
    fn a_voice_built_from_older_data_never_replaces_a_newer_build() {
        let (model, _dir) = tiny_model();
        let serving = Serving::new();
        serving.install("g", model.clone());
        let voice = || Voice::new(&model.tokenizer, None);
        let early = serving.voice_ticket("g");
        let late = serving.voice_ticket("g");
        assert!(serving.set_voice("g", &model, late, voice()), "the newest build is set");
        assert!(
            !serving.set_voice("g", &model, early, voice()),
            "an older build, finishing last, is refused"
        );
        let (other, _other_dir) = tiny_model();
        let ticket = serving.voice_ticket("g");
        assert!(
            !serving.set_voice("g", &other, ticket, voice()),
            "a voice for a model no longer serving is refused"
        );
    }
}
