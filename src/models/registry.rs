//! The on-disk model registry: `models/<guild>/<run>/` run directories and the
//! `models/<guild>/CURRENT` pointer naming the run that serves each guild. This module reads the
//! layout, reports what is usable and switches the pointer; loading weights is the engine's job.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::CHECKPOINT_FILES;
use crate::engine::checkpoint::{self, Meta};
use crate::engine::EngineError;

/// The name of the per-guild pointer file.
pub const CURRENT: &str = "CURRENT";
/// Directory names under `models/` that are not guilds.
const RESERVED: [&str; 1] = ["base"];

/// A guild's current checkpoint, as found on disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelDir {
    pub guild_id: String,
    pub run: String,
    pub path: PathBuf,
    pub meta: Meta,
}

/// One guild's entry in the registry: a usable checkpoint, or the reason there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Ready(Box<ModelDir>),
    Broken { guild_id: String, reason: String },
}

impl Found {
    pub fn guild_id(&self) -> &str {
        match self {
            Found::Ready(m) => &m.guild_id,
            Found::Broken { guild_id, .. } => guild_id,
        }
    }
}

/// Every guild under `root` that has a `CURRENT` pointer, in guild order. A missing `root`
/// simply means no models yet.
pub fn scan(root: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut guilds: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, dir)| !RESERVED.contains(&name.as_str()) && dir.join(CURRENT).exists())
        .collect();
    guilds.sort();
    guilds.into_iter().map(|(guild, dir)| current(&guild, &dir)).collect()
}

/// The directory name for run `run_id` of the guild: `run-N`, unless a directory of that name is
/// left from an earlier database (run IDs restart with a new one), then `run-N-<ms>`.
pub fn run_name(guild_dir: &Path, run_id: i64) -> String {
    let plain = format!("run-{run_id}");
    if guild_dir.join(&plain).exists() {
        format!("{plain}-{}", chrono::Utc::now().timestamp_millis())
    } else {
        plain
    }
}

/// The run ID a run directory's name ([`run_name`]: `run-N` or `run-N-<ms>`) was made for.
pub fn run_id(name: &str) -> Option<i64> {
    name.strip_prefix("run-")?.split('-').next()?.parse().ok()
}

/// Points `guild_dir/CURRENT` at `run`, atomically (write, fsync, rename).
pub fn set_current(guild_dir: &Path, run: &str) -> Result<(), EngineError> {
    let tmp = guild_dir.join(format!("{CURRENT}.tmp"));
    checkpoint::write_synced(&tmp, run.as_bytes())?;
    std::fs::rename(&tmp, guild_dir.join(CURRENT)).map_err(|e| EngineError::Checkpoint {
        path: guild_dir.display().to_string(),
        reason: e.to_string(),
    })?;
    checkpoint::sync_dir(guild_dir);
    Ok(())
}

/// When a run's manifest was written (its directory's time if it has none).
fn written(run_dir: &Path) -> std::time::SystemTime {
    std::fs::metadata(run_dir.join("meta.json"))
        .or_else(|_| std::fs::metadata(run_dir))
        .and_then(|m| m.modified())
        .unwrap_or(std::time::SystemTime::UNIX_EPOCH)
}

/// The run directories of a guild written before the current one, newest first. A run newer
/// than the current one is left alone: a training may be about to point `CURRENT` at it.
fn older_runs(guild_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(current) = std::fs::read_to_string(guild_dir.join(CURRENT)) else { return Vec::new() };
    let current = current.trim().to_string();
    let current_written = written(&guild_dir.join(&current));
    let Ok(entries) = std::fs::read_dir(guild_dir) else { return Vec::new() };
    let mut runs: Vec<(std::time::SystemTime, String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, _)| name.starts_with("run-") && *name != current)
        .map(|(name, path)| (written(&path), name, path))
        .filter(|(at, _, _)| *at <= current_written)
        .collect();
    runs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    runs.into_iter().map(|(_, name, path)| (name, path)).collect()
}

/// Deletes the guild's runs that may not stay: all but the current one and the `keep` newest
/// older ones, and any older one `drop` names (it learned from messages removed since).
/// Returns the names deleted; a run that cannot be deleted is logged and left.
pub fn prune(guild_dir: &Path, keep: usize, drop: impl Fn(&str) -> bool) -> Vec<String> {
    let mut kept = 0;
    let mut deleted = Vec::new();
    for (name, path) in older_runs(guild_dir) {
        if !drop(&name) && kept < keep {
            kept += 1;
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => deleted.push(name),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not delete an old model run"),
        }
    }
    deleted
}

/// Deletes what interrupted work left in a guild's directory: half-written runs (`.tmp-*`) and
/// bundle uploads (`.incoming-*`). Only at start-up, when nothing can be writing them.
pub fn remove_leftovers(guild_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(guild_dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        let Ok(name) = e.file_name().into_string() else { continue };
        if !(name.starts_with(".tmp-") || name.starts_with(".incoming-")) {
            continue;
        }
        let gone = if e.path().is_dir() {
            std::fs::remove_dir_all(e.path())
        } else {
            std::fs::remove_file(e.path())
        };
        match gone {
            Ok(()) => removed.push(name),
            Err(err) => {
                tracing::warn!(path = %e.path().display(), error = %err, "could not delete a leftover")
            }
        }
    }
    removed
}

/// The guild directories under `root` (the pretrained base's left out).
pub fn guild_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, _)| !RESERVED.contains(&name.as_str()) && !name.starts_with('.'))
        .collect()
}

fn current(guild_id: &str, guild_dir: &Path) -> Found {
    let broken = |reason: String| Found::Broken { guild_id: guild_id.to_string(), reason };
    let run = match std::fs::read_to_string(guild_dir.join(CURRENT)) {
        Ok(s) => s.trim().to_string(),
        Err(e) => return broken(format!("cannot read the {CURRENT} pointer: {e}")),
    };
    if run.is_empty() || run.contains(['/', '\\']) || run == ".." {
        return broken(format!("the {CURRENT} pointer holds an invalid run name {run:?}"));
    }
    let path = guild_dir.join(&run);
    if !path.is_dir() {
        return broken(format!("the current run {run} is missing"));
    }
    if let Some(missing) = CHECKPOINT_FILES.iter().find(|f| !path.join(f).is_file()) {
        return broken(format!("run {run} lacks {missing}"));
    }
    let meta = match std::fs::read_to_string(path.join("meta.json"))
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str::<Meta>(&s).map_err(|e| e.to_string()))
    {
        Ok(meta) => meta,
        Err(e) => return broken(format!("run {run} has an unreadable meta.json: {e}")),
    };
    Found::Ready(Box::new(ModelDir { guild_id: guild_id.to_string(), run, path, meta }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(root: &Path, guild: &str, run: &str, meta: &str) {
        let dir = root.join(guild).join(run);
        std::fs::create_dir_all(&dir).unwrap();
        for f in CHECKPOINT_FILES {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        std::fs::write(dir.join("meta.json"), meta).unwrap();
        std::fs::write(root.join(guild).join(CURRENT), run).unwrap();
    }

    #[test]
    fn a_run_never_takes_the_name_of_a_directory_left_from_an_earlier_database() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(run_name(root.path(), 1), "run-1");
        std::fs::create_dir_all(root.path().join("run-1")).unwrap();
        let name = run_name(root.path(), 1);
        assert!(name.starts_with("run-1-") && !root.path().join(&name).exists(), "{name}");
        assert_eq!((run_id("run-1"), run_id(&name), run_id("bundle")), (Some(1), Some(1), None));
    }

    #[test]
    fn the_current_pointer_is_switched_atomically() {
        let root = tempfile::tempdir().unwrap();
        set_current(root.path(), "run-1").unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join(CURRENT)).unwrap(), "run-1");
        set_current(root.path(), "run-2").unwrap();
        assert_eq!(std::fs::read_to_string(root.path().join(CURRENT)).unwrap(), "run-2");
        assert!(!root.path().join(format!("{CURRENT}.tmp")).exists());
    }

    #[test]
    fn old_runs_are_pruned_to_the_newest_and_leftovers_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for run in ["run-1", "run-2", "run-3", "run-4", "run-5"] {
            checkpoint(root, "g", run, "{}");
            // Distinct modification times, oldest first.
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        let g = root.join("g");
        // run-5 is newer than the current run: a training about to switch to it.
        set_current(&g, "run-4").unwrap();
        std::fs::create_dir_all(g.join(".tmp-run-9")).unwrap();
        std::fs::create_dir_all(g.join(".incoming-00ff")).unwrap();
        let deleted = prune(&g, 1, |name| name == "run-3");
        assert_eq!(
            deleted,
            vec!["run-3".to_string(), "run-1".to_string()],
            "stale, then beyond the newest one"
        );
        for (run, exists) in
            [("run-1", false), ("run-2", true), ("run-3", false), ("run-4", true), ("run-5", true)]
        {
            assert_eq!(g.join(run).exists(), exists, "{run}");
        }
        assert_eq!(remove_leftovers(&g).len(), 2);
        assert!(!g.join(".tmp-run-9").exists() && !g.join(".incoming-00ff").exists());
        assert_eq!(prune(&g, 0, |_| true), vec!["run-2".to_string()]);
        assert!(g.join("run-5").exists(), "never a run newer than the current one");
        assert!(
            matches!(&scan(root)[0], Found::Ready(m) if m.run == "run-4"),
            "the current run always stays"
        );
    }

    #[test]
    fn a_missing_models_directory_means_no_models() {
        assert!(scan(Path::new("/nonexistent/mynah/models")).is_empty());
    }

    #[test]
    fn current_checkpoints_are_found_and_broken_ones_explained() {
        let root = tempfile::tempdir().unwrap();
        checkpoint(root.path(), "1", "run-1", r#"{"params": 1234, "val_bits_per_byte": 2.5}"#);
        checkpoint(root.path(), "2", "run-1", "not json");
        checkpoint(root.path(), "3", "run-1", "{}");
        std::fs::remove_file(root.path().join("3/run-1/model.safetensors")).unwrap();
        std::fs::create_dir_all(root.path().join("4")).unwrap();
        std::fs::write(root.path().join("4").join(CURRENT), "gone").unwrap();
        std::fs::create_dir_all(root.path().join("base")).unwrap();
        std::fs::write(root.path().join("base").join(CURRENT), "x").unwrap();

        let found = scan(root.path());
        let guilds: Vec<&str> = found.iter().map(Found::guild_id).collect();
        assert_eq!(guilds, ["1", "2", "3", "4"]);
        match &found[0] {
            Found::Ready(m) => assert_eq!((m.run.as_str(), m.meta.params), ("run-1", 1234)),
            other => panic!("{other:?}"),
        }
        let reasons: Vec<String> = found[1..]
            .iter()
            .map(|f| match f {
                Found::Broken { reason, .. } => reason.clone(),
                Found::Ready(_) => String::new(),
            })
            .collect();
        assert!(reasons[0].contains("meta.json"), "{reasons:?}");
        assert!(reasons[1].contains("model.safetensors"), "{reasons:?}");
        assert!(reasons[2].contains("missing"), "{reasons:?}");
    }
}
