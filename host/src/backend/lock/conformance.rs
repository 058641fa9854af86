//! The behaviour every [`DistributedLock`] must show: the memory twin runs
//! it in its unit tests, the Redis lock against a real Redis. Each check
//! panics (like `assert!`) on the first difference, so call it from a test.
//!
//! Uses tenants named `conformance-lock-*` and purges them at the end; run
//! it against an otherwise unused store. Takes about 2 s (expiry and wait
//! checks, 20 acquirers taking turns).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::{DistributedLock, LockLease, MAX_KEY_BYTES, MAX_TTL, MAX_WAIT};
use crate::backend::BackendError;
use crate::tenant::TenantId;

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

const TTL: Duration = Duration::from_secs(30);
const NO_WAIT: Duration = Duration::ZERO;

/// Take `key` at once, or panic.
async fn take(lock: &dyn DistributedLock, t: &TenantId, key: &str, ttl: Duration) -> LockLease {
    match lock.acquire(t, key, ttl, NO_WAIT).await {
        Ok(Some(lease)) => lease,
        other => panic!("acquire {key}: {other:?}"),
    }
}

/// Whether `key` is taken (a try without waiting fails).
async fn taken(lock: &dyn DistributedLock, t: &TenantId, key: &str) -> bool {
    match lock.acquire(t, key, TTL, NO_WAIT).await {
        Ok(None) => true,
        Ok(Some(lease)) => {
            assert_eq!(lock.release(t, key, lease.token).await, Ok(true));
            false
        }
        Err(e) => panic!("acquire {key}: {e}"),
    }
}

/// The whole contract (see the module docs).
pub async fn suite(lock: &dyn DistributedLock) {
    let a = tenant("conformance-lock-a");
    let b = tenant("conformance-lock-b");
    for t in [&a, &b] {
        lock.purge_tenant(t).await.unwrap();
    }
    arguments(lock, &a).await;
    mutual_exclusion(&[lock, lock]).await;
    acquire_and_release(lock, &a).await;
    expiry(lock, &a).await;
    refresh(lock, &a).await;
    waiting(lock, &a).await;
    isolation(lock, &a, &b).await;
    purge(lock, &a, &b).await;
}

/// Bad arguments are refused.
async fn arguments(lock: &dyn DistributedLock, a: &TenantId) {
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        lock.acquire(a, "", TTL, NO_WAIT).await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        lock.acquire(a, &long, TTL, NO_WAIT).await,
        Err(BackendError::TooLarge(_))
    ));
    assert!(matches!(
        lock.refresh(a, &long, 1, TTL).await,
        Err(BackendError::TooLarge(_))
    ));
    assert!(matches!(
        lock.release(a, "", 1).await,
        Err(BackendError::Invalid(_))
    ));
    for (ttl, wait) in [
        (Duration::ZERO, NO_WAIT),
        (MAX_TTL + Duration::from_secs(1), NO_WAIT),
        (TTL, MAX_WAIT + Duration::from_secs(1)),
    ] {
        assert!(
            matches!(
                lock.acquire(a, "k", ttl, wait).await,
                Err(BackendError::Invalid(_))
            ),
            "ttl {ttl:?} wait {wait:?}"
        );
    }
    assert!(matches!(
        lock.refresh(a, "k", 1, Duration::ZERO).await,
        Err(BackendError::Invalid(_))
    ));
    assert!(!taken(lock, a, "k").await, "nothing was taken");
    let longest = "k".repeat(MAX_KEY_BYTES);
    let lease = take(lock, a, &longest, TTL).await;
    assert_eq!(lock.release(a, &longest, lease.token).await, Ok(true));
}

/// 20 acquirers of one key, spread over `hosts` (several stores on one
/// backend = several host processes), all get the lock in turn, never two
/// at once, and their tokens increase in the order they got it.
pub async fn mutual_exclusion(hosts: &[&dyn DistributedLock]) {
    assert!(!hosts.is_empty());
    let t = tenant("conformance-lock-mutex");
    hosts[0].purge_tenant(&t).await.unwrap();
    // Holders in the order they took the lock, and who holds it now.
    let order: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let holder: Mutex<Option<u64>> = Mutex::new(None);
    let acquirers = (0..20).map(|i| {
        let lock = hosts[i % hosts.len()];
        let (t, order, holder) = (&t, &order, &holder);
        async move {
            let lease = match lock.acquire(t, "mutex", TTL, Duration::from_secs(20)).await {
                Ok(Some(lease)) => lease,
                other => panic!("acquirer {i}: {other:?}"),
            };
            {
                let mut h = holder.lock().unwrap();
                assert_eq!(*h, None, "two holders at once");
                *h = Some(lease.token);
                order.lock().unwrap().push(lease.token);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            {
                let mut h = holder.lock().unwrap();
                assert_eq!(*h, Some(lease.token));
                *h = None;
            }
            assert_eq!(lock.release(t, "mutex", lease.token).await, Ok(true));
        }
    });
    join_all(acquirers).await;
    let order = order.into_inner().unwrap();
    assert_eq!(order.len(), 20);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "tokens increase: {order:?}"
    );
    hosts[0].purge_tenant(&t).await.unwrap();
}

/// One holder; tokens increase; only the holder's token releases.
async fn acquire_and_release(lock: &dyn DistributedLock, a: &TenantId) {
    let l1 = take(lock, a, "k", TTL).await;
    assert_eq!(lock.acquire(a, "k", TTL, NO_WAIT).await, Ok(None), "held");
    assert_eq!(lock.release(a, "k", l1.token + 1).await, Ok(false));
    assert_eq!(
        lock.release(a, "k", l1.token.wrapping_sub(1)).await,
        Ok(false)
    );
    assert_eq!(lock.refresh(a, "k", l1.token + 1, TTL).await, Ok(false));
    assert!(taken(lock, a, "k").await, "a wrong token changes nothing");
    assert_eq!(lock.release(a, "k", l1.token).await, Ok(true));
    assert_eq!(lock.release(a, "k", l1.token).await, Ok(false), "twice");
    assert_eq!(lock.refresh(a, "k", l1.token, TTL).await, Ok(false));
    let l2 = take(lock, a, "k", TTL).await;
    assert!(l2.token > l1.token, "{l2:?} after {l1:?}");
    assert_eq!(lock.release(a, "k", l1.token).await, Ok(false), "stale");
    assert!(taken(lock, a, "k").await);
    assert_eq!(lock.release(a, "k", l2.token).await, Ok(true));
    // A lock never taken.
    assert_eq!(lock.release(a, "never", 1).await, Ok(false));
    assert_eq!(lock.refresh(a, "never", 1, TTL).await, Ok(false));
    // Another key of the same tenant is another lock.
    let l3 = take(lock, a, "k", TTL).await;
    let other = take(lock, a, "k-other", TTL).await;
    assert!(other.token > l3.token);
    assert_eq!(lock.release(a, "k-other", l3.token).await, Ok(false));
    assert_eq!(lock.release(a, "k", l3.token).await, Ok(true));
    assert_eq!(lock.release(a, "k-other", other.token).await, Ok(true));
}

/// An expired lease frees the lock; its stale token cannot refresh or
/// release the next holder's lock.
async fn expiry(lock: &dyn DistributedLock, a: &TenantId) {
    let old = take(lock, a, "exp", Duration::from_millis(150)).await;
    assert!(taken(lock, a, "exp").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lock.refresh(a, "exp", old.token, TTL).await,
        Ok(false),
        "expired"
    );
    let new = take(lock, a, "exp", TTL).await;
    assert!(new.token > old.token);
    assert_eq!(lock.refresh(a, "exp", old.token, TTL).await, Ok(false));
    assert_eq!(lock.release(a, "exp", old.token).await, Ok(false));
    assert!(taken(lock, a, "exp").await, "the new holder keeps it");
    assert_eq!(lock.release(a, "exp", new.token).await, Ok(true));
}

/// Refresh extends the lease from now, also to a shorter one.
async fn refresh(lock: &dyn DistributedLock, a: &TenantId) {
    let lease = take(lock, a, "ref", Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(
        lock.refresh(a, "ref", lease.token, Duration::from_millis(1000))
            .await,
        Ok(true)
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(taken(lock, a, "ref").await, "extended past the first ttl");
    assert_eq!(
        lock.refresh(a, "ref", lease.token, Duration::from_millis(100))
            .await,
        Ok(true)
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!taken(lock, a, "ref").await, "shortened");
}

/// A waiting acquire times out with `Ok(None)` after `wait`, or gets the
/// lock when it is freed in time.
async fn waiting(lock: &dyn DistributedLock, a: &TenantId) {
    let held = take(lock, a, "wait", TTL).await;
    let started = Instant::now();
    let wait = Duration::from_millis(200);
    assert_eq!(lock.acquire(a, "wait", TTL, wait).await, Ok(None));
    let took = started.elapsed();
    assert!(took >= wait, "gave up early: {took:?}");
    assert!(took < wait + Duration::from_secs(1), "{took:?}");
    // Freed after 150 ms: a waiter of up to 2 s gets it then.
    let started = Instant::now();
    let release = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(lock.release(a, "wait", held.token).await, Ok(true));
    };
    let waiter = lock.acquire(a, "wait", TTL, Duration::from_secs(2));
    let ((), got) = tokio::join!(release, waiter);
    let took = started.elapsed();
    let got = got.unwrap().expect("freed within the wait");
    assert!(got.token > held.token);
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(1),
        "{took:?}"
    );
    // Expiry also frees it for a waiter.
    let started = Instant::now();
    assert_eq!(
        lock.refresh(a, "wait", got.token, Duration::from_millis(100))
            .await,
        Ok(true)
    );
    let next = lock.acquire(a, "wait", TTL, Duration::from_secs(2)).await;
    assert!(
        matches!(next, Ok(Some(l)) if l.token > got.token),
        "{next:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        lock.release(a, "wait", next.unwrap().unwrap().token).await,
        Ok(true)
    );
}

/// Equal keys of two tenants are two locks.
async fn isolation(lock: &dyn DistributedLock, a: &TenantId, b: &TenantId) {
    let la = take(lock, a, "shared", TTL).await;
    let lb = take(lock, b, "shared", TTL).await;
    assert_eq!(lock.release(b, "shared", la.token).await, Ok(false));
    assert_eq!(lock.refresh(b, "shared", la.token, TTL).await, Ok(false));
    assert_eq!(lock.release(a, "shared", lb.token).await, Ok(false));
    assert_eq!(lock.release(b, "shared", lb.token).await, Ok(true));
    assert!(
        taken(lock, a, "shared").await,
        "b's release leaves a's lock"
    );
    assert_eq!(lock.release(a, "shared", la.token).await, Ok(true));
}

/// Purging a tenant frees its locks and nothing of others.
async fn purge(lock: &dyn DistributedLock, a: &TenantId, b: &TenantId) {
    take(lock, a, "p1", TTL).await;
    take(lock, a, "p2", TTL).await;
    let lb = take(lock, b, "p1", TTL).await;
    assert_eq!(lock.purge_tenant(a).await.unwrap(), 2);
    assert!(!taken(lock, a, "p1").await, "a's locks are gone");
    assert!(!taken(lock, a, "p2").await);
    assert!(taken(lock, b, "p1").await, "b's lock is kept");
    assert_eq!(lock.purge_tenant(a).await.unwrap(), 0);
    assert_eq!(lock.release(b, "p1", lb.token).await, Ok(true));
    assert_eq!(lock.purge_tenant(b).await.unwrap(), 0);
}
