//! The behaviour every [`IdempotencyStore`] must show: the memory twin runs
//! it in its unit tests, the Redis store against a real Redis. Each check
//! panics (like `assert!`) on the first difference, so call it from a test.
//!
//! Uses tenants named `conformance-idem-*` and purges them at the end; run
//! it against an otherwise unused store. Takes about 0.7 s (expiry waits).

use std::time::Duration;

use futures_util::future::join_all;

use super::{IdemAcquire, IdempotencyStore, MAX_KEY_BYTES, MAX_RESULT_BYTES, MAX_TTL};
use crate::backend::BackendError;
use crate::tenant::TenantId;

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

const LONG: Duration = Duration::from_secs(60);

use IdemAcquire::{Acquired, Done, Pending};

/// The whole contract (see the module docs).
pub async fn suite(store: &dyn IdempotencyStore) {
    let a = tenant("conformance-idem-a");
    let b = tenant("conformance-idem-b");
    for t in [&a, &b] {
        store.purge_tenant(t).await.unwrap();
    }
    arguments(store, &a).await;
    concurrent_acquires(&[store, store]).await;
    abort(store, &a).await;
    commit(store, &a).await;
    expiry(store, &a).await;
    isolation(store, &a, &b).await;
    purge(store, &a, &b).await;
}

/// Bad arguments are refused and store nothing.
async fn arguments(store: &dyn IdempotencyStore, a: &TenantId) {
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        store.acquire(a, "", LONG).await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        store.acquire(a, &long, LONG).await,
        Err(BackendError::TooLarge(_))
    ));
    assert!(matches!(
        store.commit(a, &long, "1", LONG).await,
        Err(BackendError::TooLarge(_))
    ));
    assert!(matches!(
        store.abort(a, "").await,
        Err(BackendError::Invalid(_))
    ));
    for ttl in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
        assert!(matches!(
            store.acquire(a, "k", ttl).await,
            Err(BackendError::Invalid(_))
        ));
        assert!(matches!(
            store.commit(a, "k", "1", ttl).await,
            Err(BackendError::Invalid(_))
        ));
    }
    let too_big = "x".repeat(MAX_RESULT_BYTES + 1);
    assert!(matches!(
        store.commit(a, "k", &too_big, LONG).await,
        Err(BackendError::TooLarge(_))
    ));
    assert_eq!(
        store.acquire(a, "k", LONG).await,
        Ok(Acquired),
        "nothing stored"
    );
    // The largest result and the longest key work.
    let largest = "x".repeat(MAX_RESULT_BYTES);
    store.commit(a, "k", &largest, LONG).await.unwrap();
    assert_eq!(store.acquire(a, "k", LONG).await, Ok(Done(largest)));
    let longest = "k".repeat(MAX_KEY_BYTES);
    assert_eq!(store.acquire(a, &longest, LONG).await, Ok(Acquired));
    assert_eq!(store.purge_tenant(a).await.unwrap(), 2);
}

/// 20 concurrent acquires of one key, spread over `hosts` (several stores
/// on one backend = several host processes): exactly one `Acquired`, the
/// rest `Pending`; after the commit everybody gets the result.
pub async fn concurrent_acquires(hosts: &[&dyn IdempotencyStore]) {
    assert!(!hosts.is_empty());
    let t = tenant("conformance-idem-concurrent");
    hosts[0].purge_tenant(&t).await.unwrap();
    let host = |i: usize| hosts[i % hosts.len()];
    let answers: Vec<IdemAcquire> = join_all((0..20).map(|i| host(i).acquire(&t, "order-1", LONG)))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let acquired = answers.iter().filter(|a| **a == Acquired).count();
    let pending = answers.iter().filter(|a| **a == Pending).count();
    assert_eq!((acquired, pending), (1, 19), "{answers:?}");
    let result = r#"{"order":1,"status":"paid"}"#;
    hosts[hosts.len() - 1]
        .commit(&t, "order-1", result, LONG)
        .await
        .unwrap();
    let answers = join_all((0..20).map(|i| host(i).acquire(&t, "order-1", LONG))).await;
    for answer in answers {
        assert_eq!(answer, Ok(Done(result.to_owned())));
    }
    assert_eq!(hosts[0].purge_tenant(&t).await.unwrap(), 1);
}

/// Abort frees a pending key for a retry, and nothing else.
async fn abort(store: &dyn IdempotencyStore, a: &TenantId) {
    assert_eq!(store.abort(a, "ab").await, Ok(false), "absent");
    assert_eq!(store.acquire(a, "ab", LONG).await, Ok(Acquired));
    assert_eq!(store.acquire(a, "ab", LONG).await, Ok(Pending));
    assert_eq!(store.abort(a, "ab").await, Ok(true));
    assert_eq!(store.abort(a, "ab").await, Ok(false), "twice");
    assert_eq!(store.acquire(a, "ab", LONG).await, Ok(Acquired), "retry");
    store.commit(a, "ab", "1", LONG).await.unwrap();
    assert_eq!(store.abort(a, "ab").await, Ok(false), "a result stays");
    assert_eq!(store.acquire(a, "ab", LONG).await, Ok(Done("1".into())));
    assert_eq!(store.purge_tenant(a).await.unwrap(), 1);
}

/// Commit stores the result, replacing whatever is there.
async fn commit(store: &dyn IdempotencyStore, a: &TenantId) {
    assert_eq!(store.acquire(a, "c", LONG).await, Ok(Acquired));
    store.commit(a, "c", r#"{"n":1}"#, LONG).await.unwrap();
    assert_eq!(
        store.acquire(a, "c", LONG).await,
        Ok(Done(r#"{"n":1}"#.into()))
    );
    store.commit(a, "c", r#"{"n":2}"#, LONG).await.unwrap();
    assert_eq!(
        store.acquire(a, "c", LONG).await,
        Ok(Done(r#"{"n":2}"#.into())),
        "replaced"
    );
    // Without an acquire (e.g. after the pending record expired).
    store.commit(a, "c2", "null", LONG).await.unwrap();
    assert_eq!(store.acquire(a, "c2", LONG).await, Ok(Done("null".into())));
    // Results are kept as given: empty, unicode, a lone 'P'.
    for (k, v) in [("e", ""), ("u", "\"größe ✓\""), ("p", "P")] {
        store.commit(a, k, v, LONG).await.unwrap();
        assert_eq!(store.acquire(a, k, LONG).await, Ok(Done(v.into())), "{v:?}");
        assert_eq!(store.abort(a, k).await, Ok(false), "{v:?} is a result");
    }
    assert_eq!(store.purge_tenant(a).await.unwrap(), 5);
}

/// Pending records expire after `pending_ttl`, results after `ttl`.
async fn expiry(store: &dyn IdempotencyStore, a: &TenantId) {
    let short = Duration::from_millis(150);
    assert_eq!(store.acquire(a, "pend", short).await, Ok(Acquired));
    store.commit(a, "res", "1", short).await.unwrap();
    assert_eq!(store.acquire(a, "pend", LONG).await, Ok(Pending));
    assert_eq!(store.acquire(a, "res", LONG).await, Ok(Done("1".into())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.acquire(a, "pend", LONG).await,
        Ok(Acquired),
        "the worker died: retry"
    );
    assert_eq!(
        store.acquire(a, "res", LONG).await,
        Ok(Acquired),
        "the result expired"
    );
    assert_eq!(store.purge_tenant(a).await.unwrap(), 2);
}

/// Equal keys of two tenants are two records.
async fn isolation(store: &dyn IdempotencyStore, a: &TenantId, b: &TenantId) {
    assert_eq!(store.acquire(a, "shared", LONG).await, Ok(Acquired));
    assert_eq!(store.acquire(b, "shared", LONG).await, Ok(Acquired));
    store.commit(a, "shared", "\"a\"", LONG).await.unwrap();
    assert_eq!(
        store.acquire(b, "shared", LONG).await,
        Ok(Pending),
        "a's commit leaves b"
    );
    assert_eq!(store.abort(b, "shared").await, Ok(true));
    assert_eq!(
        store.acquire(a, "shared", LONG).await,
        Ok(Done("\"a\"".into())),
        "b's abort leaves a"
    );
    assert_eq!(store.acquire(b, "shared", LONG).await, Ok(Acquired));
    store.commit(b, "shared", "\"b\"", LONG).await.unwrap();
    assert_eq!(
        store.acquire(a, "shared", LONG).await,
        Ok(Done("\"a\"".into()))
    );
    assert_eq!(
        store.acquire(b, "shared", LONG).await,
        Ok(Done("\"b\"".into()))
    );
    assert_eq!(store.purge_tenant(a).await.unwrap(), 1);
    assert_eq!(store.purge_tenant(b).await.unwrap(), 1);
}

/// Purging a tenant removes its records and nothing of others.
async fn purge(store: &dyn IdempotencyStore, a: &TenantId, b: &TenantId) {
    store.acquire(a, "p1", LONG).await.unwrap();
    store.commit(a, "p2", "2", LONG).await.unwrap();
    store.commit(b, "p1", "b", LONG).await.unwrap();
    assert_eq!(store.purge_tenant(a).await.unwrap(), 2);
    assert_eq!(store.acquire(a, "p1", LONG).await, Ok(Acquired));
    assert_eq!(store.acquire(a, "p2", LONG).await, Ok(Acquired));
    assert_eq!(store.acquire(b, "p1", LONG).await, Ok(Done("b".into())));
    assert_eq!(store.purge_tenant(a).await.unwrap(), 2);
    assert_eq!(store.purge_tenant(a).await.unwrap(), 0);
    assert_eq!(store.purge_tenant(b).await.unwrap(), 1);
}
