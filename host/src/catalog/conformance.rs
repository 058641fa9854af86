//! The behaviour every [`CatalogStore`] must have, as one async function per
//! behaviour. A store's tests run them all with
//! `conformance_suite!(make)`, where `async fn make() -> (Box<dyn
//! CatalogStore>, Guard)` builds a fresh, empty store (the guard, e.g. a
//! temporary directory, lives as long as the test), which generates one
//! `#[tokio::test]` per behaviour. [`run_all`] runs them in sequence on one
//! store.

use super::{Canary, CatalogError, CatalogStore, KeyRecord, TenantRecord, VersionRecord};
use crate::plan::PlanOverrides;
use crate::tenant::TenantId;

/// Generates one `#[tokio::test]` per behaviour of this module, each on a
/// fresh store from `$make`.
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::catalog::conformance::conformance_suite!(
            @tests $make;
            full_record_round_trips,
            put_replaces_the_record,
            get_of_a_missing_tenant_is_none,
            list_is_sorted_by_id,
            delete_removes_record_and_blobs,
            blob_round_trips,
            put_blob_is_idempotent,
            put_blob_with_the_wrong_hash_is_refused,
            get_blob_of_a_missing_blob_is_none,
            delete_blob_removes_only_that_blob,
            tenants_are_isolated,
            blob_names_that_are_not_sha256_are_refused,
            replace_writes_only_over_the_revision_read,
        );
    };
    (@tests $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (store, _guard) = $make().await;
                $crate::catalog::conformance::$name(&*store).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

/// Every behaviour in sequence, each starting from the store left by the
/// one before (they clean up after themselves).
pub(crate) async fn run_all(store: &dyn CatalogStore) {
    full_record_round_trips(store).await;
    put_replaces_the_record(store).await;
    get_of_a_missing_tenant_is_none(store).await;
    list_is_sorted_by_id(store).await;
    delete_removes_record_and_blobs(store).await;
    blob_round_trips(store).await;
    put_blob_is_idempotent(store).await;
    put_blob_with_the_wrong_hash_is_refused(store).await;
    get_blob_of_a_missing_blob_is_none(store).await;
    delete_blob_removes_only_that_blob(store).await;
    tenants_are_isolated(store).await;
    blob_names_that_are_not_sha256_are_refused(store).await;
    replace_writes_only_over_the_revision_read(store).await;
}

fn id(s: &str) -> TenantId {
    TenantId::parse(s).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    super::sha256_hex(bytes)
}

/// A record with every field set: two versions (the first `sha256`),
/// history, a canary, keys, limits, suspension and a revision.
pub(crate) fn full_record(tenant: &str, sha256: &str) -> TenantRecord {
    let mut r = TenantRecord::new(id(tenant), "pro".into(), 1_700_000_000_000);
    r.limits = PlanOverrides {
        max_connections: Some(500),
        call_deadline_ms: Some(50),
        ..PlanOverrides::default()
    };
    r.suspended = true;
    r.suspend_reason = Some("unpaid invoice \"#42\" — ünïcode".into());
    r.versions = vec![
        VersionRecord {
            version: sha256[..12].to_owned(),
            sha256: sha256.to_owned(),
            size: 183_204,
            uploaded_at_ms: 1_700_000_001_000,
            uploaded_by: "operator".into(),
            world: "tenantry:plugin/plugin@0.1.0".into(),
        },
        VersionRecord {
            version: "77aa01c3e9f2".into(),
            sha256: format!("77aa01c3e9f2{}", "0".repeat(52)),
            size: 9,
            uploaded_at_ms: 1_700_000_002_000,
            uploaded_by: "key:k_0123456789ab".into(),
            world: "tenantry:plugin/plugin@0.1.0".into(),
        },
    ];
    r.active = Some(sha256[..12].to_owned());
    r.history = vec!["000000000001".into(), "000000000002".into()];
    r.canary = Some(Canary {
        version: "77aa01c3e9f2".into(),
        percent: 10,
    });
    r.keys = vec![KeyRecord {
        id: "k_0123456789ab".into(),
        sha256: "ab".repeat(32),
        created_at_ms: 1_700_000_000_500,
    }];
    r.revision = 17;
    r
}

/// `put` then `get` and `list` return the record unchanged, every field.
pub(crate) async fn full_record_round_trips(store: &dyn CatalogStore) {
    let record = full_record("acme", &sha(b"v1"));
    store.put(&record).await.unwrap();
    assert_eq!(store.get(&id("acme")).await.unwrap(), Some(record.clone()));
    let (records, errors) = store.list().await.unwrap();
    assert_eq!(records, [record]);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(store.delete(&id("acme")).await.unwrap());
}

/// A second `put` of the same id replaces the record (not merged).
pub(crate) async fn put_replaces_the_record(store: &dyn CatalogStore) {
    store.put(&full_record("acme", &sha(b"v1"))).await.unwrap();
    let mut plain = TenantRecord::new(id("acme"), "starter".into(), 5);
    plain.revision = 18;
    store.put(&plain).await.unwrap();
    assert_eq!(store.get(&id("acme")).await.unwrap(), Some(plain.clone()));
    assert_eq!(store.list().await.unwrap().0, [plain]);
    assert!(store.delete(&id("acme")).await.unwrap());
}

/// `get` of an id never stored is `None`.
pub(crate) async fn get_of_a_missing_tenant_is_none(store: &dyn CatalogStore) {
    assert_eq!(store.get(&id("nobody")).await.unwrap(), None);
}

/// `list` returns every record sorted by id, whatever the order of `put`.
pub(crate) async fn list_is_sorted_by_id(store: &dyn CatalogStore) {
    let (records, errors) = store.list().await.unwrap();
    assert!(records.is_empty() && errors.is_empty());
    let ids = ["m", "a-2", "z9", "a", "0day", "a-10"];
    for t in ids {
        store
            .put(&TenantRecord::new(id(t), "starter".into(), 1))
            .await
            .unwrap();
    }
    let (records, errors) = store.list().await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let listed: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(listed, ["0day", "a", "a-10", "a-2", "m", "z9"]);
    for t in ids {
        assert!(store.delete(&id(t)).await.unwrap());
    }
}

/// `delete` removes the record and every blob; a second `delete` is
/// `false`; the id can be created again, empty.
pub(crate) async fn delete_removes_record_and_blobs(store: &dyn CatalogStore) {
    let (b1, b2) = (b"plugin one".as_slice(), b"plugin two".as_slice());
    let acme = id("acme");
    store.put_blob(&acme, &sha(b1), b1).await.unwrap();
    store.put_blob(&acme, &sha(b2), b2).await.unwrap();
    store.put(&full_record("acme", &sha(b1))).await.unwrap();

    assert!(store.delete(&acme).await.unwrap());
    assert_eq!(store.get(&acme).await.unwrap(), None);
    assert!(store.list().await.unwrap().0.is_empty());
    assert_eq!(store.get_blob(&acme, &sha(b1)).await.unwrap(), None);
    assert_eq!(store.get_blob(&acme, &sha(b2)).await.unwrap(), None);
    assert!(!store.delete(&acme).await.unwrap());

    store
        .put(&TenantRecord::new(acme.clone(), "starter".into(), 2))
        .await
        .unwrap();
    assert_eq!(store.get_blob(&acme, &sha(b1)).await.unwrap(), None);
    assert!(store.delete(&acme).await.unwrap());
}

/// `put_blob` then `get_blob` returns the same bytes (large and empty ones too).
pub(crate) async fn blob_round_trips(store: &dyn CatalogStore) {
    let acme = id("acme");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for bytes in [big.as_slice(), b"\0asm\x0d\0\x01\0", b""] {
        store.put_blob(&acme, &sha(bytes), bytes).await.unwrap();
        assert_eq!(
            store.get_blob(&acme, &sha(bytes)).await.unwrap().as_deref(),
            Some(bytes)
        );
    }
    store.delete(&acme).await.unwrap();
}

/// Storing the same bytes again is a no-op that succeeds.
pub(crate) async fn put_blob_is_idempotent(store: &dyn CatalogStore) {
    let acme = id("acme");
    let bytes = b"same bytes".as_slice();
    for _ in 0..3 {
        store.put_blob(&acme, &sha(bytes), bytes).await.unwrap();
    }
    assert_eq!(
        store.get_blob(&acme, &sha(bytes)).await.unwrap().as_deref(),
        Some(bytes)
    );
    store.delete(&acme).await.unwrap();
}

/// Bytes that do not hash to the name are refused and nothing is stored.
pub(crate) async fn put_blob_with_the_wrong_hash_is_refused(store: &dyn CatalogStore) {
    let acme = id("acme");
    let name = sha(b"the real bytes");
    let err = store
        .put_blob(&acme, &name, b"other bytes")
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::Corrupt { .. }), "{err}");
    assert_eq!(store.get_blob(&acme, &name).await.unwrap(), None);
    // The right bytes are then accepted.
    store
        .put_blob(&acme, &name, b"the real bytes")
        .await
        .unwrap();
    // And wrong bytes under an existing name are still refused.
    assert!(store.put_blob(&acme, &name, b"other").await.is_err());
    assert_eq!(
        store.get_blob(&acme, &name).await.unwrap().as_deref(),
        Some(b"the real bytes".as_slice())
    );
    store.delete(&acme).await.unwrap();
}

/// `get_blob` of bytes never stored is `None`, for known and unknown tenants.
pub(crate) async fn get_blob_of_a_missing_blob_is_none(store: &dyn CatalogStore) {
    let acme = id("acme");
    assert_eq!(store.get_blob(&acme, &sha(b"x")).await.unwrap(), None);
    store
        .put(&TenantRecord::new(acme.clone(), "starter".into(), 1))
        .await
        .unwrap();
    assert_eq!(store.get_blob(&acme, &sha(b"x")).await.unwrap(), None);
    store.delete(&acme).await.unwrap();
}

/// `delete_blob` removes that blob only; deleting an absent one is a no-op.
pub(crate) async fn delete_blob_removes_only_that_blob(store: &dyn CatalogStore) {
    let acme = id("acme");
    let (b1, b2) = (b"one".as_slice(), b"two".as_slice());
    store.put_blob(&acme, &sha(b1), b1).await.unwrap();
    store.put_blob(&acme, &sha(b2), b2).await.unwrap();
    store.delete_blob(&acme, &sha(b1)).await.unwrap();
    assert_eq!(store.get_blob(&acme, &sha(b1)).await.unwrap(), None);
    assert_eq!(
        store.get_blob(&acme, &sha(b2)).await.unwrap().as_deref(),
        Some(b2)
    );
    store.delete_blob(&acme, &sha(b1)).await.unwrap();
    store.delete_blob(&id("nobody"), &sha(b1)).await.unwrap();
    store.delete(&acme).await.unwrap();
}

/// One tenant's blobs are invisible to another, and deleting one tenant
/// leaves the other's record and blobs alone.
pub(crate) async fn tenants_are_isolated(store: &dyn CatalogStore) {
    let (a, b) = (id("a"), id("b"));
    let bytes = b"a's plugin".as_slice();
    store.put_blob(&a, &sha(bytes), bytes).await.unwrap();
    store.put(&full_record("a", &sha(bytes))).await.unwrap();
    store
        .put(&TenantRecord::new(b.clone(), "starter".into(), 1))
        .await
        .unwrap();
    assert_eq!(store.get_blob(&b, &sha(bytes)).await.unwrap(), None);
    store.delete_blob(&b, &sha(bytes)).await.unwrap();
    assert_eq!(
        store.get_blob(&a, &sha(bytes)).await.unwrap().as_deref(),
        Some(bytes)
    );

    let b_bytes = b"b's plugin".as_slice();
    store.put_blob(&b, &sha(b_bytes), b_bytes).await.unwrap();
    assert!(store.delete(&a).await.unwrap());
    assert_eq!(
        store.get(&b).await.unwrap().map(|r| r.plan),
        Some("starter".into())
    );
    assert_eq!(
        store.get_blob(&b, &sha(b_bytes)).await.unwrap().as_deref(),
        Some(b_bytes)
    );
    assert!(store.delete(&b).await.unwrap());
}

/// Blob names must be 64 lowercase hex digits, for every blob method.
pub(crate) async fn blob_names_that_are_not_sha256_are_refused(store: &dyn CatalogStore) {
    let acme = id("acme");
    let good = sha(b"x");
    let bad = [
        String::new(),
        good[..63].to_owned(),
        format!("{good}0"),
        good.to_uppercase(),
        format!("../../{}", &good[6..]),
        format!("{}/x", &good[..62]),
        format!("{}.wasm", &good[..59]),
        format!("{}g", &good[..63]),
    ];
    for name in &bad {
        assert!(store.put_blob(&acme, name, b"x").await.is_err(), "{name:?}");
        assert!(store.get_blob(&acme, name).await.is_err(), "{name:?}");
        assert!(store.delete_blob(&acme, name).await.is_err(), "{name:?}");
    }
    assert!(store.list().await.unwrap().0.is_empty());
    store.delete(&acme).await.unwrap();
}

/// `replace` writes only if the stored revision is the one read (`None`:
/// nothing stored); otherwise it is a `Conflict` and nothing changes.
pub(crate) async fn replace_writes_only_over_the_revision_read(store: &dyn CatalogStore) {
    let acme = id("acme");
    let mut r1 = TenantRecord::new(acme.clone(), "starter".into(), 1);
    r1.revision = 1;
    store.replace(&r1, None).await.unwrap();
    // A second creation loses.
    let mut other = r1.clone();
    other.plan = "free".into();
    assert!(matches!(
        store.replace(&other, None).await,
        Err(CatalogError::Conflict { .. })
    ));
    // Two writers read revision 1: the first wins, the second conflicts.
    let mut r2 = r1.clone();
    r2.revision = 2;
    r2.plan = "professional".into();
    let mut stale = r1.clone();
    stale.revision = 2;
    stale.plan = "enterprise".into();
    store.replace(&r2, Some(1)).await.unwrap();
    assert!(matches!(
        store.replace(&stale, Some(1)).await,
        Err(CatalogError::Conflict { .. })
    ));
    assert_eq!(store.get(&acme).await.unwrap(), Some(r2.clone()));
    // Reading a revision that never existed conflicts too.
    assert!(matches!(
        store.replace(&r2, Some(7)).await,
        Err(CatalogError::Conflict { .. })
    ));
    // After a delete, the id can be created again.
    assert!(store.delete(&acme).await.unwrap());
    assert!(matches!(
        store.replace(&r2, Some(2)).await,
        Err(CatalogError::Conflict { .. })
    ));
    store.replace(&r1, None).await.unwrap();
    assert!(store.delete(&acme).await.unwrap());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::disk::DiskCatalog;
    use crate::catalog::memory::MemoryCatalog;

    /// The whole suite in sequence on one store also passes (behaviours
    /// leave the store as they found it).
    #[tokio::test]
    async fn run_all_passes_on_both_stores() {
        run_all(&MemoryCatalog::new()).await;
        let tmp = tempfile::TempDir::new().unwrap();
        let disk = DiskCatalog::open(tmp.path().to_path_buf()).await.unwrap();
        run_all(&disk).await;
    }
}
