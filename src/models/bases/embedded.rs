//! mynah's own chat base, built into the binary: pretrained by `mynah base pretrain` on openly
//! licensed public chat (see `models/base/mynah-base-s/README.md`), so a fresh machine without
//! internet, the playground and every new guild start from a model that already writes English.
//! It is installed under `models/base/` the first time a base is looked for.

use std::path::{Path, PathBuf};

use super::{open, Base, BaseError, Manifest, DIR, MANIFEST};

pub const NAME: &str = "mynah-base-s";

// The files are part of the binary (about 5 MB), so a container or a copied binary has them too,
// with the model card and the licences the data's attribution asks to keep with it.
pub(super) const FILES: [(&str, &[u8]); 7] = [
    ("config.json", include_bytes!("../../../models/base/mynah-base-s/config.json")),
    ("model.safetensors", include_bytes!("../../../models/base/mynah-base-s/model.safetensors")),
    ("tokenizer.json", include_bytes!("../../../models/base/mynah-base-s/tokenizer.json")),
    (MANIFEST, include_bytes!("../../../models/base/mynah-base-s/manifest.json")),
    ("README.md", include_bytes!("../../../models/base/mynah-base-s/README.md")),
    ("LICENSE-chitchat.txt", include_bytes!("../../../models/base/mynah-base-s/LICENSE-chitchat.txt")),
    (
        "LICENSE-livechat-gitter.txt",
        include_bytes!("../../../models/base/mynah-base-s/LICENSE-livechat-gitter.txt"),
    ),
];

/// The embedded base's manifest.
pub fn manifest() -> Result<Manifest, BaseError> {
    serde_json::from_slice(FILES[3].1).map_err(|e| super::unreadable(Path::new(NAME), e))
}

/// Installs the embedded base under `models_dir` unless a base of its name is there already
/// (an operator's own pretraining of it is kept). Staged and renamed into place.
pub fn install(models_dir: &Path) -> Result<PathBuf, BaseError> {
    let root = models_dir.join(DIR);
    let dir = root.join(NAME);
    if dir.exists() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root)?;
    let staging = tempfile::Builder::new().prefix(".installing-").tempdir_in(&root)?;
    for (name, bytes) in FILES {
        crate::engine::checkpoint::write_synced(&staging.path().join(name), bytes)?;
    }
    match std::fs::rename(staging.keep(), &dir) {
        Ok(()) => {}
        // Another process installed it meanwhile.
        Err(_) if dir.exists() => {}
        Err(e) => return Err(e.into()),
    }
    crate::engine::checkpoint::sync_dir(&root);
    Ok(dir)
}

/// The embedded base, installed.
pub fn installed(models_dir: &Path) -> Result<Base, BaseError> {
    open(&install(models_dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_base_is_whole_and_installs_once() {
        let m = manifest().unwrap();
        assert_eq!(m.name, NAME);
        assert_eq!(
            super::super::sha256_bytes(FILES[1].1),
            m.sha256,
            "the manifest names the weights built in"
        );
        let dir = tempfile::tempdir().unwrap();
        let base = installed(dir.path()).unwrap();
        assert_eq!(base.manifest, m);
        let (cfg, tok, _) =
            crate::engine::finetune::load_base(&base.path, &candle_core::Device::Cpu).unwrap();
        assert_eq!(cfg.params(), m.parameters);
        assert_eq!(tok.framing, crate::engine::tokenizer::Framing::Lines);
        // An installed base of that name (an operator's own pretraining) is left as it is.
        std::fs::write(base.path.join("config.json"), b"{}").unwrap();
        install(dir.path()).unwrap();
        assert_eq!(std::fs::read(base.path.join("config.json")).unwrap(), b"{}");
    }
}
