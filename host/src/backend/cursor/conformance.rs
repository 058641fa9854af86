//! The behavioural suite every [`CursorStore`] must pass: the memory store
//! runs it in its unit tests, the Redis store against a real Redis (also
//! with two stores on one Redis as two hosts). Each function panics on the
//! first behaviour that differs, so call it from a test.
//!
//! The suite uses tenants named `cursor-conf-*` and purges them when done;
//! run it against an otherwise unused store. It takes about 2 s (TTL waits
//! of a few hundred ms).

use std::time::Duration;

use futures_util::future::join_all;

use super::{CursorEntry, CursorLimits, CursorStore, MAX_DATA_BYTES, MAX_NAME_BYTES, MAX_TTL};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// A TTL nothing in the suite outlives.
const LONG: Duration = Duration::from_secs(60);
/// A TTL the suite waits out.
const SHORT: Duration = Duration::from_millis(500);
/// Longer than [`SHORT`] with a margin: an entry written with `SHORT` and
/// not rewritten is dead after this.
const PAST_SHORT: Duration = Duration::from_millis(850);
/// The rewrite interval of the suite (a fifth of [`SHORT`]).
const BEAT: Duration = Duration::from_millis(100);

/// The limits [`limits_suite`] expects its store to have.
pub const SUITE_LIMITS: CursorLimits = CursorLimits {
    max_entries_per_topic: 3,
    max_topics_per_tenant: 2,
};

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

async fn update(
    s: &dyn CursorStore,
    t: &TenantId,
    topic: &str,
    key: &str,
    data: &str,
    ttl: Duration,
) {
    if let Err(e) = s.update(t, topic, key, data, ttl).await {
        panic!("update {topic}/{key}: {e}");
    }
}

async fn remove(s: &dyn CursorStore, t: &TenantId, topic: &str, key: &str) -> bool {
    match s.remove(t, topic, key).await {
        Ok(b) => b,
        Err(e) => panic!("remove {topic}/{key}: {e}"),
    }
}

async fn snapshot(s: &dyn CursorStore, t: &TenantId, topic: &str) -> Vec<CursorEntry> {
    match s.snapshot(t, topic).await {
        Ok(v) => v,
        Err(e) => panic!("snapshot {topic}: {e}"),
    }
}

async fn keys(s: &dyn CursorStore, t: &TenantId, topic: &str) -> Vec<String> {
    snapshot(s, t, topic)
        .await
        .into_iter()
        .map(|e| e.key)
        .collect()
}

fn entry(key: &str, data: &str) -> CursorEntry {
    CursorEntry {
        key: key.into(),
        data: data.into(),
    }
}

fn is_quota(r: &Result<(), BackendError>) -> bool {
    matches!(r, Err(BackendError::QuotaExceeded(_)))
}

/// The whole [`CursorStore`] contract on one store (the two-host part runs
/// with the store as both hosts).
pub async fn suite(store: &dyn CursorStore) {
    validation(store).await;
    latest_wins(store).await;
    separators_and_isolation(store).await;
    ttls(store).await;
    two_hosts(store, store).await;
}

/// Arguments are checked before anything is stored.
async fn validation(s: &dyn CursorStore) {
    let t = tenant("cursor-conf-valid");
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    let big = "x".repeat(MAX_DATA_BYTES + 1);
    let invalid = |r: Result<(), BackendError>, what: &str| {
        assert!(matches!(r, Err(BackendError::Invalid(_))), "{what}: {r:?}");
    };
    let too_large = |r: Result<(), BackendError>, what: &str| {
        assert!(matches!(r, Err(BackendError::TooLarge(_))), "{what}: {r:?}");
    };
    invalid(s.update(&t, "", "k", "{}", LONG).await, "empty topic");
    invalid(s.update(&t, "a\nb", "k", "{}", LONG).await, "newline topic");
    too_large(s.update(&t, &long, "k", "{}", LONG).await, "long topic");
    invalid(s.update(&t, "c", "", "{}", LONG).await, "empty key");
    invalid(s.update(&t, "c", "k\n", "{}", LONG).await, "newline key");
    too_large(s.update(&t, "c", &long, "{}", LONG).await, "long key");
    too_large(s.update(&t, "c", "k", &big, LONG).await, "big data");
    invalid(
        s.update(&t, "c", "k", "{}", Duration::ZERO).await,
        "zero ttl",
    );
    invalid(
        s.update(&t, "c", "k", "{}", MAX_TTL + Duration::from_secs(1))
            .await,
        "huge ttl",
    );
    assert!(matches!(
        s.remove(&t, "c", "").await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        s.snapshot(&t, "").await,
        Err(BackendError::Invalid(_))
    ));
    assert_eq!(snapshot(s, &t, "c").await, [], "refusals store nothing");
    assert_eq!(s.purge_tenant(&t).await, Ok(0));

    // The largest names and data are fine; names are arbitrary otherwise.
    let topic = format!("canvas:é:{{x}}{}", "t".repeat(MAX_NAME_BYTES - 13));
    assert_eq!(topic.len(), MAX_NAME_BYTES);
    let key = "k".repeat(MAX_NAME_BYTES);
    let data = "d".repeat(MAX_DATA_BYTES);
    update(s, &t, &topic, &key, &data, MAX_TTL).await;
    assert_eq!(snapshot(s, &t, &topic).await, vec![entry(&key, &data)]);
    assert_eq!(s.purge_tenant(&t).await, Ok(1));
    assert_eq!(snapshot(s, &t, &topic).await, []);
}

/// Latest position wins; snapshots are sorted; remove.
async fn latest_wins(s: &dyn CursorStore) {
    let t = tenant("cursor-conf-latest");
    update(s, &t, "canvas", "bob", r#"{"x":1}"#, LONG).await;
    update(s, &t, "canvas", "alice", r#"{"x":2}"#, LONG).await;
    update(s, &t, "canvas", "bob", r#"{"x":3}"#, LONG).await;
    assert_eq!(
        snapshot(s, &t, "canvas").await,
        vec![entry("alice", r#"{"x":2}"#), entry("bob", r#"{"x":3}"#)],
        "one entry per key, the latest data, sorted"
    );
    assert_eq!(snapshot(s, &t, "other").await, [], "topics are separate");
    assert!(remove(s, &t, "canvas", "bob").await);
    assert!(!remove(s, &t, "canvas", "bob").await, "removed once");
    assert!(!remove(s, &t, "nowhere", "bob").await);
    assert_eq!(keys(s, &t, "canvas").await, ["alice"]);
    assert!(remove(s, &t, "canvas", "alice").await);
    assert_eq!(snapshot(s, &t, "canvas").await, []);
    assert_eq!(s.purge_tenant(&t).await, Ok(0), "nothing left");

    // 50 parallel writers on distinct keys lose nothing; 20 on one key
    // leave one of their values.
    let ks: Vec<String> = (0..50).map(|i| format!("k{i:02}")).collect();
    join_all(ks.iter().map(|k| update(s, &t, "busy", k, "1", LONG))).await;
    assert_eq!(keys(s, &t, "busy").await, ks);
    let values: Vec<String> = (0..20).map(|i| format!("{{\"x\":{i}}}")).collect();
    join_all(values.iter().map(|v| update(s, &t, "one", "k", v, LONG))).await;
    let got = snapshot(s, &t, "one").await;
    assert_eq!(got.len(), 1);
    assert!(values.contains(&got[0].data), "{got:?}");
    assert_eq!(s.purge_tenant(&t).await, Ok(51));
}

/// Names with separators cannot be confused; tenants are isolated.
async fn separators_and_isolation(s: &dyn CursorStore) {
    let a = tenant("cursor-conf-iso-a");
    let b = tenant("cursor-conf-iso-b");
    update(s, &a, "x:y", "z", "1", LONG).await;
    update(s, &a, "x", "y:z", "2", LONG).await;
    assert_eq!(snapshot(s, &a, "x:y").await, vec![entry("z", "1")]);
    assert_eq!(snapshot(s, &a, "x").await, vec![entry("y:z", "2")]);
    assert!(!remove(s, &a, "x", "y").await);
    update(s, &b, "x", "y:z", "b", LONG).await;
    assert_eq!(snapshot(s, &a, "x").await, vec![entry("y:z", "2")]);
    assert_eq!(snapshot(s, &b, "x").await, vec![entry("y:z", "b")]);
    assert_eq!(s.purge_tenant(&a).await, Ok(2));
    assert_eq!(
        snapshot(s, &b, "x").await,
        vec![entry("y:z", "b")],
        "purging a leaves b alone"
    );
    assert!(remove(s, &b, "x", "y:z").await);
    assert_eq!(s.purge_tenant(&b).await, Ok(0));
}

/// Per-entry TTLs: a dead entry leaves the snapshot on its own while
/// others of the topic stay; every write refreshes; the latest TTL wins.
async fn ttls(s: &dyn CursorStore) {
    let t = tenant("cursor-conf-ttl");
    update(s, &t, "canvas", "crashed", "1", SHORT).await;
    update(s, &t, "canvas", "alive", "2", SHORT).await;
    update(s, &t, "canvas", "long", "3", LONG).await;
    update(s, &t, "canvas", "shortened", "4", LONG).await;
    update(s, &t, "canvas", "shortened", "5", SHORT).await;
    update(s, &t, "gone", "k", "6", SHORT).await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < PAST_SHORT {
        update(s, &t, "canvas", "alive", "2", SHORT).await;
        tokio::time::sleep(BEAT).await;
    }
    update(s, &t, "canvas", "alive", "2b", SHORT).await;
    assert_eq!(
        snapshot(s, &t, "canvas").await,
        vec![entry("alive", "2b"), entry("long", "3")],
        "stale entries are filtered individually"
    );
    assert_eq!(snapshot(s, &t, "gone").await, [], "a topic of dead entries");
    assert!(!remove(s, &t, "canvas", "crashed").await, "dead: not live");
    assert!(!remove(s, &t, "gone", "k").await);
    update(s, &t, "canvas", "crashed", "7", LONG).await;
    assert_eq!(keys(s, &t, "canvas").await, ["alive", "crashed", "long"]);
    assert_eq!(s.purge_tenant(&t).await, Ok(3), "live entries removed");
    assert_eq!(snapshot(s, &t, "canvas").await, []);
}

/// Two hosts (two store instances on one backend; the memory store passes
/// itself twice): each sees the other's writes and can remove them.
pub async fn two_hosts(a: &dyn CursorStore, b: &dyn CursorStore) {
    let t = tenant("cursor-conf-hosts");
    update(a, &t, "canvas", "from-a", "1", LONG).await;
    update(b, &t, "canvas", "from-b", "2", LONG).await;
    assert_eq!(
        snapshot(a, &t, "canvas").await,
        vec![entry("from-a", "1"), entry("from-b", "2")]
    );
    assert_eq!(
        snapshot(b, &t, "canvas").await,
        snapshot(a, &t, "canvas").await
    );
    update(b, &t, "canvas", "from-a", "3", LONG).await;
    assert_eq!(snapshot(a, &t, "canvas").await[0], entry("from-a", "3"));
    assert!(b.remove(&t, "canvas", "from-a").await.unwrap());
    assert!(!a.remove(&t, "canvas", "from-a").await.unwrap());
    // Writers on both hosts at once lose nothing.
    let ks: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
    join_all(ks.iter().enumerate().map(|(i, k)| {
        let s = if i % 2 == 0 { a } else { b };
        update(s, &t, "shared", k, "{}", LONG)
    }))
    .await;
    assert_eq!(keys(b, &t, "shared").await, ks);
    assert_eq!(a.purge_tenant(&t).await, Ok(41));
    assert_eq!(snapshot(b, &t, "canvas").await, []);
}

/// [`CursorLimits`]: run on a store built with [`SUITE_LIMITS`]. A refused
/// update changes nothing; removing and expiring free room.
pub async fn limits_suite(s: &dyn CursorStore) {
    let t = tenant("cursor-conf-limits");
    update(s, &t, "t1", "a", "1", SHORT).await;
    update(s, &t, "t1", "b", "1", SHORT).await;
    update(s, &t, "t1", "c", "1", LONG).await;
    assert!(is_quota(&s.update(&t, "t1", "d", "1", LONG).await));
    update(s, &t, "t1", "a", "2", SHORT).await;
    assert_eq!(
        keys(s, &t, "t1").await,
        ["a", "b", "c"],
        "a live key may write"
    );
    update(s, &t, "t2", "a", "1", LONG).await;
    assert!(is_quota(&s.update(&t, "t3", "a", "1", LONG).await));
    assert_eq!(snapshot(s, &t, "t3").await, [], "refusals store nothing");
    assert!(remove(s, &t, "t2", "a").await);
    update(s, &t, "t3", "a", "1", SHORT).await;
    assert!(is_quota(&s.update(&t, "t2", "a", "1", LONG).await));

    // Dead entries and topics take no room.
    tokio::time::sleep(PAST_SHORT).await;
    update(s, &t, "t1", "d", "1", LONG).await;
    update(s, &t, "t1", "e", "1", LONG).await;
    assert_eq!(keys(s, &t, "t1").await, ["c", "d", "e"]);
    update(s, &t, "t2", "a", "1", LONG).await;
    assert_eq!(s.purge_tenant(&t).await, Ok(4));
}
