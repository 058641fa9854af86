//! [`MemoryCatalog`]: the catalog kept in memory, for hosts without a data
//! directory. Everything is lost when the process exits.
//!
//! Also home of the blob checks both stores share (`check_sha256`,
//! `check_blob_bytes`).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{CatalogError, CatalogStore, TenantRecord, check_blob_bytes, check_sha256};
use crate::tenant::TenantId;

/// The catalog in memory: records and blobs in maps behind one mutex.
#[derive(Default)]
pub struct MemoryCatalog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Records by id (a `BTreeMap`, so listing is sorted by id).
    records: BTreeMap<TenantId, TenantRecord>,
    /// Blobs by tenant, then by SHA-256 (hex).
    blobs: HashMap<TenantId, HashMap<String, Vec<u8>>>,
}

impl MemoryCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CatalogStore for MemoryCatalog {
    async fn list(&self) -> Result<(Vec<TenantRecord>, Vec<(String, CatalogError)>), CatalogError> {
        let records = self.inner.lock().records.values().cloned().collect();
        Ok((records, Vec::new()))
    }

    async fn get(&self, id: &TenantId) -> Result<Option<TenantRecord>, CatalogError> {
        Ok(self.inner.lock().records.get(id).cloned())
    }

    async fn put(&self, record: &TenantRecord) -> Result<(), CatalogError> {
        self.inner
            .lock()
            .records
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn replace(
        &self,
        record: &TenantRecord,
        read_revision: Option<u64>,
    ) -> Result<(), CatalogError> {
        let mut inner = self.inner.lock();
        let stored = inner.records.get(&record.id).map(|r| r.revision);
        if stored != read_revision {
            return Err(CatalogError::Conflict {
                id: record.id.to_string(),
            });
        }
        inner.records.insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn delete(&self, id: &TenantId) -> Result<bool, CatalogError> {
        let mut inner = self.inner.lock();
        inner.blobs.remove(id);
        Ok(inner.records.remove(id).is_some())
    }

    async fn put_blob(
        &self,
        id: &TenantId,
        sha256: &str,
        bytes: &[u8],
    ) -> Result<(), CatalogError> {
        check_sha256(id, sha256)?;
        // Hashing an upload of many MiB takes a while: not on the runtime.
        let bytes = bytes.to_vec();
        let (tenant, name) = (id.clone(), sha256.to_owned());
        let bytes = tokio::task::spawn_blocking(move || {
            check_blob_bytes(&tenant, &name, &bytes, "upload").map(|()| bytes)
        })
        .await
        .map_err(|e| CatalogError::Io {
            op: format!("hash blob {sha256} of tenant {id}"),
            message: e.to_string(),
        })??;
        self.inner
            .lock()
            .blobs
            .entry(id.clone())
            .or_default()
            .entry(sha256.to_owned())
            .or_insert(bytes);
        Ok(())
    }

    async fn get_blob(&self, id: &TenantId, sha256: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        check_sha256(id, sha256)?;
        // Checked against the hash when stored; memory does not rot.
        Ok(self
            .inner
            .lock()
            .blobs
            .get(id)
            .and_then(|b| b.get(sha256))
            .cloned())
    }

    async fn delete_blob(&self, id: &TenantId, sha256: &str) -> Result<(), CatalogError> {
        check_sha256(id, sha256)?;
        let mut inner = self.inner.lock();
        if let Some(blobs) = inner.blobs.get_mut(id) {
            blobs.remove(sha256);
            if blobs.is_empty() {
                inner.blobs.remove(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn make() -> (Box<dyn CatalogStore>, ()) {
        (Box::new(MemoryCatalog::new()), ())
    }

    crate::catalog::conformance::conformance_suite!(make);
}
