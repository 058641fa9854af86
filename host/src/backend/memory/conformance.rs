//! Behavioural suites every backend implementation must pass: the memory
//! backends call them in unit tests, the Redis/Postgres backends in their
//! integration tests. Each suite panics (like `assert!`) on the first
//! behaviour that differs, so call it from a `#[test]`.
//!
//! The suites use tenants named `conformance-*` and keys under `conf:`;
//! run them against an otherwise unused store.

use std::time::Duration;

use crate::backend::{BackendError, Kv, KvQuota};

/// The quota the general part of the suite writes under (never reached).
const Q: KvQuota = KvQuota::UNLIMITED;
use crate::tenant::TenantId;

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

/// The [`Kv`] contract: get/set/delete, TTLs, `incr` with Redis `INCRBY`
/// semantics, and tenant isolation. Takes about 0.3 s (TTL waits).
pub async fn kv_conformance(kv: &dyn Kv) {
    kv_quota_conformance(kv).await;
    kv_purge_conformance(kv).await;
    let a = tenant("conformance-a");
    let b = tenant("conformance-b");

    // get / set / delete.
    assert_eq!(kv.get(&a, "conf:missing").await, Ok(None), "absent key");
    kv.set(&a, "conf:k", b"v1".to_vec(), None, Q).await.unwrap();
    assert_eq!(kv.get(&a, "conf:k").await, Ok(Some(b"v1".to_vec())));
    kv.set(&a, "conf:k", b"v2".to_vec(), None, Q).await.unwrap();
    assert_eq!(
        kv.get(&a, "conf:k").await,
        Ok(Some(b"v2".to_vec())),
        "set replaces"
    );
    kv.set(&a, "conf:bin", vec![0, 255, 10], None, Q)
        .await
        .unwrap();
    assert_eq!(
        kv.get(&a, "conf:bin").await,
        Ok(Some(vec![0, 255, 10])),
        "bytes round-trip"
    );
    kv.set(&a, "conf:empty", Vec::new(), None, Q).await.unwrap();
    assert_eq!(
        kv.get(&a, "conf:empty").await,
        Ok(Some(Vec::new())),
        "empty value is present"
    );
    assert_eq!(kv.delete(&a, "conf:k").await, Ok(true));
    assert_eq!(kv.delete(&a, "conf:k").await, Ok(false), "second delete");
    assert_eq!(kv.get(&a, "conf:k").await, Ok(None), "deleted");

    // Tenant isolation: equal keys are different entries.
    kv.set(&a, "conf:shared", b"a".to_vec(), None, Q)
        .await
        .unwrap();
    assert_eq!(
        kv.get(&b, "conf:shared").await,
        Ok(None),
        "b cannot see a's key"
    );
    kv.set(&b, "conf:shared", b"b".to_vec(), None, Q)
        .await
        .unwrap();
    assert_eq!(kv.get(&a, "conf:shared").await, Ok(Some(b"a".to_vec())));
    assert_eq!(kv.delete(&b, "conf:shared").await, Ok(true));
    assert_eq!(
        kv.get(&a, "conf:shared").await,
        Ok(Some(b"a".to_vec())),
        "b's delete"
    );
    assert_eq!(kv.incr(&b, "conf:ctr", 5, Q).await, Ok(5));
    assert_eq!(
        kv.incr(&a, "conf:ctr", 1, Q).await,
        Ok(1),
        "counters are per tenant"
    );

    // incr: Redis INCRBY.
    assert_eq!(
        kv.incr(&a, "conf:n", 0, Q).await,
        Ok(0),
        "absent counts as 0"
    );
    assert_eq!(
        kv.get(&a, "conf:n").await,
        Ok(Some(b"0".to_vec())),
        "incr creates"
    );
    assert_eq!(kv.incr(&a, "conf:n", 10, Q).await, Ok(10));
    assert_eq!(kv.incr(&a, "conf:n", -15, Q).await, Ok(-5));
    assert_eq!(
        kv.get(&a, "conf:n").await,
        Ok(Some(b"-5".to_vec())),
        "stored as decimal"
    );
    kv.set(&a, "conf:n", b"41".to_vec(), None, Q).await.unwrap();
    assert_eq!(
        kv.incr(&a, "conf:n", 1, Q).await,
        Ok(42),
        "incr on a set decimal"
    );
    for bad in [
        &b"abc"[..],
        b"1.5",
        b" 1",
        b"+1",
        b"",
        b"99999999999999999999",
    ] {
        kv.set(&a, "conf:bad", bad.to_vec(), None, Q).await.unwrap();
        assert!(
            matches!(
                kv.incr(&a, "conf:bad", 1, Q).await,
                Err(BackendError::Invalid(_))
            ),
            "incr on {:?} must be Invalid",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(
            kv.get(&a, "conf:bad").await,
            Ok(Some(bad.to_vec())),
            "left unchanged"
        );
    }
    kv.set(&a, "conf:max", i64::MAX.to_string().into_bytes(), None, Q)
        .await
        .unwrap();
    assert!(
        matches!(
            kv.incr(&a, "conf:max", 1, Q).await,
            Err(BackendError::Invalid(_))
        ),
        "overflow is Invalid"
    );
    assert_eq!(
        kv.get(&a, "conf:max").await,
        Ok(Some(i64::MAX.to_string().into_bytes())),
        "overflow leaves the value"
    );
    assert_eq!(kv.incr(&a, "conf:min", i64::MIN, Q).await, Ok(i64::MIN));
    assert!(
        matches!(
            kv.incr(&a, "conf:min", -1, Q).await,
            Err(BackendError::Invalid(_))
        ),
        "underflow is Invalid"
    );

    // TTLs.
    let short = Duration::from_millis(100);
    kv.set(&a, "conf:ttl", b"x".to_vec(), Some(short), Q)
        .await
        .unwrap();
    kv.set(
        &a,
        "conf:keep",
        b"x".to_vec(),
        Some(Duration::from_secs(60)),
        Q,
    )
    .await
    .unwrap();
    kv.set(&a, "conf:ttl-ctr", b"1".to_vec(), Some(short), Q)
        .await
        .unwrap();
    assert_eq!(kv.incr(&a, "conf:ttl-ctr", 1, Q).await, Ok(2));
    kv.set(&a, "conf:ttl-cleared", b"x".to_vec(), Some(short), Q)
        .await
        .unwrap();
    kv.set(&a, "conf:ttl-cleared", b"y".to_vec(), None, Q)
        .await
        .unwrap();
    assert_eq!(
        kv.get(&a, "conf:ttl").await,
        Ok(Some(b"x".to_vec())),
        "before expiry"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(kv.get(&a, "conf:ttl").await, Ok(None), "expired");
    assert_eq!(
        kv.delete(&a, "conf:ttl").await,
        Ok(false),
        "expired key is absent"
    );
    assert_eq!(
        kv.get(&a, "conf:keep").await,
        Ok(Some(b"x".to_vec())),
        "long ttl"
    );
    assert_eq!(
        kv.get(&a, "conf:ttl-ctr").await,
        Ok(None),
        "incr keeps the ttl"
    );
    assert_eq!(
        kv.incr(&a, "conf:ttl-ctr", 1, Q).await,
        Ok(1),
        "expired counter restarts"
    );
    assert_eq!(
        kv.get(&a, "conf:ttl-cleared").await,
        Ok(Some(b"y".to_vec())),
        "set without ttl removes the ttl"
    );
    assert!(
        matches!(
            kv.set(&a, "conf:zero", b"x".to_vec(), Some(Duration::ZERO), Q)
                .await,
            Err(BackendError::Invalid(_))
        ),
        "zero ttl is Invalid"
    );

    // Leave the store as we found it (best effort).
    for key in [
        "conf:bin",
        "conf:empty",
        "conf:shared",
        "conf:ctr",
        "conf:n",
        "conf:bad",
        "conf:max",
        "conf:min",
        "conf:keep",
        "conf:ttl-ctr",
        "conf:ttl-cleared",
    ] {
        for t in [&a, &b] {
            let _ = kv.delete(t, key).await;
        }
    }
}

/// Purging a tenant removes all its keys (with or without TTL), frees its
/// quota, and leaves other tenants alone.
async fn kv_purge_conformance(kv: &dyn Kv) {
    let a = tenant("conformance-purge-a");
    let b = tenant("conformance-purge-b");
    let q = KvQuota {
        max_keys: 2,
        max_bytes: 1000,
    };
    kv.set(&a, "k1", b"1".to_vec(), None, q).await.unwrap();
    kv.set(&a, "k2", b"2".to_vec(), Some(Duration::from_secs(60)), q)
        .await
        .unwrap();
    kv.set(&b, "k1", b"b".to_vec(), None, q).await.unwrap();
    // What each tenant holds, as its quota counts it (key + value bytes).
    assert_eq!(kv.stored(&a).await.unwrap(), (2, 6));
    assert_eq!(kv.stored(&b).await.unwrap(), (1, 3));
    assert_eq!(kv.purge_tenant(&a).await.unwrap(), 2);
    assert_eq!(kv.stored(&a).await.unwrap(), (0, 0));
    assert_eq!(kv.get(&a, "k1").await.unwrap(), None);
    assert_eq!(kv.get(&a, "k2").await.unwrap(), None);
    assert_eq!(kv.get(&b, "k1").await.unwrap(), Some(b"b".to_vec()));
    // The quota is free again.
    kv.set(&a, "k3", b"3".to_vec(), None, q).await.unwrap();
    kv.set(&a, "k4", b"4".to_vec(), None, q).await.unwrap();
    assert_eq!(kv.purge_tenant(&a).await.unwrap(), 2);
    assert_eq!(kv.purge_tenant(&a).await.unwrap(), 0);
    assert_eq!(kv.purge_tenant(&b).await.unwrap(), 1);
}

/// The KV quota: key count and bytes (keys + values) per tenant, checked
/// with the write; a refused write stores nothing; replacing a value counts
/// only the difference; `incr` of a new key counts as a key; tenants do not
/// share a quota.
async fn kv_quota_conformance(kv: &dyn Kv) {
    let a = tenant("conformance-quota-a");
    let b = tenant("conformance-quota-b");
    let q = KvQuota {
        max_keys: 2,
        max_bytes: 40,
    };
    // "conf:q1" (7) + 10 = 17 bytes; "conf:q2" (7) + 10 = 34 bytes.
    kv.set(&a, "conf:q1", vec![1; 10], None, q).await.unwrap();
    kv.set(&a, "conf:q2", vec![2; 10], None, q).await.unwrap();
    assert!(
        matches!(
            kv.set(&a, "conf:q3", vec![3], None, q).await,
            Err(BackendError::QuotaExceeded(_))
        ),
        "a third key is over max_keys"
    );
    assert_eq!(
        kv.get(&a, "conf:q3").await,
        Ok(None),
        "refused writes store nothing"
    );
    assert!(
        matches!(
            kv.incr(&a, "conf:q3", 1, q).await,
            Err(BackendError::QuotaExceeded(_))
        ),
        "incr of a new key counts as a key"
    );
    // Replacing counts the difference: 34 - 10 + 16 = 40 fits, 41 does not.
    kv.set(&a, "conf:q1", vec![4; 16], None, q).await.unwrap();
    assert!(matches!(
        kv.set(&a, "conf:q1", vec![5; 17], None, q).await,
        Err(BackendError::QuotaExceeded(_))
    ));
    assert_eq!(kv.get(&a, "conf:q1").await, Ok(Some(vec![4; 16])));
    // Another tenant has its own quota.
    kv.set(&b, "conf:q3", vec![3; 10], None, q).await.unwrap();
    // Deleting frees room.
    assert_eq!(kv.delete(&a, "conf:q2").await, Ok(true));
    kv.set(&a, "conf:q3", vec![3; 10], None, q).await.unwrap();
    for (t, k) in [(&a, "conf:q1"), (&a, "conf:q3"), (&b, "conf:q3")] {
        kv.delete(t, k).await.unwrap();
    }
}
