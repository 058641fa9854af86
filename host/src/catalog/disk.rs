//! [`DiskCatalog`]: the catalog in a data directory (`--data-dir`).
//!
//! ```text
//! DIR/tenants/<id>/tenant.json            the record (pretty JSON)
//! DIR/tenants/<id>/plugins/<sha256>.wasm  every blob, by content hash
//! DIR/trash/                              deleted tenants on their way out
//! ```
//!
//! Every file is written to a temporary name in its final directory
//! (`<name>.tmp-<pid>-<n>`), fsynced, renamed over the final name, and the
//! directory fsynced: a crash leaves the old file or the new one, plus at
//! worst a temporary file that [`DiskCatalog::open`] removes. A tenant is
//! deleted by renaming its directory into `DIR/trash` (atomic) and then
//! removing it; `open` empties what a crash left in the trash.
//!
//! One data directory belongs to one host process: `open` removes the
//! temporary files and trash it finds, including any of another live
//! catalog on the same directory.
//!
//! All file system work runs on tokio's blocking pool (`spawn_blocking`),
//! one task per operation.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{CatalogError, CatalogStore, TenantRecord};
use super::{check_blob_bytes, check_sha256};
use crate::tenant::TenantId;

/// The record's file name inside a tenant's directory.
const RECORD_FILE: &str = "tenant.json";
/// The blobs' directory inside a tenant's directory.
const PLUGINS_DIR: &str = "plugins";
/// Marks a temporary file: `<final name>.tmp-<pid>-<n>`.
const TMP_MARKER: &str = ".tmp-";

/// Makes temporary file names unique within the process.
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// The catalog in a data directory; see the module docs for the layout.
#[derive(Debug, Clone)]
pub struct DiskCatalog {
    dir: PathBuf,
    /// Serialises [`CatalogStore::replace`]'s read-compare-write.
    replace_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl DiskCatalog {
    /// Open the catalog in `dir`, creating `dir/tenants` (and `dir`) if
    /// needed, and clean up after a crash: empty `dir/trash` and remove
    /// temporary files left in the tenants' directories.
    pub async fn open(dir: PathBuf) -> Result<Self, CatalogError> {
        let catalog = Self {
            dir,
            replace_lock: std::sync::Arc::new(tokio::sync::Mutex::new(())),
        };
        let root = catalog.dir.clone();
        blocking("open the data directory", move || open_dir(&root)).await?;
        Ok(catalog)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tenants_dir(&self) -> PathBuf {
        self.dir.join("tenants")
    }
}

#[async_trait]
impl CatalogStore for DiskCatalog {
    async fn list(&self) -> Result<Listing, CatalogError> {
        let tenants = self.tenants_dir();
        blocking("list tenants", move || list_records(&tenants)).await
    }

    async fn get(&self, id: &TenantId) -> Result<Option<TenantRecord>, CatalogError> {
        let tenants = self.tenants_dir();
        let id = id.clone();
        blocking("read a tenant record", move || read_record(&tenants, &id)).await
    }

    async fn put(&self, record: &TenantRecord) -> Result<(), CatalogError> {
        let tenants = self.tenants_dir();
        let id = record.id.clone();
        let json = serde_json::to_vec_pretty(record).map_err(|e| CatalogError::Io {
            op: format!("encode the record of tenant {id}"),
            message: e.to_string(),
        })?;
        blocking("write a tenant record", move || {
            let dir = ensure_dirs(&tenants, &[id.as_str()])?;
            write_atomic(&dir, RECORD_FILE, &json)
        })
        .await
    }

    async fn replace(
        &self,
        record: &TenantRecord,
        read_revision: Option<u64>,
    ) -> Result<(), CatalogError> {
        // One process per data directory (see the module docs): a process
        // lock makes the read-compare-write atomic.
        let _guard = self.replace_lock.lock().await;
        let stored = self.get(&record.id).await?.map(|r| r.revision);
        if stored != read_revision {
            return Err(CatalogError::Conflict {
                id: record.id.to_string(),
            });
        }
        self.put(record).await
    }

    async fn delete(&self, id: &TenantId) -> Result<bool, CatalogError> {
        let root = self.dir.clone();
        let id = id.clone();
        blocking("delete a tenant", move || delete_tenant(&root, &id)).await
    }

    async fn put_blob(
        &self,
        id: &TenantId,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<(), CatalogError> {
        check_sha256(id, sha256)?;
        let tenants = self.tenants_dir();
        let (id, sha256, bytes) = (id.clone(), sha256.to_owned(), bytes.to_vec());
        blocking("store a blob", move || {
            write_blob(&tenants, &id, &sha256, &bytes)
        })
        .await
    }

    async fn get_blob(&self, id: &TenantId, sha256: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        check_sha256(id, sha256)?;
        let path = blob_path(&self.tenants_dir(), id, sha256);
        let (id, sha256) = (id.clone(), sha256.to_owned());
        blocking("read a blob", move || {
            let bytes = match fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error(format!("read {}", path.display()), e)),
            };
            check_blob_bytes(&id, &sha256, &bytes, &path.display().to_string())?;
            Ok(Some(bytes))
        })
        .await
    }

    async fn delete_blob(&self, id: &TenantId, sha256: &str) -> Result<(), CatalogError> {
        check_sha256(id, sha256)?;
        let path = blob_path(&self.tenants_dir(), id, sha256);
        blocking("delete a blob", move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error(format!("remove {}", path.display()), e)),
            }
            match path.parent() {
                Some(dir) => fsync_dir(dir),
                None => Ok(()),
            }
        })
        .await
    }
}

/// Run blocking file system work `f` on tokio's blocking pool; `what` names
/// it in the error if the task itself fails (panics).
async fn blocking<T, F>(what: &str, f: F) -> Result<T, CatalogError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, CatalogError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CatalogError::Io {
            op: what.to_owned(),
            message: e.to_string(),
        })?
}

/// An I/O error while doing `op` (which names the path).
fn io_error(op: String, e: io::Error) -> CatalogError {
    CatalogError::Io {
        op,
        message: e.to_string(),
    }
}

/// `tenants/<id>/plugins/<sha256>.wasm`. `sha256` must have passed
/// [`check_sha256`].
fn blob_path(tenants: &Path, id: &TenantId, sha256: &str) -> PathBuf {
    tenants
        .join(id.as_str())
        .join(PLUGINS_DIR)
        .join(format!("{sha256}.wasm"))
}

/// Create `dir`, `dir/tenants` and `dir/trash` as needed; empty the trash
/// and remove temporary files from the tenants' directories.
fn open_dir(dir: &Path) -> Result<(), CatalogError> {
    fs::create_dir_all(dir).map_err(|e| io_error(format!("create {}", dir.display()), e))?;
    let tenants = ensure_dirs(dir, &["tenants"])?;
    let trash = ensure_dirs(dir, &["trash"])?;
    for entry in read_dir(&trash)? {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(e) => Err(e),
        };
        removed.map_err(|e| io_error(format!("empty the trash: remove {}", path.display()), e))?;
    }
    for entry in read_dir(&tenants)? {
        let tenant_dir = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        remove_tmp_files(&tenant_dir)?;
        let plugins = tenant_dir.join(PLUGINS_DIR);
        if plugins.is_dir() {
            remove_tmp_files(&plugins)?;
        }
    }
    Ok(())
}

/// Remove every `*.tmp-*` file directly in `dir`.
fn remove_tmp_files(dir: &Path) -> Result<(), CatalogError> {
    for entry in read_dir(dir)? {
        let is_tmp = entry.file_name().to_string_lossy().contains(TMP_MARKER);
        if is_tmp && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| {
                io_error(
                    format!("remove leftover temporary file {}", path.display()),
                    e,
                )
            })?;
            tracing::info!(path = %path.display(), "removed a leftover temporary file");
        }
    }
    Ok(())
}

/// The entries of `dir`.
fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, CatalogError> {
    let op = || format!("list {}", dir.display());
    fs::read_dir(dir)
        .map_err(|e| io_error(op(), e))?
        .map(|entry| entry.map_err(|e| io_error(op(), e)))
        .collect()
}

/// What [`CatalogStore::list`] returns: the records and the unreadable ones.
type Listing = (Vec<TenantRecord>, Vec<(String, CatalogError)>);

/// Every record under `tenants`, sorted by id, and the tenant directories
/// whose record could not be read (by directory name).
fn list_records(tenants: &Path) -> Result<Listing, CatalogError> {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for entry in read_dir(tenants)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => continue,
            Err(e) => {
                errors.push((name, io_error(format!("stat {}", path.display()), e)));
                continue;
            }
        }
        let Ok(id) = TenantId::parse(&name) else {
            let error = CatalogError::Corrupt {
                what: path.display().to_string(),
                message: "the directory name is not a valid tenant id".to_owned(),
            };
            errors.push((name, error));
            continue;
        };
        match read_record(tenants, &id) {
            Ok(Some(record)) => records.push(record),
            // A directory without a record (blobs stored first): no tenant.
            Ok(None) => {}
            Err(e) => errors.push((name, e)),
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    errors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((records, errors))
}

/// The record in `tenants/<id>/tenant.json`, if the file exists.
fn read_record(tenants: &Path, id: &TenantId) -> Result<Option<TenantRecord>, CatalogError> {
    let path = tenants.join(id.as_str()).join(RECORD_FILE);
    let json = match fs::read(&path) {
        Ok(json) => json,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("read {}", path.display()), e)),
    };
    let record: TenantRecord =
        serde_json::from_slice(&json).map_err(|e| CatalogError::Corrupt {
            what: path.display().to_string(),
            message: e.to_string(),
        })?;
    if record.id != *id {
        return Err(CatalogError::Corrupt {
            what: path.display().to_string(),
            message: format!("it is the record of tenant {}", record.id),
        });
    }
    Ok(Some(record))
}

/// Store `bytes` as `tenants/<id>/plugins/<sha256>.wasm` after checking
/// they hash to `sha256`. A file already there with the right bytes is
/// kept; one with other bytes (damaged) is replaced.
fn write_blob(
    tenants: &Path,
    id: &TenantId,
    sha256: &str,
    bytes: &[u8],
) -> Result<(), CatalogError> {
    check_blob_bytes(id, sha256, bytes, "upload")?;
    let path = blob_path(tenants, id, sha256);
    match fs::read(&path) {
        Ok(existing) => {
            if check_blob_bytes(id, sha256, &existing, &path.display().to_string()).is_ok() {
                return Ok(());
            }
            tracing::warn!(path = %path.display(), "replacing a damaged blob");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(format!("read {}", path.display()), e)),
    }
    let dir = ensure_dirs(tenants, &[id.as_str(), PLUGINS_DIR])?;
    write_atomic(&dir, &format!("{sha256}.wasm"), bytes)
}

/// Remove `tenants/<id>`: rename it into `trash` (atomic), make that
/// durable, then delete it. `true` if the tenant had a record.
fn delete_tenant(root: &Path, id: &TenantId) -> Result<bool, CatalogError> {
    let tenants = root.join("tenants");
    let tenant_dir = tenants.join(id.as_str());
    match fs::symlink_metadata(&tenant_dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_error(format!("stat {}", tenant_dir.display()), e)),
    }
    let record = tenant_dir.join(RECORD_FILE);
    let had_record = record
        .try_exists()
        .map_err(|e| io_error(format!("stat {}", record.display()), e))?;
    let trash = ensure_dirs(root, &["trash"])?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let target = trash.join(format!("{id}-{}-{nanos}", std::process::id()));
    fs::rename(&tenant_dir, &target).map_err(|e| {
        io_error(
            format!("move {} to {}", tenant_dir.display(), target.display()),
            e,
        )
    })?;
    fsync_dir(&tenants)?;
    // The tenant is gone; what is left in the trash goes at the next open.
    if let Err(e) = fs::remove_dir_all(&target) {
        tracing::warn!(path = %target.display(), error = %e, "could not empty the trash");
    }
    Ok(had_record)
}

/// Create `base/parts[0]/parts[1]/…` as needed, fsyncing the parent of
/// every directory created so the new entry survives a crash. `base` must
/// exist. Returns the last directory.
fn ensure_dirs(base: &Path, parts: &[&str]) -> Result<PathBuf, CatalogError> {
    let mut dir = base.to_path_buf();
    for part in parts {
        let next = dir.join(part);
        match fs::create_dir(&next) {
            Ok(()) => fsync_dir(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(format!("create {}", next.display()), e)),
        }
        dir = next;
    }
    Ok(dir)
}

/// Replace `dir/name` with `bytes` atomically and durably: write a
/// temporary file, fsync it, rename it over `dir/name`, fsync `dir`.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CatalogError> {
    let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!("{name}{TMP_MARKER}{}-{n}", std::process::id()));
    let path = dir.join(name);
    let written = (|| {
        let mut file = File::create_new(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(format!("write {}", tmp.display()), e));
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_error(
            format!("rename {} to {}", tmp.display(), path.display()),
            e,
        ));
    }
    fsync_dir(dir)
}

/// Make the entries of `dir` (creations, renames, removals) durable.
fn fsync_dir(dir: &Path) -> Result<(), CatalogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(format!("fsync directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::sha256_hex;
    use tempfile::TempDir;

    async fn make() -> (Box<dyn CatalogStore>, TempDir) {
        let tmp = TempDir::new().unwrap();
        let store = DiskCatalog::open(tmp.path().join("data")).await.unwrap();
        (Box::new(store), tmp)
    }

    crate::catalog::conformance::conformance_suite!(make);

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    async fn open(tmp: &TempDir) -> DiskCatalog {
        DiskCatalog::open(tmp.path().to_path_buf()).await.unwrap()
    }

    #[tokio::test]
    async fn layout_is_the_documented_one() {
        let tmp = TempDir::new().unwrap();
        let store = open(&tmp).await;
        let bytes = b"\0asm plugin".to_vec();
        let sha = sha256_hex(&bytes);
        store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();
        store
            .put(&TenantRecord::new(id("acme"), "starter".into(), 1))
            .await
            .unwrap();
        let tenant = tmp.path().join("tenants/acme");
        assert_eq!(
            fs::read(tenant.join(format!("plugins/{sha}.wasm"))).unwrap(),
            bytes
        );
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(tenant.join("tenant.json")).unwrap()).unwrap();
        assert_eq!(json["id"], "acme");
        assert_eq!(json["plan"], "starter");
        // No temporary files are left behind.
        let names: Vec<String> = read_dir(&tenant)
            .unwrap()
            .iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[tokio::test]
    async fn a_corrupt_record_is_reported_while_the_others_load() {
        let tmp = TempDir::new().unwrap();
        let store = open(&tmp).await;
        for t in ["a", "b", "c"] {
            store
                .put(&TenantRecord::new(id(t), "starter".into(), 1))
                .await
                .unwrap();
        }
        fs::write(
            tmp.path().join("tenants/b/tenant.json"),
            b"{\"id\": \"b\", tru",
        )
        .unwrap();
        // A record filed under another tenant's directory.
        fs::create_dir(tmp.path().join("tenants/d")).unwrap();
        fs::copy(
            tmp.path().join("tenants/a/tenant.json"),
            tmp.path().join("tenants/d/tenant.json"),
        )
        .unwrap();
        // A directory whose name is not a tenant id.
        fs::create_dir(tmp.path().join("tenants/Not_An_Id")).unwrap();
        // Stray files and a directory without a record are not tenants.
        fs::write(tmp.path().join("tenants/README"), b"hi").unwrap();
        fs::create_dir(tmp.path().join("tenants/e")).unwrap();

        let (records, errors) = store.list().await.unwrap();
        let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        let bad: Vec<&str> = errors.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(bad, ["Not_An_Id", "b", "d"]);
        assert!(
            errors
                .iter()
                .all(|(_, e)| matches!(e, CatalogError::Corrupt { .. }))
        );
        assert!(matches!(
            store.get(&id("b")).await,
            Err(CatalogError::Corrupt { .. })
        ));
        // Replacing the corrupt record repairs it.
        store
            .put(&TenantRecord::new(id("b"), "pro".into(), 2))
            .await
            .unwrap();
        assert_eq!(store.get(&id("b")).await.unwrap().unwrap().plan, "pro");
    }

    #[tokio::test]
    async fn a_flipped_byte_in_a_blob_is_an_error_and_a_reupload_repairs_it() {
        let tmp = TempDir::new().unwrap();
        let store = open(&tmp).await;
        let bytes = vec![7u8; 4096];
        let sha = sha256_hex(&bytes);
        store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();
        let path = tmp.path().join(format!("tenants/acme/plugins/{sha}.wasm"));
        let mut damaged = fs::read(&path).unwrap();
        damaged[1000] ^= 0x01;
        fs::write(&path, &damaged).unwrap();
        let err = store.get_blob(&id("acme"), &sha).await.unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt { .. }), "{err}");
        // Uploading the same bytes again replaces the damaged file.
        store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();
        assert_eq!(
            store.get_blob(&id("acme"), &sha).await.unwrap(),
            Some(bytes)
        );
    }

    #[tokio::test]
    async fn open_cleans_leftover_temporary_files_and_trash() {
        let tmp = TempDir::new().unwrap();
        let store = open(&tmp).await;
        let record = TenantRecord::new(id("acme"), "starter".into(), 1);
        store.put(&record).await.unwrap();
        let bytes = b"plugin".to_vec();
        let sha = sha256_hex(&bytes);
        store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();

        // What a crash mid-write and mid-delete leaves behind.
        let tenant = tmp.path().join("tenants/acme");
        let tmp_record = tenant.join("tenant.json.tmp-4242-7");
        let tmp_blob = tenant.join(format!("plugins/{sha}.wasm.tmp-4242-8"));
        fs::write(&tmp_record, b"{\"half").unwrap();
        fs::write(&tmp_blob, b"half").unwrap();
        let trashed = tmp.path().join("trash/old-4242-123456789");
        fs::create_dir_all(trashed.join("plugins")).unwrap();
        fs::write(trashed.join("tenant.json"), b"{}").unwrap();
        fs::write(tmp.path().join("trash/stray-file"), b"x").unwrap();

        // list ignores them.
        let (records, errors) = store.list().await.unwrap();
        assert_eq!(records, std::slice::from_ref(&record));
        assert!(errors.is_empty(), "{errors:?}");

        drop(store);
        let store = open(&tmp).await;
        assert!(!tmp_record.exists());
        assert!(!tmp_blob.exists());
        assert_eq!(read_dir(&tmp.path().join("trash")).unwrap().len(), 0);
        assert_eq!(store.get(&id("acme")).await.unwrap(), Some(record));
        assert_eq!(
            store.get_blob(&id("acme"), &sha).await.unwrap(),
            Some(bytes)
        );
    }

    #[tokio::test]
    async fn a_fresh_catalog_reads_what_another_wrote() {
        let tmp = TempDir::new().unwrap();
        let bytes = b"\0asm v1".to_vec();
        let sha = sha256_hex(&bytes);
        let record = crate::catalog::conformance::full_record("acme", &sha);
        {
            let store = open(&tmp).await;
            store.put_blob(&id("acme"), &sha, &bytes).await.unwrap();
            store.put(&record).await.unwrap();
        }
        let store = open(&tmp).await;
        assert_eq!(store.get(&id("acme")).await.unwrap(), Some(record.clone()));
        assert_eq!(store.list().await.unwrap().0, [record]);
        assert_eq!(
            store.get_blob(&id("acme"), &sha).await.unwrap(),
            Some(bytes)
        );
    }

    #[tokio::test]
    async fn open_creates_the_directory() {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("a/b/data");
        let store = DiskCatalog::open(dir.clone()).await.unwrap();
        assert_eq!(store.dir(), dir);
        assert!(dir.join("tenants").is_dir());
        assert!(store.list().await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn open_fails_with_context_when_the_directory_is_a_file() {
        let tmp = TempDir::new().unwrap();
        let file = tmp.path().join("data");
        fs::write(&file, b"not a directory").unwrap();
        let err = DiskCatalog::open(file).await.unwrap_err();
        assert!(matches!(err, CatalogError::Io { .. }), "{err}");
        assert!(err.to_string().contains("data"), "{err}");
    }
}
