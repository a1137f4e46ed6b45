//! Model bundles: one tar archive holding the files of a checkpoint directory, for moving a
//! model between machines. Unpacking is strict because bundles come over the network: only the
//! checkpoint's own files, as plain files at the top level, each once, within a size limit.

use std::io::Read;
use std::path::Path;

use super::CHECKPOINT_FILES;

/// The largest bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is larger than {} MB", MAX_BUNDLE_BYTES >> 20)]
    TooLarge,
    #[error("the bundle is not a valid tar archive: {0}")]
    NotAnArchive(String),
    #[error("the bundle holds an unexpected entry {0:?} (only {files} at the top level)", files = CHECKPOINT_FILES.join(", "))]
    UnexpectedEntry(String),
    #[error("the bundle holds {0} twice")]
    Duplicate(String),
    #[error("the bundle lacks {0}")]
    Missing(&'static str),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Packs the checkpoint files of `dir` into a tar archive.
pub fn pack(dir: &Path) -> Result<Vec<u8>, BundleError> {
    let mut builder = tar::Builder::new(Vec::new());
    for name in CHECKPOINT_FILES {
        let mut file = std::fs::File::open(dir.join(name))?;
        builder.append_file(name, &mut file)?;
    }
    Ok(builder.into_inner()?)
}

/// Unpacks a bundle into the (existing, empty) directory `into`, refusing anything but the
/// checkpoint files.
pub fn unpack(bytes: &[u8], into: &Path) -> Result<(), BundleError> {
    if bytes.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge);
    }
    unpack_from(bytes, into)
}

/// [`unpack`] from a reader (an upload stored on disk), each file streamed to disk.
pub fn unpack_from(reader: impl Read, into: &Path) -> Result<(), BundleError> {
    let bad = |e: std::io::Error| BundleError::NotAnArchive(e.to_string());
    let mut archive = tar::Archive::new(reader);
    let mut seen: Vec<String> = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let name = raw.strip_prefix("./").unwrap_or(&raw).to_string();
        let kind = entry.header().entry_type();
        if !kind.is_file() || !CHECKPOINT_FILES.contains(&name.as_str()) {
            return Err(BundleError::UnexpectedEntry(raw));
        }
        if seen.contains(&name) {
            return Err(BundleError::Duplicate(name));
        }
        let mut out = std::fs::File::create(into.join(&name))?;
        let written =
            std::io::copy(&mut entry.by_ref().take(MAX_BUNDLE_BYTES as u64 + 1), &mut out).map_err(bad)?;
        if written > MAX_BUNDLE_BYTES as u64 {
            return Err(BundleError::TooLarge);
        }
        seen.push(name);
    }
    match CHECKPOINT_FILES.iter().find(|f| !seen.iter().any(|s| s == *f)) {
        Some(missing) => Err(BundleError::Missing(missing)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            // Written into the header by hand: the builder itself refuses hostile names.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_bundle_round_trips_and_odd_ones_are_refused() {
        let src = tempfile::tempdir().unwrap();
        for f in CHECKPOINT_FILES {
            std::fs::write(src.path().join(f), f.as_bytes()).unwrap();
        }
        let bytes = pack(src.path()).unwrap();
        let dst = tempfile::tempdir().unwrap();
        unpack(&bytes, dst.path()).unwrap();
        for f in CHECKPOINT_FILES {
            assert_eq!(std::fs::read(dst.path().join(f)).unwrap(), f.as_bytes());
        }

        let out = tempfile::tempdir().unwrap();
        let four: Vec<(&str, &[u8])> = CHECKPOINT_FILES.iter().map(|f| (*f, b"x".as_slice())).collect();
        let mut evil = four.clone();
        evil.push(("../escape.txt", b"boo"));
        assert!(matches!(unpack(&archive(&evil), out.path()), Err(BundleError::UnexpectedEntry(_))));
        assert!(!out.path().parent().unwrap().join("escape.txt").exists());
        let mut nested = four.clone();
        nested[0].0 = "sub/model.safetensors";
        assert!(matches!(unpack(&archive(&nested), out.path()), Err(BundleError::UnexpectedEntry(_))));
        assert!(matches!(unpack(&archive(&four[..3]), out.path()), Err(BundleError::Missing(_))));
        let mut twice = four.clone();
        twice.push(four[0]);
        assert!(matches!(unpack(&archive(&twice), out.path()), Err(BundleError::Duplicate(_))));
        assert!(unpack(b"definitely not tar", out.path()).is_err());
    }
}
