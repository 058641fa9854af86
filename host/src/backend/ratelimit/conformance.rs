//! The behaviour every [`RateLimiter`] must show: the memory twin runs it in
//! its unit tests, the Redis limiter against a real Redis. Each check panics
//! (like `assert!`) on the first difference, so call it from a test.
//!
//! Uses tenants named `conformance-rl-*` and purges them at the end; run it
//! against an otherwise unused store. Takes about 3 s (refill and ban
//! waits).

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::{MAX_KEY_BYTES, NEVER, RateDecision, RateLimitRule, RateLimiter};
use crate::backend::BackendError;
use crate::tenant::TenantId;

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn rule(points: u32, interval: Duration, block: Duration) -> RateLimitRule {
    RateLimitRule {
        points,
        interval,
        block,
    }
}

const MINUTE: Duration = Duration::from_secs(60);

async fn ok(rl: &dyn RateLimiter, t: &TenantId, key: &str, r: RateLimitRule) -> RateDecision {
    match rl.consume(t, key, r, 1).await {
        Ok(d) => d,
        Err(e) => panic!("consume {key}: {e}"),
    }
}

/// The whole contract (see the module docs).
pub async fn suite(rl: &dyn RateLimiter) {
    let a = tenant("conformance-rl-a");
    let b = tenant("conformance-rl-b");
    for t in [&a, &b] {
        rl.purge_tenant(t).await.unwrap();
    }
    arguments(rl, &a).await;
    parallel_consumes(&[rl, rl]).await;
    consumes_and_refusals(rl, &a).await;
    refill(rl, &a).await;
    blocks(rl, &a).await;
    bans(rl, &a).await;
    reset(rl, &a).await;
    isolation(rl, &a, &b).await;
    purge(rl, &a, &b).await;
}

/// Bad arguments are refused before anything is stored.
async fn arguments(rl: &dyn RateLimiter, a: &TenantId) {
    let r = rule(5, MINUTE, Duration::ZERO);
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    assert!(matches!(
        rl.consume(a, "", r, 1).await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        rl.consume(a, &long, r, 1).await,
        Err(BackendError::TooLarge(_))
    ));
    for t in [rl.reset(a, &long).await, rl.unban(a, &long).await] {
        assert!(matches!(t, Err(BackendError::TooLarge(_))), "{t:?}");
    }
    assert!(matches!(
        rl.ban(a, &long, MINUTE).await,
        Err(BackendError::TooLarge(_))
    ));
    assert!(matches!(
        rl.ban(a, "k", Duration::ZERO).await,
        Err(BackendError::Invalid(_))
    ));
    for (r, cost) in [
        (rule(5, MINUTE, Duration::ZERO), 0),
        (rule(0, MINUTE, Duration::ZERO), 1),
        (rule(5, Duration::ZERO, Duration::ZERO), 1),
    ] {
        assert!(
            matches!(
                rl.consume(a, "k", r, cost).await,
                Err(BackendError::Invalid(_))
            ),
            "{r:?} cost {cost}"
        );
    }
    // The longest key works.
    let longest = "k".repeat(MAX_KEY_BYTES);
    assert!(ok(rl, a, &longest, r).await.allowed);
    rl.reset(a, &longest).await.unwrap();
}

/// 20 parallel consumes of cost 1 against 5 points allow exactly 5, spread
/// over `hosts` (several stores on one backend = several host processes).
pub async fn parallel_consumes(hosts: &[&dyn RateLimiter]) {
    assert!(!hosts.is_empty());
    let t = tenant("conformance-rl-parallel");
    hosts[0].purge_tenant(&t).await.unwrap();
    let r = rule(5, MINUTE, Duration::ZERO);
    let calls = (0..20).map(|i| hosts[i % hosts.len()].consume(&t, "burst", r, 1));
    let decisions: Vec<RateDecision> = join_all(calls)
        .await
        .into_iter()
        .map(|d| d.unwrap())
        .collect();
    let allowed = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(allowed, 5, "{decisions:?}");
    let mut remaining: Vec<u32> = decisions
        .iter()
        .filter(|d| d.allowed)
        .map(|d| d.remaining)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, [0, 1, 2, 3, 4], "each token taken once");
    for d in decisions.iter().filter(|d| !d.allowed) {
        assert_eq!(d.remaining, 0);
        // One token of 5 per minute: 12 s.
        assert!(
            d.retry_after_ms > 10_000 && d.retry_after_ms <= 12_000,
            "{d:?}"
        );
    }
    assert_eq!(hosts[0].purge_tenant(&t).await.unwrap(), 1);
}

/// Decrement, exhaustion, costs above what is left and above the points.
async fn consumes_and_refusals(rl: &dyn RateLimiter, a: &TenantId) {
    let r = rule(3, MINUTE, Duration::ZERO);
    // One token of 3 per minute: 20 s.
    let d = ok(rl, a, "dec", r).await;
    assert!(d.allowed);
    assert_eq!((d.remaining, d.retry_after_ms), (2, 0));
    assert!(d.reset_ms > 19_000 && d.reset_ms <= 20_000, "{d:?}");
    ok(rl, a, "dec", r).await;
    let d = ok(rl, a, "dec", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 0));
    assert!(d.reset_ms > 59_000 && d.reset_ms <= 60_000, "{d:?}");
    let d = ok(rl, a, "dec", r).await;
    assert!(!d.allowed, "exhausted");
    assert_eq!(d.remaining, 0);
    assert!(
        d.retry_after_ms > 19_000 && d.retry_after_ms <= 20_000,
        "{d:?}"
    );
    assert!(d.reset_ms > 59_000 && d.reset_ms <= 60_000, "{d:?}");

    // A cost above what is left is refused and takes nothing.
    let r = rule(5, MINUTE, Duration::ZERO);
    let d = rl.consume(a, "cost", r, 3).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 2));
    let d = rl.consume(a, "cost", r, 3).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (false, 2), "cost > remaining");
    // One token missing at 5 per minute: 12 s.
    assert!(
        d.retry_after_ms > 11_000 && d.retry_after_ms <= 12_000,
        "{d:?}"
    );
    let d = rl.consume(a, "cost", r, 2).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 0), "nothing was taken");

    // A cost above the points can never be allowed; it takes and bans
    // nothing, even with a block.
    let r = rule(5, MINUTE, Duration::from_secs(30));
    let d = rl.consume(a, "huge", r, 6).await.unwrap();
    assert!(!d.allowed, "cost > points");
    assert_eq!((d.remaining, d.retry_after_ms), (5, NEVER));
    let d = rl.consume(a, "huge", r, 5).await.unwrap();
    assert_eq!((d.allowed, d.remaining), (true, 0), "not banned");
    for k in ["dec", "cost", "huge"] {
        rl.reset(a, k).await.unwrap();
    }
}

/// An empty bucket is full again one interval later, and partly in between.
async fn refill(rl: &dyn RateLimiter, a: &TenantId) {
    // Two tokens per second: one token per 500 ms.
    let interval = Duration::from_millis(1000);
    let r = rule(2, interval, Duration::ZERO);
    assert!(ok(rl, a, "refill", r).await.allowed);
    let d = ok(rl, a, "refill", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 0));
    assert!(d.reset_ms > 800 && d.reset_ms <= 1000, "{d:?}");
    let d = ok(rl, a, "refill", r).await;
    assert!(!d.allowed);
    assert!(
        d.retry_after_ms > 300 && d.retry_after_ms <= 500,
        "one token of 2 per second: {d:?}"
    );
    tokio::time::sleep(interval + Duration::from_millis(100)).await;
    let d = ok(rl, a, "refill", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 1), "full again: {d:?}");
    let d = ok(rl, a, "refill", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 0));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let d = ok(rl, a, "refill", r).await;
    assert_eq!(
        (d.allowed, d.remaining),
        (true, 0),
        "one token back after 600 ms: {d:?}"
    );
    rl.reset(a, "refill").await.unwrap();
}

/// A refused consume with a block bans the key until the block ends.
async fn blocks(rl: &dyn RateLimiter, a: &TenantId) {
    let block = Duration::from_millis(500);
    let r = rule(1, Duration::from_millis(100), block);
    assert!(ok(rl, a, "block", r).await.allowed);
    let d = ok(rl, a, "block", r).await;
    assert!(!d.allowed);
    assert_eq!((d.remaining, d.retry_after_ms, d.reset_ms), (0, 500, 500));
    let banned_at = Instant::now();
    // The bucket refills during the ban, but the ban holds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = ok(rl, a, "block", r).await;
    let left = block.saturating_sub(banned_at.elapsed()).as_millis() as u64;
    assert!(!d.allowed, "banned");
    assert_eq!(d.remaining, 0);
    assert!(
        d.retry_after_ms > 0 && d.retry_after_ms <= 350 && d.retry_after_ms + 100 >= left,
        "{d:?}, {left} ms left"
    );
    assert_eq!(d.reset_ms, d.retry_after_ms);
    tokio::time::sleep(block.saturating_sub(banned_at.elapsed()) + Duration::from_millis(100))
        .await;
    let d = ok(rl, a, "block", r).await;
    assert!(d.allowed, "the ban ended: {d:?}");
    // Without a block nothing is banned.
    let r = rule(1, MINUTE, Duration::ZERO);
    ok(rl, a, "noblock", r).await;
    let d = ok(rl, a, "noblock", r).await;
    assert!(!d.allowed && d.retry_after_ms > 59_000, "{d:?}");
    for k in ["block", "noblock"] {
        rl.reset(a, k).await.unwrap();
    }
}

/// Manual bans and unbans keep the bucket.
async fn bans(rl: &dyn RateLimiter, a: &TenantId) {
    let r = rule(3, MINUTE, Duration::ZERO);
    // A ban on a key never used.
    rl.ban(a, "ban", MINUTE).await.unwrap();
    let d = ok(rl, a, "ban", r).await;
    assert!(!d.allowed, "banned");
    assert_eq!(d.remaining, 0);
    assert!(
        d.retry_after_ms > 59_000 && d.retry_after_ms <= 60_000,
        "{d:?}"
    );
    rl.unban(a, "ban").await.unwrap();
    let d = ok(rl, a, "ban", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 2), "unbanned, bucket full");
    // A ban keeps the bucket: one token used before, still used after.
    rl.ban(a, "ban", MINUTE).await.unwrap();
    assert!(!ok(rl, a, "ban", r).await.allowed);
    rl.unban(a, "ban").await.unwrap();
    let d = ok(rl, a, "ban", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 1), "bucket kept: {d:?}");
    // A ban replaces the previous one, also with a shorter one.
    rl.ban(a, "ban", Duration::from_millis(150)).await.unwrap();
    let d = ok(rl, a, "ban", r).await;
    assert!(!d.allowed && d.retry_after_ms <= 150, "{d:?}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let d = ok(rl, a, "ban", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 0), "ban expired: {d:?}");
    // Unbanning a key that is not banned changes nothing.
    rl.unban(a, "ban").await.unwrap();
    rl.unban(a, "never-seen").await.unwrap();
    assert!(!ok(rl, a, "ban", r).await.allowed, "bucket still empty");
    let d = ok(rl, a, "never-seen", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 2));
    for k in ["ban", "never-seen"] {
        rl.reset(a, k).await.unwrap();
    }
}

/// Reset makes the bucket full and ends a ban.
async fn reset(rl: &dyn RateLimiter, a: &TenantId) {
    let r = rule(2, MINUTE, Duration::from_secs(30));
    ok(rl, a, "reset", r).await;
    ok(rl, a, "reset", r).await;
    assert!(!ok(rl, a, "reset", r).await.allowed, "exhausted and banned");
    rl.reset(a, "reset").await.unwrap();
    let d = ok(rl, a, "reset", r).await;
    assert_eq!(
        (d.allowed, d.remaining),
        (true, 1),
        "full again, not banned"
    );
    rl.reset(a, "reset").await.unwrap();
    rl.reset(a, "reset").await.unwrap();
}

/// Equal keys of two tenants are two buckets.
async fn isolation(rl: &dyn RateLimiter, a: &TenantId, b: &TenantId) {
    let r = rule(2, MINUTE, Duration::ZERO);
    ok(rl, a, "shared", r).await;
    ok(rl, a, "shared", r).await;
    assert!(!ok(rl, a, "shared", r).await.allowed);
    let d = ok(rl, b, "shared", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 1), "b has its own bucket");
    rl.ban(b, "shared", MINUTE).await.unwrap();
    rl.reset(a, "shared").await.unwrap();
    assert!(!ok(rl, b, "shared", r).await.allowed, "a's reset leaves b");
    rl.unban(a, "shared").await.unwrap();
    assert!(!ok(rl, b, "shared", r).await.allowed, "a's unban leaves b");
    let d = ok(rl, a, "shared", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 1), "b's ban leaves a");
    for t in [a, b] {
        rl.reset(t, "shared").await.unwrap();
    }
}

/// Purging a tenant removes its buckets and bans and nothing of others.
async fn purge(rl: &dyn RateLimiter, a: &TenantId, b: &TenantId) {
    let r = rule(2, MINUTE, Duration::ZERO);
    ok(rl, a, "p1", r).await;
    ok(rl, a, "p2", r).await;
    rl.ban(a, "p3", MINUTE).await.unwrap();
    ok(rl, b, "p1", r).await;
    assert_eq!(rl.purge_tenant(a).await.unwrap(), 3);
    let d = ok(rl, a, "p1", r).await;
    assert_eq!(d.remaining, 1, "a's bucket is new");
    assert!(ok(rl, a, "p3", r).await.allowed, "a's ban is gone");
    let d = ok(rl, b, "p1", r).await;
    assert_eq!((d.allowed, d.remaining), (true, 0), "b's bucket is kept");
    assert_eq!(rl.purge_tenant(a).await.unwrap(), 2);
    assert_eq!(rl.purge_tenant(a).await.unwrap(), 0);
    assert_eq!(rl.purge_tenant(b).await.unwrap(), 1);
}
