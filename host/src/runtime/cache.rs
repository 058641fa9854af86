//! The on-disk cache of compiled components, keyed by the content hash of the
//! `.wasm` and the engine's compatibility hash, so a restart loads plugins in
//! microseconds (mmap) instead of recompiling them.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::Engine;
use wasmtime::component::Component;

/// A directory of precompiled components for one engine configuration.
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

impl ComponentCache {
    /// A cache in `dir` for `engine` (the directory is created on first store).
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Self {
            dir,
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    fn path_for(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// Load the compiled component for `content_hash`, if cached and valid.
    /// A corrupt or incompatible entry is removed and reported as a miss.
    pub fn load(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.path_for(content_hash);
        if !path.exists() {
            return None;
        }
        // SAFETY: the cache directory belongs to the operator and only holds
        // files this host wrote with `Component::serialize` for an engine with
        // the same compatibility hash (part of the file name); wasmtime also
        // checks the header and refuses incompatible artifacts.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unusable cached component");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Store `component` under `content_hash` (atomically: temp file + rename).
    /// Failures are logged, never fatal: the cache is an optimisation.
    pub fn store(&self, content_hash: &str, component: &Component) {
        if let Err(e) = self.try_store(content_hash, component) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write component cache");
        }
    }

    fn try_store(&self, content_hash: &str, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = component.serialize()?;
        let path = self.path_for(content_hash);
        let tmp = tmp_path(&path);
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp{}", std::process::id()));
    PathBuf::from(s)
}
