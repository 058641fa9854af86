//! The behavioural suite every [`GroupStore`] must pass: the memory store
//! runs it in its unit tests, the Redis store against a real Redis (also
//! with two stores on one Redis as two hosts). Each function panics on the
//! first behaviour that differs, so call it from a test.
//!
//! The suite uses tenants named `groups-conf-*` and purges them when done;
//! run it against an otherwise unused store. It takes about 2 s (TTL waits
//! of a few hundred ms).

use std::time::Duration;

use futures_util::future::join_all;

use super::{
    ExpiredMember, GroupInfo, GroupLimits, GroupStore, Joined, Left, MAX_META_BYTES,
    MAX_NAME_BYTES, MAX_TTL, Member, MemberRef, Role, UNLIMITED_MEMBERS,
};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// A TTL nothing in the suite outlives.
const LONG: Duration = Duration::from_secs(60);
/// A TTL the suite waits out.
const SHORT: Duration = Duration::from_millis(500);
/// Longer than [`SHORT`] with a margin: a member joined with `SHORT` and
/// not refreshed is dead after this.
const PAST_SHORT: Duration = Duration::from_millis(850);
/// The heartbeat interval of the suite (a fifth of [`SHORT`]).
const BEAT: Duration = Duration::from_millis(100);

/// The limits [`limits_suite`] expects its store to have.
pub const SUITE_LIMITS: GroupLimits = GroupLimits {
    max_groups_per_tenant: 2,
    max_members_per_group: 3,
    max_members_per_tenant: 5,
};

fn tenant(name: &str) -> TenantId {
    match TenantId::parse(name) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

fn member_ref(tenant: &TenantId, group: &str, member: &str) -> MemberRef {
    MemberRef {
        tenant: tenant.clone(),
        group: group.into(),
        member: member.into(),
    }
}

async fn create(s: &dyn GroupStore, t: &TenantId, name: &str, max: u32, meta: &str) -> GroupInfo {
    match s.create_or_get(t, name, max, meta).await {
        Ok(g) => g,
        Err(e) => panic!("create {name}: {e}"),
    }
}

async fn join(
    s: &dyn GroupStore,
    t: &TenantId,
    name: &str,
    member: &str,
    instance: &str,
    role: Role,
    ttl: Duration,
) -> Joined {
    match s.join(t, name, member, instance, role, ttl).await {
        Ok(j) => j,
        Err(e) => panic!("join {name}/{member}: {e}"),
    }
}

async fn leave(s: &dyn GroupStore, t: &TenantId, name: &str, member: &str) -> Left {
    match s.leave(t, name, member).await {
        Ok(l) => l,
        Err(e) => panic!("leave {name}/{member}: {e}"),
    }
}

async fn members(s: &dyn GroupStore, t: &TenantId, name: &str) -> Vec<Member> {
    match s.members(t, name).await {
        Ok(m) => m,
        Err(e) => panic!("members {name}: {e}"),
    }
}

async fn ids(s: &dyn GroupStore, t: &TenantId, name: &str) -> Vec<String> {
    members(s, t, name)
        .await
        .into_iter()
        .map(|m| m.id)
        .collect()
}

async fn count(s: &dyn GroupStore, t: &TenantId, name: &str) -> u64 {
    match s.count(t, name).await {
        Ok(n) => n,
        Err(e) => panic!("count {name}: {e}"),
    }
}

fn member(id: &str, role: Role, instance: &str) -> Member {
    Member {
        id: id.into(),
        role,
        instance: instance.into(),
    }
}

fn joined(new: bool, role: Role, count: u64) -> Joined {
    Joined { new, role, count }
}

fn left(count: u64, role: Option<Role>) -> Left {
    Left { count, role }
}

fn expired(group: &str, member: &str, role: Role, count: u64) -> ExpiredMember {
    ExpiredMember {
        group: group.into(),
        member: member.into(),
        role,
        count,
    }
}

fn sorted(mut v: Vec<ExpiredMember>) -> Vec<ExpiredMember> {
    v.sort_by(|a, b| (&a.group, &a.member).cmp(&(&b.group, &b.member)));
    v
}

fn is_quota<T: std::fmt::Debug>(r: &Result<T, BackendError>) -> bool {
    matches!(r, Err(BackendError::QuotaExceeded(_)))
}

/// The whole [`GroupStore`] contract on one store (the two-host part runs
/// with the store as both hosts).
pub async fn suite(store: &dyn GroupStore) {
    validation(store).await;
    lifecycle(store).await;
    parallel_joins(&[store]).await;
    separators_and_isolation(store).await;
    dead_members(store).await;
    two_hosts(store, store).await;
}

/// Arguments are checked before anything is stored; unknown groups.
async fn validation(s: &dyn GroupStore) {
    let t = tenant("groups-conf-valid");
    let long_name = "x".repeat(MAX_NAME_BYTES + 1);
    let big_meta = "x".repeat(MAX_META_BYTES + 1);
    let invalid = |r: Result<(), BackendError>, what: &str| {
        assert!(matches!(r, Err(BackendError::Invalid(_))), "{what}: {r:?}");
    };
    let too_large = |r: Result<(), BackendError>, what: &str| {
        assert!(matches!(r, Err(BackendError::TooLarge(_))), "{what}: {r:?}");
    };
    let unit = |r: Result<GroupInfo, BackendError>| r.map(|_| ());
    let unit_j = |r: Result<Joined, BackendError>| r.map(|_| ());
    invalid(unit(s.create_or_get(&t, "", 5, "{}").await), "empty name");
    invalid(unit(s.create_or_get(&t, "a\nb", 5, "{}").await), "newline");
    too_large(
        unit(s.create_or_get(&t, &long_name, 5, "{}").await),
        "long name",
    );
    invalid(unit(s.create_or_get(&t, "g", 0, "{}").await), "max 0");
    too_large(
        unit(s.create_or_get(&t, "g", 5, &big_meta).await),
        "big meta",
    );
    assert_eq!(s.purge_tenant(&t).await, Ok(0), "refusals store nothing");

    // Unknown groups.
    invalid(
        unit_j(s.join(&t, "nope", "c", "i", Role::Member, LONG).await),
        "join an unknown group",
    );
    invalid(s.set_meta(&t, "nope", "{}").await, "set_meta unknown");
    assert!(matches!(
        s.close(&t, "nope").await,
        Err(BackendError::Invalid(_))
    ));
    assert_eq!(s.meta(&t, "nope").await, Ok(None));
    assert_eq!(members(s, &t, "nope").await, []);
    assert_eq!(count(s, &t, "nope").await, 0);
    assert_eq!(leave(s, &t, "nope", "c").await, left(0, None));
    assert_eq!(s.delete(&t, "nope").await, Ok(false));
    assert_eq!(s.expire(&t, 10).await, Ok(vec![]));

    create(s, &t, "g", 5, "{}").await;
    invalid(
        unit_j(s.join(&t, "g", "", "i", Role::Member, LONG).await),
        "empty conn",
    );
    too_large(
        unit_j(s.join(&t, "g", &long_name, "i", Role::Member, LONG).await),
        "long conn",
    );
    invalid(
        unit_j(s.join(&t, "g", "c", "i\n", Role::Member, LONG).await),
        "newline instance",
    );
    invalid(
        unit_j(
            s.join(&t, "g", "c", "i", Role::Member, Duration::ZERO)
                .await,
        ),
        "zero ttl",
    );
    invalid(
        unit_j(
            s.join(
                &t,
                "g",
                "c",
                "i",
                Role::Member,
                MAX_TTL + Duration::from_secs(1),
            )
            .await,
        ),
        "huge ttl",
    );
    too_large(s.set_meta(&t, "g", &big_meta).await, "big meta");
    assert!(matches!(
        s.leave(&t, "g", "").await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        s.members(&t, "").await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        s.heartbeat("i", &[member_ref(&t, "g", "")], LONG).await,
        Err(BackendError::Invalid(_))
    ));
    assert!(matches!(
        s.heartbeat("", &[], LONG).await,
        Err(BackendError::Invalid(_))
    ));
    assert_eq!(count(s, &t, "g").await, 0, "refused joins store nothing");

    // The largest names and meta are fine; names are arbitrary otherwise.
    let name = format!("room:é:{{x}}{}", "n".repeat(MAX_NAME_BYTES - 11));
    assert_eq!(name.len(), MAX_NAME_BYTES);
    let meta = "m".repeat(MAX_META_BYTES);
    let conn = "c".repeat(MAX_NAME_BYTES);
    let inst = "i".repeat(MAX_NAME_BYTES);
    assert!(create(s, &t, &name, UNLIMITED_MEMBERS, &meta).await.created);
    assert_eq!(s.meta(&t, &name).await, Ok(Some(meta.clone())));
    assert_eq!(
        join(s, &t, &name, &conn, &inst, Role::Viewer, LONG).await,
        joined(true, Role::Viewer, 1)
    );
    assert_eq!(
        members(s, &t, &name).await,
        vec![member(&conn, Role::Viewer, &inst)]
    );
    assert_eq!(s.purge_tenant(&t).await, Ok(2), "purge counts groups");
    assert_eq!(s.meta(&t, &name).await, Ok(None));
}

/// Create, meta, roles, rejoin, leave, close, delete.
async fn lifecycle(s: &dyn GroupStore) {
    let t = tenant("groups-conf-life");
    let meta = r#"{"game":"chess"}"#;
    assert_eq!(
        create(s, &t, "lobby", 50, meta).await,
        GroupInfo {
            created: true,
            max_members: 50,
            meta: meta.into(),
            closed: false
        }
    );
    assert_eq!(
        create(s, &t, "lobby", 7, "{}").await,
        GroupInfo {
            created: false,
            max_members: 50,
            meta: meta.into(),
            closed: false
        },
        "the second create returns the group unchanged"
    );
    assert_eq!(s.meta(&t, "lobby").await, Ok(Some(meta.into())));
    s.set_meta(&t, "lobby", r#"{"game":"go"}"#).await.unwrap();
    assert_eq!(
        s.meta(&t, "lobby").await,
        Ok(Some(r#"{"game":"go"}"#.into()))
    );
    assert_eq!(
        create(s, &t, "lobby", 50, meta).await.meta,
        r#"{"game":"go"}"#
    );

    assert_eq!(
        join(s, &t, "lobby", "c2", "i1", Role::Member, LONG).await,
        joined(true, Role::Member, 1)
    );
    assert_eq!(
        join(s, &t, "lobby", "c1", "i1", Role::Admin, LONG).await,
        joined(true, Role::Admin, 2)
    );
    assert_eq!(
        join(s, &t, "lobby", "c3", "i2", Role::Viewer, LONG).await,
        joined(true, Role::Viewer, 3)
    );
    assert_eq!(
        join(s, &t, "lobby", "c1", "i1", Role::Viewer, LONG).await,
        joined(false, Role::Admin, 3),
        "a rejoin is idempotent and keeps the role"
    );
    assert_eq!(
        members(s, &t, "lobby").await,
        vec![
            member("c1", Role::Admin, "i1"),
            member("c2", Role::Member, "i1"),
            member("c3", Role::Viewer, "i2"),
        ],
        "sorted by id, with roles"
    );
    assert_eq!(count(s, &t, "lobby").await, 3);
    assert_eq!(
        leave(s, &t, "lobby", "c2").await,
        left(2, Some(Role::Member))
    );
    assert_eq!(
        leave(s, &t, "lobby", "c2").await,
        left(2, None),
        "leaving twice"
    );
    assert_eq!(ids(s, &t, "lobby").await, ["c1", "c3"]);

    // Close: members go, joins are refused, the group stays closed.
    assert_eq!(
        s.close(&t, "lobby").await,
        Ok(vec![
            member("c1", Role::Admin, "i1"),
            member("c3", Role::Viewer, "i2"),
        ])
    );
    assert_eq!(members(s, &t, "lobby").await, []);
    assert_eq!(count(s, &t, "lobby").await, 0);
    let r = s.join(&t, "lobby", "c4", "i1", Role::Member, LONG).await;
    assert!(matches!(r, Err(BackendError::AccessDenied(_))), "{r:?}");
    let r = s.join(&t, "lobby", "c1", "i1", Role::Admin, LONG).await;
    assert!(matches!(r, Err(BackendError::AccessDenied(_))), "{r:?}");
    assert!(create(s, &t, "lobby", 50, meta).await.closed);
    assert_eq!(s.close(&t, "lobby").await, Ok(vec![]), "closed once");
    assert_eq!(leave(s, &t, "lobby", "c1").await, left(0, None));
    s.set_meta(&t, "lobby", "null").await.unwrap();
    assert_eq!(s.meta(&t, "lobby").await, Ok(Some("null".into())));

    // Delete: gone, and can be created afresh.
    assert_eq!(s.delete(&t, "lobby").await, Ok(true));
    assert_eq!(s.delete(&t, "lobby").await, Ok(false));
    assert_eq!(s.meta(&t, "lobby").await, Ok(None));
    let fresh = create(s, &t, "lobby", 2, "{}").await;
    assert!(fresh.created && !fresh.closed && fresh.max_members == 2);
    join(s, &t, "lobby", "c1", "i1", Role::Member, LONG).await;
    assert_eq!(s.delete(&t, "lobby").await, Ok(true), "delete with members");
    assert_eq!(s.purge_tenant(&t).await, Ok(0), "nothing left");
}

/// 20 parallel joins against `max_members` 5, spread over `stores` (one
/// store, or two hosts of one backend): exactly 5 succeed, the rest are
/// `QuotaExceeded`; leaving frees a slot. An unlimited group takes all.
pub async fn parallel_joins(stores: &[&dyn GroupStore]) {
    let t = tenant("groups-conf-parallel");
    let s = stores[0];
    create(s, &t, "five", 5, "{}").await;
    let results = join_all((0..20).map(|i| {
        let store = stores[i % stores.len()];
        let t = &t;
        async move {
            store
                .join(
                    t,
                    "five",
                    &format!("c{i:02}"),
                    &format!("host-{}", i % stores.len()),
                    Role::Member,
                    LONG,
                )
                .await
        }
    }))
    .await;
    let ok: Vec<&Joined> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 5, "exactly max_members joins: {results:?}");
    assert!(
        results.iter().all(|r| r.is_ok() || is_quota(r)),
        "the others are QuotaExceeded: {results:?}"
    );
    let mut counts: Vec<u64> = ok.iter().map(|j| j.count).collect();
    counts.sort_unstable();
    assert_eq!(counts, [1, 2, 3, 4, 5], "each join saw its own count");
    let now_in = ids(s, &t, "five").await;
    assert_eq!(now_in.len(), 5);
    assert_eq!(count(stores[stores.len() - 1], &t, "five").await, 5);
    assert!(is_quota(
        &s.join(&t, "five", "late", "h", Role::Admin, LONG).await
    ));
    assert_eq!(
        join(s, &t, "five", &now_in[0], "host-0", Role::Member, LONG)
            .await
            .count,
        5,
        "a rejoin of a member of a full group is fine"
    );
    assert_eq!(leave(s, &t, "five", &now_in[0]).await.count, 4);
    assert_eq!(
        join(s, &t, "five", "late", "h", Role::Admin, LONG).await,
        joined(true, Role::Admin, 5),
        "leaving freed a slot"
    );

    create(s, &t, "all", UNLIMITED_MEMBERS, "{}").await;
    let results = join_all((0..40).map(|i| {
        let store = stores[i % stores.len()];
        let t = &t;
        async move {
            store
                .join(t, "all", &format!("c{i:02}"), "h", Role::Viewer, LONG)
                .await
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(count(s, &t, "all").await, 40);
    assert_eq!(s.purge_tenant(&t).await, Ok(2));
}

/// Names with separators cannot be confused; tenants are isolated.
async fn separators_and_isolation(s: &dyn GroupStore) {
    let a = tenant("groups-conf-iso-a");
    let b = tenant("groups-conf-iso-b");
    create(s, &a, "x:y", 10, "1").await;
    create(s, &a, "x", 10, "2").await;
    join(s, &a, "x:y", "z", "i", Role::Member, LONG).await;
    join(s, &a, "x", "y:z", "i", Role::Admin, LONG).await;
    assert_eq!(
        members(s, &a, "x:y").await,
        vec![member("z", Role::Member, "i")]
    );
    assert_eq!(
        members(s, &a, "x").await,
        vec![member("y:z", Role::Admin, "i")]
    );
    assert_eq!(leave(s, &a, "x", "y").await, left(1, None));
    assert_eq!(s.meta(&a, "x:y").await, Ok(Some("1".into())));

    // The same names in tenant b are unrelated.
    assert_eq!(s.meta(&b, "x").await, Ok(None));
    assert!(create(s, &b, "x", 1, "b").await.created);
    assert_eq!(
        join(s, &b, "x", "y:z", "i", Role::Viewer, LONG).await,
        joined(true, Role::Viewer, 1)
    );
    assert!(is_quota(
        &s.join(&b, "x", "other", "i", Role::Member, LONG).await
    ));
    assert_eq!(s.close(&b, "x").await.map(|m| m.len()), Ok(1));
    assert_eq!(ids(s, &a, "x").await, ["y:z"], "closing b's x leaves a's");
    // A heartbeat naming tenant b does not touch a's member.
    assert_eq!(
        s.heartbeat("i", &[member_ref(&b, "x:y", "z")], LONG).await,
        Ok(vec![member_ref(&b, "x:y", "z")]),
        "an unknown member is reported lost"
    );
    assert_eq!(s.purge_tenant(&a).await, Ok(2));
    assert_eq!(s.meta(&b, "x").await, Ok(Some("b".into())), "b untouched");
    assert_eq!(s.purge_tenant(&b).await, Ok(1));
}

/// Members past their deadline: not counted or listed, no obstacle to
/// capacity, dropped by a leave (reported) or a rejoin (not reported),
/// reported once by `expire` otherwise, in batches of `limit`.
async fn dead_members(s: &dyn GroupStore) {
    let t = tenant("groups-conf-dead");
    let many = tenant("groups-conf-dead-limit");
    create(s, &t, "room", 3, "{}").await;
    create(s, &t, "solo", 3, "{}").await;
    join(s, &t, "room", "d1", "i", Role::Admin, SHORT).await;
    join(s, &t, "room", "d2", "i", Role::Member, SHORT).await;
    join(s, &t, "room", "d3", "i", Role::Viewer, SHORT).await;
    join(s, &t, "solo", "d4", "i", Role::Member, SHORT).await;
    create(s, &many, "g", UNLIMITED_MEMBERS, "{}").await;
    for i in 0..5 {
        join(s, &many, "g", &format!("m{i}"), "i", Role::Member, SHORT).await;
    }
    tokio::time::sleep(PAST_SHORT).await;

    assert_eq!(count(s, &t, "room").await, 0, "dead members do not count");
    assert_eq!(members(s, &t, "room").await, []);
    assert_eq!(
        join(s, &t, "room", "n1", "i", Role::Member, LONG).await,
        joined(true, Role::Member, 1),
        "dead members take no capacity"
    );
    assert_eq!(
        join(s, &t, "room", "d2", "i", Role::Viewer, LONG).await,
        joined(true, Role::Viewer, 2),
        "a dead member that joins again is new, with its new role"
    );
    assert_eq!(
        leave(s, &t, "room", "d1").await,
        left(2, Some(Role::Admin)),
        "a late leave of a dead member reports it"
    );
    assert_eq!(
        s.heartbeat(
            "i",
            &[member_ref(&t, "room", "d3"), member_ref(&t, "room", "n1")],
            LONG
        )
        .await,
        Ok(vec![member_ref(&t, "room", "d3")]),
        "a dead member is reported lost, a live one refreshed"
    );
    assert_eq!(
        ids(s, &t, "room").await,
        ["d2", "n1"],
        "a heartbeat does not revive"
    );
    assert_eq!(s.expire(&t, 0).await, Ok(vec![]), "limit 0");
    assert_eq!(
        sorted(s.expire(&t, 100).await.unwrap()),
        vec![
            expired("room", "d3", Role::Viewer, 2),
            expired("solo", "d4", Role::Member, 0),
        ],
        "only departures nobody reported yet"
    );
    assert_eq!(s.expire(&t, 100).await, Ok(vec![]), "reported once");
    assert_eq!(leave(s, &t, "room", "d3").await, left(2, None));
    assert_eq!(s.purge_tenant(&t).await, Ok(2));

    // Five dead members; at most `limit` removed a call.
    let mut reported = Vec::new();
    let mut calls = 0;
    loop {
        let batch = s.expire(&many, 2).await.unwrap();
        calls += 1;
        assert!(batch.len() <= 2, "{batch:?}");
        if batch.is_empty() {
            break;
        }
        reported.extend(batch);
        assert!(calls < 10, "expire does not finish");
    }
    assert_eq!(calls, 4, "2 + 2 + 1, then nothing");
    let got: Vec<String> = sorted(reported).into_iter().map(|e| e.member).collect();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"], "each once");
    assert_eq!(s.purge_tenant(&many).await, Ok(1));
}

/// Two hosts (two store instances on one backend; the memory store passes
/// itself twice): capacity and the closed flag hold across them, and a host
/// that crashes (stops heartbeating) loses its members while the other
/// keeps its own alive; concurrent expirers report each member once.
pub async fn two_hosts(a: &dyn GroupStore, b: &dyn GroupStore) {
    parallel_joins(&[a, b]).await;
    let t = tenant("groups-conf-hosts");
    create(a, &t, "g", 10, "{}").await;
    assert!(!create(b, &t, "g", 3, "{}").await.created);
    join(a, &t, "g", "a:1", "host-a", Role::Admin, LONG).await;
    assert_eq!(
        join(b, &t, "g", "b:1", "host-b", Role::Member, LONG).await,
        joined(true, Role::Member, 2)
    );
    assert_eq!(
        members(b, &t, "g").await,
        vec![
            member("a:1", Role::Admin, "host-a"),
            member("b:1", Role::Member, "host-b"),
        ]
    );
    assert_eq!(a.close(&t, "g").await.map(|m| m.len()), Ok(2));
    assert_eq!(
        b.heartbeat("host-b", &[member_ref(&t, "g", "b:1")], LONG)
            .await,
        Ok(vec![member_ref(&t, "g", "b:1")]),
        "a closed group's member is reported lost on the other host"
    );
    let r = b.join(&t, "g", "b:2", "host-b", Role::Member, LONG).await;
    assert!(
        matches!(r, Err(BackendError::AccessDenied(_))),
        "closed on the other host too: {r:?}"
    );
    assert!(b.delete(&t, "g").await.unwrap());

    // Host a crashes: it never leaves nor heartbeats again.
    create(a, &t, "crash", 10, "{}").await;
    create(a, &t, "crash-solo", 10, "{}").await;
    join(a, &t, "crash", "a:1", "host-a", Role::Admin, SHORT).await;
    join(a, &t, "crash", "a:2", "host-a", Role::Member, SHORT).await;
    join(a, &t, "crash-solo", "a:3", "host-a", Role::Viewer, SHORT).await;
    join(b, &t, "crash", "b:1", "host-b", Role::Member, SHORT).await;
    join(b, &t, "crash", "b:2", "host-b", Role::Viewer, SHORT).await;
    let held = [
        member_ref(&t, "crash", "b:1"),
        member_ref(&t, "crash", "b:2"),
        // Not b's: b's heartbeat must not keep it alive.
        member_ref(&t, "crash", "a:1"),
    ];
    let started = tokio::time::Instant::now();
    while started.elapsed() < PAST_SHORT {
        assert_eq!(
            b.heartbeat("host-b", &held, SHORT).await,
            Ok(vec![member_ref(&t, "crash", "a:1")]),
            "another host's member is not refreshed"
        );
        tokio::time::sleep(BEAT).await;
    }
    b.heartbeat("host-b", &held, SHORT).await.unwrap();
    assert_eq!(
        ids(a, &t, "crash").await,
        ["b:1", "b:2"],
        "heartbeats keep b's members past the ttl"
    );
    assert_eq!(count(a, &t, "crash").await, 2);

    // Four expirers at once on both hosts, one member a call: each
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
    let mut all: Vec<ExpiredMember> = runs.into_iter().flatten().collect();
    all.extend(a.expire(&t, 100).await.unwrap());
    assert_eq!(
        sorted(all),
        vec![
            expired("crash", "a:1", Role::Admin, 2),
            expired("crash", "a:2", Role::Member, 2),
            expired("crash-solo", "a:3", Role::Viewer, 0),
        ],
        "a's members left once each; b's are still held"
    );
    assert_eq!(b.expire(&t, 100).await, Ok(vec![]));
    assert_eq!(
        leave(a, &t, "crash", "a:1").await,
        left(2, None),
        "the crashed host's late leave is a no-op"
    );
    assert_eq!(
        leave(b, &t, "crash", "b:1").await,
        left(1, Some(Role::Member))
    );
    assert_eq!(a.purge_tenant(&t).await, Ok(2));
}

/// [`GroupLimits`]: run on a store built with [`SUITE_LIMITS`]. A refused
/// call changes nothing; leaving and expiring free room.
pub async fn limits_suite(s: &dyn GroupStore) {
    let t = tenant("groups-conf-limits");
    create(s, &t, "g1", 100, "{}").await;
    create(s, &t, "g2", 2, "{}").await;
    assert!(is_quota(&s.create_or_get(&t, "g3", 5, "{}").await));
    assert!(
        !create(s, &t, "g1", 100, "{}").await.created,
        "an existing group is returned at the limit"
    );

    // g1 allows 100 but the store holds 3 members a group.
    for c in ["a", "b", "c"] {
        join(s, &t, "g1", c, "i", Role::Member, SHORT).await;
    }
    assert!(is_quota(
        &s.join(&t, "g1", "d", "i", Role::Member, LONG).await
    ));
    assert_eq!(
        join(s, &t, "g1", "a", "i", Role::Member, SHORT).await.count,
        3
    );
    join(s, &t, "g2", "e", "i", Role::Member, LONG).await;
    join(s, &t, "g2", "f", "i", Role::Member, LONG).await;
    assert!(is_quota(
        &s.join(&t, "g2", "g", "i", Role::Member, LONG).await
    ));
    assert_eq!(leave(s, &t, "g2", "f").await.count, 1);
    join(s, &t, "g2", "g", "i", Role::Member, LONG).await;
    assert_eq!(ids(s, &t, "g2").await, ["e", "g"]);

    // The tenant holds 5 members: g2 could take one more, the tenant not.
    assert_eq!(s.delete(&t, "g2").await, Ok(true));
    create(s, &t, "g2", 10, "{}").await;
    join(s, &t, "g2", "x", "i", Role::Member, LONG).await;
    join(s, &t, "g2", "y", "i", Role::Member, LONG).await;
    assert!(is_quota(
        &s.join(&t, "g2", "z", "i", Role::Member, LONG).await
    ));

    // Dead members hold their place until expired.
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(count(s, &t, "g1").await, 0);
    assert!(
        is_quota(&s.join(&t, "g1", "d", "i", Role::Member, LONG).await),
        "3 members of g1 are dead but stored"
    );
    assert_eq!(s.expire(&t, 10).await.map(|e| e.len()), Ok(3));
    join(s, &t, "g1", "d", "i", Role::Member, LONG).await;
    assert_eq!(ids(s, &t, "g1").await, ["d"]);
    assert_eq!(s.purge_tenant(&t).await, Ok(2));
}
