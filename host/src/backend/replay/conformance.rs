//! The behaviour every replay buffer (with the bus that appends to it) must
//! show; run by the memory and the Redis implementation.

use futures_util::future::join_all;

use super::{ReplayBuffer, ReplayEvent, ReplaySettings};
use crate::backend::Bus;
use crate::tenant::TenantId;

/// The buffer size the suite expects the implementation under test to use.
pub const SIZE: usize = 5;

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn seqs(events: &[ReplayEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Publish through `bus` (which appends to `replay`, configured with
/// [`SIZE`] events per topic and no short TTL) and read back through
/// `replay`: seqs, `since`, truncation, data round trip, concurrency and
/// tenant isolation. Uses tenants `conformance-replay-a` and `-b` and
/// purges them at the end.
pub async fn suite(bus: &dyn Bus, replay: &dyn ReplayBuffer) {
    let a = tenant("conformance-replay-a");
    let b = tenant("conformance-replay-b");
    let topic = "conf:chat";

    assert_eq!(replay.seq(&a, topic).await, Ok(0), "unknown topic");
    let p = replay.since(&a, topic, 0).await.unwrap();
    assert!(p.events.is_empty() && !p.truncated && p.seq == 0);

    let datas = [
        "null",
        r#"{"text":"héllo\nworld","n":[1,2,{"x":null}]}"#,
        r#""s""#,
    ];
    for (i, data) in datas.iter().enumerate() {
        bus.publish(&a, topic, &format!("e{i}"), data)
            .await
            .unwrap();
    }
    assert_eq!(replay.seq(&a, topic).await, Ok(3));
    let p = replay.since(&a, topic, 0).await.unwrap();
    assert_eq!(seqs(&p.events), [1, 2, 3]);
    assert!(!p.truncated);
    assert_eq!(p.seq, 3);
    for (i, e) in p.events.iter().enumerate() {
        assert_eq!(e.event, format!("e{i}"), "event name round trip");
        assert_eq!(e.data, datas[i], "data round trip");
    }
    let p = replay.since(&a, topic, 1).await.unwrap();
    assert_eq!(seqs(&p.events), [2, 3], "strictly after since");
    let p = replay.since(&a, topic, 3).await.unwrap();
    assert!(p.events.is_empty() && !p.truncated, "caught up");

    // Trimmed to SIZE: 8 published, 4..=8 kept.
    for _ in 0..5 {
        bus.publish(&a, topic, "more", "1").await.unwrap();
    }
    let p = replay.since(&a, topic, 2).await.unwrap();
    assert!(p.truncated, "event 3 is gone");
    assert_eq!(seqs(&p.events), [4, 5, 6, 7, 8]);
    let p = replay.since(&a, topic, 3).await.unwrap();
    assert!(!p.truncated, "nothing after 3 is missing");
    assert_eq!(seqs(&p.events), [4, 5, 6, 7, 8]);
    let p = replay.since(&a, topic, 0).await.unwrap();
    assert!(!p.truncated, "since 0 is never truncated");
    assert_eq!(p.events.len(), SIZE);
    let p = replay.since(&a, topic, 10).await.unwrap();
    assert!(p.truncated, "a client ahead of the seq");
    assert_eq!(seqs(&p.events), [4, 5, 6, 7, 8], "gets everything kept");

    // Tenant isolation: same topic name, separate seq and buffer.
    assert_eq!(replay.seq(&b, topic).await, Ok(0));
    bus.publish(&b, topic, "theirs", "2").await.unwrap();
    let p = replay.since(&b, topic, 0).await.unwrap();
    assert_eq!(seqs(&p.events), [1]);
    assert_eq!(p.events[0].event, "theirs");
    assert_eq!(replay.seq(&a, topic).await, Ok(8), "a untouched");

    // Concurrent publishes: gap-free, ordered, trimmed.
    let race = "conf:race";
    let results =
        join_all((0..50).map(|i| bus.publish(&a, race, "r", if i % 2 == 0 { "0" } else { "1" })))
            .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(replay.seq(&a, race).await, Ok(50));
    let p = replay.since(&a, race, 0).await.unwrap();
    assert_eq!(seqs(&p.events), [46, 47, 48, 49, 50]);

    // Purge removes one tenant's buffers only.
    assert!(replay.purge_tenant(&a).await.unwrap() >= 2);
    assert_eq!(replay.seq(&a, topic).await, Ok(0));
    assert_eq!(replay.seq(&a, race).await, Ok(0));
    assert_eq!(replay.seq(&b, topic).await, Ok(1), "b untouched");
    assert!(replay.purge_tenant(&b).await.unwrap() >= 1);
    assert_eq!(replay.seq(&b, topic).await, Ok(0));
}

/// The settings [`bounds`] expects the implementation under test to use.
pub const BOUNDS: ReplaySettings = ReplaySettings {
    size: 1000,
    ttl: None,
    max_bytes_per_tenant: 10_000,
    max_topics_per_tenant: 3,
};

/// The per-tenant bounds, with `bus` and `replay` configured as
/// [`BOUNDS`]: past the topic bound the least recently published topic is
/// forgotten (seq too); past the byte bound the coldest topic's events go
/// first (its seq is kept), the newest event stays, and another tenant's
/// budget is its own. Uses tenants `conformance-bounds-{a,b,c}` and purges
/// them at the end.
pub async fn bounds(bus: &dyn Bus, replay: &dyn ReplayBuffer) {
    let (a, b, c) = (
        tenant("conformance-bounds-a"),
        tenant("conformance-bounds-b"),
        tenant("conformance-bounds-c"),
    );
    for topic in ["t1", "t2", "t3", "t4"] {
        bus.publish(&a, topic, "e", "1").await.unwrap();
    }
    assert_eq!(replay.seq(&a, "t1").await, Ok(0), "t1 forgotten");
    for topic in ["t2", "t3", "t4"] {
        assert_eq!(replay.seq(&a, topic).await, Ok(1), "{topic}");
        assert_eq!(replay.since(&a, topic, 0).await.unwrap().events.len(), 1);
    }

    let data = format!("\"{}\"", "x".repeat(98));
    for _ in 0..20 {
        bus.publish(&b, "cold", "e", &data).await.unwrap();
    }
    for _ in 0..200 {
        bus.publish(&b, "hot", "e", &data).await.unwrap();
    }
    let cold = replay.since(&b, "cold", 0).await.unwrap();
    let hot = replay.since(&b, "hot", 0).await.unwrap();
    assert!(cold.events.is_empty(), "the cold topic gave way first");
    assert_eq!(cold.seq, 20, "its seq is kept");
    assert!(
        !hot.events.is_empty() && hot.events.len() < 200,
        "{}",
        hot.events.len()
    );
    assert_eq!(hot.events.last().map(|e| e.seq), Some(200), "newest kept");
    let bytes: usize = hot
        .events
        .iter()
        .map(|e| e.event.len() + e.data.len() + 48)
        .sum();
    assert!(bytes <= BOUNDS.max_bytes_per_tenant, "{bytes}");

    bus.publish(&c, "cold", "e", &data).await.unwrap();
    assert_eq!(replay.since(&c, "cold", 0).await.unwrap().events.len(), 1);
    for t in [&a, &b, &c] {
        replay.purge_tenant(t).await.unwrap();
    }
}
