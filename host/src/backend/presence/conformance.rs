//! The behavioural suite every [`PresenceStore`] must pass: the memory
//! store runs it in its unit tests, the Redis store against a real Redis
//! (also with two stores on one Redis as two hosts). Each function panics
//! on the first behaviour that differs, so call it from a test.
//!
//! The suite uses tenants named `presence-conf-*` and purges them when
//! done; run it against an otherwise unused store. It takes about 2 s
//! (TTL waits of a few hundred ms).

use std::time::Duration;

use futures_util::future::join_all;

use super::{ConnRef, Expired, Joined, Left, Member, PresenceLimits, PresenceStore};
use crate::backend::BackendError;
use crate::backend::presence::{MAX_DATA_BYTES, MAX_NAME_BYTES, MAX_TTL};
use crate::tenant::TenantId;

/// A TTL nothing in the suite outlives.
const LONG: Duration = Duration::from_secs(60);
/// A TTL the suite waits out.
const SHORT: Duration = Duration::from_millis(500);
/// Longer than [`SHORT`] with a margin: a connection joined with `SHORT`
/// and not refreshed is dead after this.
const PAST_SHORT: Duration = Duration::from_millis(850);
/// The heartbeat interval of the suite (a fifth of [`SHORT`]).
const BEAT: Duration = Duration::from_millis(100);

/// The limits [`limits_suite`] expects its store to have.
pub const SUITE_LIMITS: PresenceLimits = PresenceLimits {
    max_users_per_topic: 3,
    max_conns_per_user: 2,
    max_conns_per_tenant: 6,
};

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn conn_ref(tenant: &TenantId, topic: &str, user: &str, conn: &str) -> ConnRef {
    ConnRef {
        tenant: tenant.clone(),
        topic: topic.into(),
        user_key: user.into(),
        conn: conn.into(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn join(
    store: &dyn PresenceStore,
    t: &TenantId,
    topic: &str,
    user: &str,
    instance: &str,
    conn: &str,
    data: &str,
    ttl: Duration,
) -> Joined {
    match store.join(t, topic, user, instance, conn, data, ttl).await {
        Ok(j) => j,
        Err(e) => panic!("join {topic}/{user}/{conn}: {e}"),
    }
}

async fn leave(
    store: &dyn PresenceStore,
    t: &TenantId,
    topic: &str,
    user: &str,
    conn: &str,
) -> Left {
    match store.leave(t, topic, user, conn).await {
        Ok(l) => l,
        Err(e) => panic!("leave {topic}/{user}/{conn}: {e}"),
    }
}

async fn keys(store: &dyn PresenceStore, t: &TenantId, topic: &str) -> Vec<String> {
    members(store, t, topic)
        .await
        .into_iter()
        .map(|m| m.key)
        .collect()
}

async fn members(store: &dyn PresenceStore, t: &TenantId, topic: &str) -> Vec<Member> {
    match store.members(t, topic).await {
        Ok(m) => m,
        Err(e) => panic!("members {topic}: {e}"),
    }
}

fn member(key: &str, data: &str) -> Member {
    Member {
        key: key.into(),
        data: data.into(),
    }
}

fn joined(first: bool, topic_was_empty: bool) -> Joined {
    Joined {
        first,
        topic_was_empty,
    }
}

fn left(last: bool, data: Option<&str>, topic_now_empty: bool) -> Left {
    Left {
        last,
        data: data.map(str::to_owned),
        topic_now_empty,
    }
}

fn expired(topic: &str, user: &str, data: &str, topic_now_empty: bool) -> Expired {
    Expired {
        topic: topic.into(),
        user_key: user.into(),
        data: data.into(),
        topic_now_empty,
    }
}

fn sorted(mut v: Vec<Expired>) -> Vec<Expired> {
    v.sort_by(|a, b| (&a.topic, &a.user_key).cmp(&(&b.topic, &b.user_key)));
    v
}

/// The whole [`PresenceStore`] contract on one store (the two-host part
/// runs with the store as both hosts).
pub async fn suite(store: &dyn PresenceStore) {
    validation(store).await;
    two_tabs(store).await;
    order_and_separators(store).await;
    parallel_joins(store).await;
    tenant_isolation(store).await;
    dead_connections(store).await;
    two_hosts(store, store).await;
}

/// Arguments are checked before anything is stored.
async fn validation(store: &dyn PresenceStore) {
    let t = tenant("presence-conf-valid");
    let long_name = "x".repeat(MAX_NAME_BYTES + 1);
    let big_data = "x".repeat(MAX_DATA_BYTES + 1);
    let invalid = |r: Result<Joined, BackendError>, what: &str| {
        assert!(matches!(r, Err(BackendError::Invalid(_))), "{what}: {r:?}");
    };
    let too_large = |r: Result<Joined, BackendError>, what: &str| {
        assert!(matches!(r, Err(BackendError::TooLarge(_))), "{what}: {r:?}");
    };
    let s = store;
    invalid(
        s.join(&t, "", "u", "i", "c", "{}", LONG).await,
        "empty topic",
    );
    invalid(
        s.join(&t, "a\nb", "u", "i", "c", "{}", LONG).await,
        "newline topic",
    );
    too_large(
        s.join(&t, &long_name, "u", "i", "c", "{}", LONG).await,
        "long topic",
    );
    invalid(
        s.join(&t, "r", "", "i", "c", "{}", LONG).await,
        "empty user",
    );
    invalid(
        s.join(&t, "r", "u\n", "i", "c", "{}", LONG).await,
        "newline user",
    );
    too_large(
        s.join(&t, "r", &long_name, "i", "c", "{}", LONG).await,
        "long user",
    );
    invalid(
        s.join(&t, "r", "u", "", "c", "{}", LONG).await,
        "empty instance",
    );
    invalid(
        s.join(&t, "r", "u", "i", "", "{}", LONG).await,
        "empty conn",
    );
    too_large(
        s.join(&t, "r", "u", "i", "c", &big_data, LONG).await,
        "big data",
    );
    invalid(
        s.join(&t, "r", "u", "i", "c", "{}", Duration::ZERO).await,
        "zero ttl",
    );
    invalid(
        s.join(
            &t,
            "r",
            "u",
            "i",
            "c",
            "{}",
            MAX_TTL + Duration::from_secs(1),
        )
        .await,
        "huge ttl",
    );
    assert!(matches!(
        s.members(&t, "").await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        s.leave(&t, "r", "u\nv", "c").await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        s.heartbeat("i", &[conn_ref(&t, "r", "", "c")], LONG).await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        s.heartbeat("", &[], LONG).await,
        Err(BackendError::Invalid(_))
    ));
    assert_eq!(
        s.purge_tenant(&t).await,
        Ok(0),
        "refused joins store nothing"
    );

    // The largest names and data are fine; names are arbitrary otherwise.
    let topic = format!("room:é:{}", "t".repeat(MAX_NAME_BYTES - 8));
    assert_eq!(topic.len(), MAX_NAME_BYTES);
    let user = format!("user {{x}}:{}", "u".repeat(MAX_NAME_BYTES - 9));
    assert_eq!(user.len(), MAX_NAME_BYTES);
    let data = "d".repeat(MAX_DATA_BYTES);
    let conn = "c".repeat(MAX_NAME_BYTES);
    assert_eq!(
        join(s, &t, &topic, &user, "i", &conn, &data, LONG).await,
        joined(true, true)
    );
    assert_eq!(members(s, &t, &topic).await, vec![member(&user, &data)]);
    assert_eq!(
        leave(s, &t, &topic, &user, &conn).await,
        left(true, Some(&data), true)
    );
    assert_eq!(s.purge_tenant(&t).await, Ok(0));
}

/// Multi-tab dedup: one user, two connections.
async fn two_tabs(store: &dyn PresenceStore) {
    let t = tenant("presence-conf-tabs");
    let s = store;
    assert_eq!(
        join(s, &t, "room", "alice", "i1", "c1", r#"{"n":1}"#, LONG).await,
        joined(true, true),
        "first tab"
    );
    assert_eq!(
        join(s, &t, "room", "alice", "i1", "c2", r#"{"n":2}"#, LONG).await,
        joined(false, false),
        "second tab: no second join broadcast"
    );
    assert_eq!(
        members(s, &t, "room").await,
        vec![member("alice", r#"{"n":2}"#)],
        "one member, latest data"
    );
    assert_eq!(
        join(s, &t, "room", "alice", "i1", "c1", r#"{"n":3}"#, LONG).await,
        joined(false, false),
        "rejoin of a live connection is idempotent"
    );
    assert_eq!(
        members(s, &t, "room").await,
        vec![member("alice", r#"{"n":3}"#)],
        "rejoin updates the data"
    );
    assert_eq!(
        leave(s, &t, "room", "alice", "c1").await,
        left(false, None, false),
        "closing one tab keeps the user"
    );
    assert_eq!(
        leave(s, &t, "room", "alice", "c1").await,
        left(false, None, false),
        "leaving twice: unknown connection"
    );
    assert_eq!(keys(s, &t, "room").await, ["alice"]);
    assert_eq!(
        leave(s, &t, "room", "alice", "c2").await,
        left(true, Some(r#"{"n":3}"#), true),
        "the last tab leaves"
    );
    assert_eq!(members(s, &t, "room").await, []);
    assert_eq!(
        leave(s, &t, "nowhere", "nobody", "c9").await,
        left(false, None, true),
        "unknown connection on an unknown topic"
    );
    assert_eq!(s.purge_tenant(&t).await, Ok(0), "nothing left");
}

/// Members are sorted by key; topics and user keys with separators
/// (`:`) cannot be confused; topic_was_empty / topic_now_empty.
async fn order_and_separators(store: &dyn PresenceStore) {
    let t = tenant("presence-conf-order");
    let s = store;
    assert_eq!(
        join(s, &t, "room", "bob", "i", "c-b", r#""b""#, LONG).await,
        joined(true, true)
    );
    assert_eq!(
        join(s, &t, "room", "alice", "i", "c-a", r#""a""#, LONG).await,
        joined(true, false)
    );
    assert_eq!(
        join(s, &t, "room", "carol", "i", "c-c", r#""c""#, LONG).await,
        joined(true, false)
    );
    assert_eq!(
        members(s, &t, "room").await,
        vec![
            member("alice", r#""a""#),
            member("bob", r#""b""#),
            member("carol", r#""c""#)
        ]
    );
    // "a:b" + "c" and "a" + "b:c" are different topics and users.
    assert_eq!(
        join(s, &t, "a:b", "c", "i", "x", "1", LONG).await,
        joined(true, true)
    );
    assert_eq!(
        join(s, &t, "a", "b:c", "i", "x", "2", LONG).await,
        joined(true, true)
    );
    assert_eq!(members(s, &t, "a:b").await, vec![member("c", "1")]);
    assert_eq!(members(s, &t, "a").await, vec![member("b:c", "2")]);
    assert_eq!(
        leave(s, &t, "a", "b", "c:x").await,
        left(false, None, false),
        "no such user"
    );
    assert_eq!(
        leave(s, &t, "a:b", "c", "x").await,
        left(true, Some("1"), true)
    );
    assert_eq!(members(s, &t, "a").await, vec![member("b:c", "2")]);

    assert_eq!(
        leave(s, &t, "room", "bob", "c-b").await,
        left(true, Some(r#""b""#), false)
    );
    assert_eq!(
        leave(s, &t, "room", "alice", "c-a").await,
        left(true, Some(r#""a""#), false)
    );
    assert_eq!(
        leave(s, &t, "room", "carol", "c-c").await,
        left(true, Some(r#""c""#), true),
        "the last user leaves the topic empty"
    );
    assert_eq!(s.purge_tenant(&t).await, Ok(1), "purge counts connections");
    assert_eq!(members(s, &t, "a").await, []);
    assert_eq!(s.purge_tenant(&t).await, Ok(0));
}

/// 100 concurrent joins of distinct users lose nothing; exactly one saw the
/// topic empty; likewise 100 concurrent leaves.
async fn parallel_joins(store: &dyn PresenceStore) {
    let t = tenant("presence-conf-parallel");
    let users: Vec<String> = (0..100).map(|i| format!("u{i:03}")).collect();
    let joins = join_all(users.iter().map(|u| {
        let t = &t;
        async move { join(store, t, "hall", u, "i", &format!("c-{u}"), "{}", LONG).await }
    }))
    .await;
    assert!(joins.iter().all(|j| j.first), "every user is new");
    assert_eq!(
        joins.iter().filter(|j| j.topic_was_empty).count(),
        1,
        "exactly one join found the topic empty"
    );
    assert_eq!(keys(store, &t, "hall").await, users, "all 100, sorted");
    let leaves = join_all(users.iter().map(|u| {
        let t = &t;
        async move { leave(store, t, "hall", u, &format!("c-{u}")).await }
    }))
    .await;
    assert!(
        leaves
            .iter()
            .all(|l| l.last && l.data.as_deref() == Some("{}"))
    );
    assert_eq!(
        leaves.iter().filter(|l| l.topic_now_empty).count(),
        1,
        "exactly one leave left the topic empty"
    );
    assert_eq!(members(store, &t, "hall").await, []);
    assert_eq!(store.purge_tenant(&t).await, Ok(0));
}

/// The same topic, user key and connection id in two tenants are unrelated.
async fn tenant_isolation(store: &dyn PresenceStore) {
    let a = tenant("presence-conf-iso-a");
    let b = tenant("presence-conf-iso-b");
    let s = store;
    assert_eq!(
        join(s, &a, "room", "alice", "i", "c1", "\"a\"", LONG).await,
        joined(true, true)
    );
    assert_eq!(
        join(s, &b, "room", "alice", "i", "c1", "\"b\"", LONG).await,
        joined(true, true),
        "b's topic is empty and its user new"
    );
    assert_eq!(members(s, &a, "room").await, vec![member("alice", "\"a\"")]);
    assert_eq!(members(s, &b, "room").await, vec![member("alice", "\"b\"")]);
    assert_eq!(
        leave(s, &a, "room", "alice", "c1").await,
        left(true, Some("\"a\""), true)
    );
    assert_eq!(members(s, &b, "room").await, vec![member("alice", "\"b\"")]);
    // A heartbeat naming tenant a does not touch b's entry (a has none).
    s.heartbeat("i", &[conn_ref(&a, "room", "alice", "c1")], LONG)
        .await
        .unwrap();
    join(s, &a, "room", "alice", "i", "c1", "\"a\"", LONG).await;
    join(s, &a, "other", "zed", "i", "c2", "\"a\"", LONG).await;
    assert_eq!(s.purge_tenant(&a).await, Ok(2));
    assert_eq!(members(s, &a, "room").await, []);
    assert_eq!(members(s, &a, "other").await, []);
    assert_eq!(
        members(s, &b, "room").await,
        vec![member("alice", "\"b\"")],
        "purging a leaves b alone"
    );
    assert_eq!(s.purge_tenant(&b).await, Ok(1));
}

/// Connections past their deadline: not present, dropped by a leave or a
/// join of the same user without a second report, reported once by
/// `expire` otherwise, in batches of `limit`.
async fn dead_connections(store: &dyn PresenceStore) {
    let t = tenant("presence-conf-dead");
    let many = tenant("presence-conf-dead-limit");
    let s = store;
    for (user, conn) in [("u1", "d1"), ("u2", "d2"), ("u3", "d3")] {
        join(s, &t, "room", user, "i", conn, user, SHORT).await;
    }
    join(s, &t, "room", "u4", "i", "d4", "u4", LONG).await;
    join(s, &t, "solo", "u5", "i", "d5", "u5", SHORT).await;
    join(s, &t, "room", "u6", "i", "d6", "u6", SHORT).await;
    join(s, &t, "room", "u6", "i", "d6b", "u6", LONG).await;
    join(s, &t, "ghost", "u8", "i", "d8", "u8", SHORT).await;
    for (user, conn) in [
        ("x1", "1"),
        ("x2", "2"),
        ("x3", "3"),
        ("y", "4"),
        ("y", "5"),
    ] {
        join(s, &many, "room", user, "i", conn, user, SHORT).await;
    }
    tokio::time::sleep(PAST_SHORT).await;

    assert_eq!(
        keys(s, &t, "room").await,
        ["u4", "u6"],
        "dead users are not members"
    );
    assert_eq!(members(s, &t, "solo").await, []);
    assert_eq!(
        leave(s, &t, "room", "u1", "d1").await,
        left(true, Some("u1"), false),
        "a late leave of a dead connection reports the departure"
    );
    assert_eq!(
        join(s, &t, "room", "u2", "i", "d2b", "u2b", LONG).await,
        joined(true, false),
        "a join over dead connections is a new join"
    );
    assert_eq!(
        leave(s, &t, "room", "u6", "d6b").await,
        left(true, Some("u6"), false),
        "only a dead connection remains: the user leaves"
    );
    assert_eq!(
        join(s, &t, "ghost", "u9", "i", "d9", "u9", LONG).await,
        joined(true, true),
        "a topic of dead users only is empty"
    );
    s.heartbeat("i", &[conn_ref(&t, "room", "u3", "d3")], LONG)
        .await
        .unwrap();
    assert_eq!(
        keys(s, &t, "room").await,
        ["u2", "u4"],
        "a heartbeat does not revive"
    );
    assert_eq!(s.expire(&t, 0).await, Ok(vec![]), "limit 0");
    let gone = sorted(s.expire(&t, 100).await.unwrap());
    assert_eq!(
        gone,
        vec![
            expired("ghost", "u8", "u8", false),
            expired("room", "u3", "u3", false),
            expired("solo", "u5", "u5", true)
        ],
        "only departures nobody reported yet"
    );
    assert_eq!(s.expire(&t, 100).await, Ok(vec![]), "reported once");
    assert_eq!(
        members(s, &t, "room").await,
        vec![member("u2", "u2b"), member("u4", "u4")]
    );
    assert_eq!(
        leave(s, &t, "room", "u3", "d3").await,
        left(false, None, false),
        "a leave after expiry: unknown connection"
    );
    assert_eq!(s.purge_tenant(&t).await, Ok(3));

    // Five dead connections, four users; at most `limit` removed a call.
    let mut reported = Vec::new();
    let mut calls = 0;
    loop {
        let batch = s.expire(&many, 2).await.unwrap();
        calls += 1;
        assert!(batch.len() <= 2, "{batch:?}");
        if batch.is_empty() && calls > 3 {
            break;
        }
        reported.extend(batch);
        assert!(calls < 10, "expire does not finish");
    }
    let users: Vec<String> = sorted(reported.clone())
        .into_iter()
        .map(|e| e.user_key)
        .collect();
    assert_eq!(users, ["x1", "x2", "x3", "y"], "each user once");
    assert!(
        reported
            .iter()
            .all(|e| e.topic_now_empty && e.data == e.user_key)
    );
    assert_eq!(
        s.purge_tenant(&many).await,
        Ok(0),
        "expire removed everything"
    );
}

/// Two hosts (two store instances on one backend; the memory store passes
/// itself twice): the same user on both, and a host that crashes (stops
/// heartbeating) while the other keeps its connections alive.
pub async fn two_hosts(a: &dyn PresenceStore, b: &dyn PresenceStore) {
    let t = tenant("presence-conf-hosts");
    assert_eq!(
        join(a, &t, "lobby", "sam", "host-a", "a:1", "\"a\"", LONG).await,
        joined(true, true)
    );
    assert_eq!(
        join(b, &t, "lobby", "sam", "host-b", "b:1", "\"b\"", LONG).await,
        joined(false, false),
        "already present through the other host"
    );
    assert_eq!(members(a, &t, "lobby").await, vec![member("sam", "\"b\"")]);
    assert_eq!(members(b, &t, "lobby").await, vec![member("sam", "\"b\"")]);
    assert_eq!(
        leave(a, &t, "lobby", "sam", "a:1").await,
        left(false, None, false),
        "still present through the other host"
    );
    assert_eq!(
        leave(b, &t, "lobby", "sam", "b:1").await,
        left(true, Some("\"b\""), true)
    );

    // Host a crashes: it never leaves nor heartbeats again.
    join(a, &t, "crash", "u1", "host-a", "a:u1", "\"a1\"", SHORT).await;
    join(a, &t, "crash", "u2", "host-a", "a:u2", "\"a2\"", SHORT).await;
    join(a, &t, "crash-solo", "u9", "host-a", "a:u9", "\"a9\"", SHORT).await;
    join(b, &t, "crash", "u2", "host-b", "b:u2", "\"b2\"", SHORT).await;
    join(b, &t, "crash", "u3", "host-b", "b:u3", "\"b3\"", SHORT).await;
    let held = [
        conn_ref(&t, "crash", "u2", "b:u2"),
        conn_ref(&t, "crash", "u3", "b:u3"),
        // Not b's: b's heartbeat must not keep it alive.
        conn_ref(&t, "crash", "u1", "a:u1"),
    ];
    let started = tokio::time::Instant::now();
    while started.elapsed() < PAST_SHORT {
        b.heartbeat("host-b", &held, SHORT).await.unwrap();
        tokio::time::sleep(BEAT).await;
    }
    b.heartbeat("host-b", &held, SHORT).await.unwrap();
    assert_eq!(
        keys(a, &t, "crash").await,
        ["u2", "u3"],
        "heartbeats keep b's users past the ttl"
    );

    // Four expirers at once on both hosts, one connection a call: each
    // departure is reported by exactly one of them.
    let runs = join_all((0..4).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        let t = &t;
        async move {
            let mut got = Vec::new();
            for _ in 0..10 {
                let batch = store.expire(t, 1).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch);
            }
            got
        }
    }))
    .await;
    let mut all: Vec<Expired> = runs.into_iter().flatten().collect();
    all.extend(a.expire(&t, 100).await.unwrap());
    assert_eq!(
        sorted(all),
        vec![
            expired("crash", "u1", "\"a1\"", false),
            expired("crash-solo", "u9", "\"a9\"", true)
        ],
        "u1 and u9 left once each; u2 is still held by host b"
    );
    assert_eq!(b.expire(&t, 100).await, Ok(vec![]));
    assert_eq!(
        leave(a, &t, "crash", "u1", "a:u1").await,
        left(false, None, false),
        "the crashed host's late leave is a no-op"
    );
    assert_eq!(
        leave(a, &t, "crash", "u2", "a:u2").await,
        left(false, None, false)
    );
    assert_eq!(
        members(b, &t, "crash").await,
        vec![member("u2", "\"b2\""), member("u3", "\"b3\"")]
    );
    assert_eq!(
        leave(b, &t, "crash", "u2", "b:u2").await,
        left(true, Some("\"b2\""), false)
    );
    assert_eq!(
        leave(b, &t, "crash", "u3", "b:u3").await,
        left(true, Some("\"b3\""), true)
    );
    assert_eq!(a.purge_tenant(&t).await, Ok(0), "nothing left");
}

/// [`PresenceLimits`]: run on a store built with [`SUITE_LIMITS`]. A
/// refused join changes nothing; leaving frees room.
pub async fn limits_suite(store: &dyn PresenceStore) {
    let t = tenant("presence-conf-limits");
    let s = store;
    let quota = |r: Result<Joined, BackendError>, what: &str| {
        assert!(
            matches!(r, Err(BackendError::QuotaExceeded(_))),
            "{what}: {r:?}"
        );
    };
    join(s, &t, "room", "u1", "i", "c1", "1", LONG).await;
    join(s, &t, "room", "u1", "i", "c2", "1", LONG).await;
    quota(
        s.join(&t, "room", "u1", "i", "c3", "1", LONG).await,
        "a third tab",
    );
    assert_eq!(
        join(s, &t, "room", "u1", "i", "c1", "1b", LONG).await,
        joined(false, false),
        "rejoining a live connection is not a new one"
    );
    join(s, &t, "room", "u2", "i", "c4", "2", LONG).await;
    join(s, &t, "room", "u3", "i", "c5", "3", LONG).await;
    quota(
        s.join(&t, "room", "u4", "i", "c6", "4", LONG).await,
        "a fourth user",
    );
    join(s, &t, "other", "u1", "i", "c6", "1", LONG).await;
    join(s, &t, "other", "u2", "i", "c7", "2", LONG).await;
    quota(
        s.join(&t, "other", "u3", "i", "c8", "3", LONG).await,
        "a seventh connection",
    );
    assert_eq!(keys(s, &t, "room").await, ["u1", "u2", "u3"]);
    assert_eq!(
        keys(s, &t, "other").await,
        ["u1", "u2"],
        "refusals store nothing"
    );
    assert!(leave(s, &t, "room", "u2", "c4").await.last);
    join(s, &t, "room", "u4", "i", "c9", "4", LONG).await;
    assert_eq!(keys(s, &t, "room").await, ["u1", "u3", "u4"]);
    quota(
        s.join(&t, "other", "u3", "i", "c8", "3", LONG).await,
        "full again",
    );
    assert_eq!(s.purge_tenant(&t).await, Ok(6));
}
