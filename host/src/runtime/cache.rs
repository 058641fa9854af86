//! The on-disk cache of compiled components, keyed by the content hash of the
//! `.wasm` and the engine's compatibility hash, so a restart loads plugins in
//! milliseconds instead of recompiling them.
//!
//! An entry is the serialized component followed by a 32-byte trailer: the
//! SHA-256 of the serialized bytes. A load reads the whole file, checks the
//! trailer and only then hands the bytes to `Component::deserialize` (a copy
//! in memory, never an mmap of the file). An entry that fails the check (a
//! flipped bit, a torn write, a file from an older format) is deleted and
//! reported as a miss, so the caller recompiles: a corrupt entry is never
//! trusted. The trailer protects against corruption, not against someone
//! who can write to the cache directory (that is the operator's directory).
//!
//! All methods do blocking file I/O: call them from a blocking thread.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Length of the integrity trailer (a SHA-256).
const TRAILER: usize = 32;

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

    /// Load the compiled component for `content_hash`, if cached and intact.
    /// A corrupt or incompatible entry is removed and reported as a miss.
    pub fn load(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.path_for(content_hash);
        let file = match std::fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read cached component");
                return None;
            }
        };
        let Some(body) = verified_body(&file) else {
            tracing::warn!(path = %path.display(), "dropping corrupt cached component (checksum mismatch)");
            remove(&path);
            return None;
        };
        // SAFETY: `body` is byte for byte what this host wrote with
        // `Component::serialize` (its SHA-256 matches the trailer written
        // with it) for an engine with the same compatibility hash (part of
        // the file name); wasmtime also checks the header and refuses
        // incompatible artifacts. `deserialize` copies the bytes, so later
        // changes to the file cannot affect the loaded code.
        match unsafe { Component::deserialize(engine, body) } {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "dropping unusable cached component");
                remove(&path);
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
        let mut bytes = component.serialize()?;
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        let path = self.path_for(content_hash);
        let tmp = tmp_path(&path);
        if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
            remove(&tmp);
            return Err(e.into());
        }
        Ok(())
    }
}

/// The serialized component in a cache file, if its trailer matches.
fn verified_body(file: &[u8]) -> Option<&[u8]> {
    let split = file.len().checked_sub(TRAILER)?;
    let (body, trailer) = file.split_at(split);
    (Sha256::digest(body).as_slice() == trailer).then_some(body)
}

/// Remove a cache file, logging (not failing) if that is impossible.
fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove cache file");
    }
}

/// A temp file next to `path`, unique per store (two stores of the same
/// entry may run at once).
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(
        ".tmp{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::backend::memory;
    use crate::hub::Hub;
    use crate::plan::Plan;
    use crate::quota::TenantQuota;
    use crate::runtime::{CallContext, Runtime, RuntimeConfig};
    use crate::tenant::TenantId;

    fn runtime(cache_dir: &Path) -> Arc<Runtime> {
        let config = RuntimeConfig {
            cache_dir: Some(cache_dir.to_owned()),
            max_instances: 8,
            ..RuntimeConfig::default()
        };
        Runtime::new(config, memory::backends(Hub::new())).unwrap()
    }

    fn fixture() -> Vec<u8> {
        std::fs::read(crate::bundled::plugin_path("fixture")).unwrap()
    }

    fn ctx() -> CallContext {
        CallContext {
            user: None,
            connection_id: "c".into(),
            request_id: "r".into(),
            outbound: None,
        }
    }

    /// The one entry in the cache directory.
    fn entry(dir: &Path) -> PathBuf {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }

    /// Load `fixture` through a fresh runtime on `dir` and make a call.
    async fn load_and_call(dir: &Path) -> bool {
        let rt = runtime(dir);
        let plan = Plan::built_in("starter").unwrap();
        let p = rt
            .load_plugin(
                TenantId::parse("acme").unwrap(),
                TenantQuota::new(plan, 1),
                &fixture(),
            )
            .await
            .unwrap();
        assert_eq!(p.call(ctx(), "fixture/echo", "[7]").await.unwrap(), "7");
        // Whether the component now comes from the cache.
        rt.compile(Arc::from(fixture().as_slice()), None)
            .await
            .unwrap()
            .from_cache
    }

    /// Write `bytes` as the entry at `path` (in place: the cache never maps
    /// its files, so no runtime can be affected).
    fn corrupt(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
    }

    #[tokio::test]
    async fn entries_carry_a_checksum_and_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_and_call(dir.path()).await);
        let file = std::fs::read(entry(dir.path())).unwrap();
        assert!(verified_body(&file).is_some());
        // Another runtime (a restart) uses the entry as it is.
        assert!(load_and_call(dir.path()).await);
        assert_eq!(std::fs::read(entry(dir.path())).unwrap(), file);
    }

    #[tokio::test]
    async fn an_entry_with_a_flipped_byte_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_and_call(dir.path()).await);
        let path = entry(dir.path());
        let good = std::fs::read(&path).unwrap();
        // One byte in the code, one in the header, one in the trailer.
        for at in [good.len() / 2, 3, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            corrupt(&path, &bad);
            let engine = runtime(dir.path()).engine.clone();
            let cache = ComponentCache::new(dir.path().to_owned(), &engine);
            let hash = path.file_name().unwrap().to_string_lossy();
            let hash = hash.split('-').next().unwrap();
            assert!(cache.load(&engine, hash).is_none(), "byte {at} trusted");
            assert!(!path.exists(), "the corrupt entry is deleted");
            corrupt(&path, &bad);
            // Through the runtime: recompiled, stored afresh, and it serves.
            assert!(load_and_call(dir.path()).await);
            let fresh = std::fs::read(&path).unwrap();
            assert_ne!(fresh, bad);
            assert!(verified_body(&fresh).is_some());
        }
    }

    #[tokio::test]
    async fn a_truncated_entry_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_and_call(dir.path()).await);
        let path = entry(dir.path());
        let good = std::fs::read(&path).unwrap();
        for len in [good.len() - 1, good.len() - TRAILER, good.len() / 2, 10, 0] {
            corrupt(&path, &good[..len]);
            assert!(load_and_call(dir.path()).await, "truncated to {len}");
            let fresh = std::fs::read(&path).unwrap();
            assert!(verified_body(&fresh).is_some(), "truncated to {len}");
        }
    }

    #[test]
    fn the_trailer_is_checked() {
        let mut file = b"compiled code".to_vec();
        let sum = Sha256::digest(&file);
        file.extend_from_slice(&sum);
        assert_eq!(verified_body(&file), Some(&b"compiled code"[..]));
        assert_eq!(verified_body(&file[1..]), None);
        let empty = Sha256::digest(b"");
        assert_eq!(verified_body(&empty), Some(&b""[..]));
        assert_eq!(verified_body(&empty[1..]), None);
        assert_eq!(verified_body(&sum), None);
        assert_eq!(verified_body(b""), None);
    }
}
