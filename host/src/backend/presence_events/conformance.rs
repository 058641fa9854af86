//! The behaviour every [`PresenceOutbox`] shares, run against each
//! implementation. `a` and `b` are two handles on one backend (two hosts;
//! the memory outbox passes itself twice). Each case uses its own tenants
//! and purges them.

use std::time::Duration;

use futures_util::future::join_all;

use super::{Claimed, PresenceOutbox, Subject};
use crate::backend::BackendError;
use crate::tenant::TenantId;

/// A debounce delay.
const DELAY: Duration = Duration::from_millis(80);
/// Sleep this long for a `DELAY` to pass.
const PAST_DELAY: Duration = Duration::from_millis(130);
/// A lease.
const LEASE: Duration = Duration::from_millis(150);
/// Sleep this long for a `LEASE` to pass.
const PAST_LEASE: Duration = Duration::from_millis(220);
/// Longer than any case.
const LONG: Duration = Duration::from_secs(60);

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn user(topic: &str, user: &str) -> Subject {
    Subject::User {
        topic: topic.into(),
        user: user.into(),
    }
}

fn topic(topic: &str) -> Subject {
    Subject::Topic {
        topic: topic.into(),
    }
}

async fn claim(s: &dyn PresenceOutbox, t: &TenantId) -> Vec<Claimed> {
    s.claim(t, 100, LEASE).await.unwrap()
}

/// The claimed subjects, sorted (subjects due at the same time come in
/// no particular order).
fn subjects(c: &[Claimed]) -> Vec<Subject> {
    let mut s: Vec<Subject> = c.iter().map(|c| c.subject.clone()).collect();
    s.sort();
    s
}

/// Run every case.
pub async fn suite(a: &dyn PresenceOutbox, b: &dyn PresenceOutbox) {
    due_after_the_delay_and_claimed_once(a, b).await;
    settled_states_and_marks_during_a_claim(a, b).await;
    debounce_retry_order_and_limit(a).await;
    arguments_and_isolation(a, b).await;
    concurrent_claimers_get_each_subject_once(a, b).await;
}

/// A mark is due after its delay, claimed by one host, and claimed again
/// after the lease when nobody settled it (at least once).
async fn due_after_the_delay_and_claimed_once(a: &dyn PresenceOutbox, b: &dyn PresenceOutbox) {
    let t = tenant("pev-conf-due");
    a.mark(&t, &[user("room", "ann"), topic("room")], DELAY)
        .await
        .unwrap();
    assert_eq!(a.pending(&t).await, Ok(2));
    assert!(claim(b, &t).await.is_empty(), "not due yet");
    tokio::time::sleep(PAST_DELAY).await;
    let got = claim(b, &t).await;
    assert_eq!(subjects(&got), [user("room", "ann"), topic("room")]);
    assert!(got.iter().all(|c| !c.delivered), "never settled");
    assert!(
        claim(a, &t).await.is_empty(),
        "claimed: hidden for the lease"
    );
    tokio::time::sleep(PAST_LEASE).await;
    let again = claim(a, &t).await;
    assert_eq!(subjects(&again), subjects(&got), "the lease ran out");
    for c in &again {
        a.settle(&t, c, false).await.unwrap();
    }
    assert_eq!(a.pending(&t).await, Ok(0));
    assert_eq!(a.purge_tenant(&t).await, Ok(0));
}

/// Settled states come back with the next claim; a mark between claim and
/// settle keeps the subject queued.
async fn settled_states_and_marks_during_a_claim(a: &dyn PresenceOutbox, b: &dyn PresenceOutbox) {
    let t = tenant("pev-conf-state");
    let ann = user("room", "ann");
    a.mark(&t, std::slice::from_ref(&ann), DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let c = claim(a, &t).await.remove(0);
    a.settle(&t, &c, true).await.unwrap();
    assert_eq!(a.pending(&t).await, Ok(0), "settled: dequeued");

    b.mark(&t, std::slice::from_ref(&ann), DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let c = claim(b, &t).await.remove(0);
    assert!(c.delivered, "the settled state");
    // Marked again while claimed: the settle records the state but the
    // subject stays, due after the new mark's delay.
    a.mark(&t, std::slice::from_ref(&ann), DELAY).await.unwrap();
    b.settle(&t, &c, false).await.unwrap();
    assert_eq!(b.pending(&t).await, Ok(1), "marked again: still queued");
    tokio::time::sleep(PAST_DELAY).await;
    let c = claim(a, &t).await.remove(0);
    assert!(!c.delivered, "false was recorded");
    a.settle(&t, &c, true).await.unwrap();
    assert_eq!(a.pending(&t).await, Ok(0));

    // A host begins delivering `false` and dies before settling: the next
    // claim (after the lease) knows the state is uncertain.
    a.mark(&t, std::slice::from_ref(&ann), DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let c = claim(a, &t).await.remove(0);
    assert!(c.delivered && !c.uncertain);
    a.begin(&t, &c, false).await.unwrap();
    tokio::time::sleep(PAST_LEASE).await;
    let c = claim(b, &t).await.remove(0);
    assert!(!c.delivered && c.uncertain, "begun, never settled: {c:?}");
    b.begin(&t, &c, true).await.unwrap();
    b.settle(&t, &c, true).await.unwrap();
    b.mark(&t, std::slice::from_ref(&ann), DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let c = claim(a, &t).await.remove(0);
    assert!(c.delivered && !c.uncertain, "settled: certain again");
    a.settle(&t, &c, true).await.unwrap();
    assert_eq!(a.purge_tenant(&t).await, Ok(1), "one state left");
    assert_eq!(a.purge_tenant(&t).await, Ok(0));
}

/// Marks never postpone a pending subject; retry delays it; claims are
/// earliest first and bounded by `limit`.
async fn debounce_retry_order_and_limit(s: &dyn PresenceOutbox) {
    let t = tenant("pev-conf-order");
    s.mark(&t, &[topic("first")], DELAY).await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    s.mark(&t, &[topic("second")], DELAY).await.unwrap();
    // Marked again with a long delay: keeps its earlier due time.
    s.mark(&t, &[topic("first")], LONG).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let one = s.claim(&t, 1, LEASE).await.unwrap();
    assert_eq!(subjects(&one), [topic("first")], "earliest first, limit 1");
    assert_eq!(s.claim(&t, 0, LEASE).await, Ok(vec![]));
    let two = claim(s, &t).await;
    assert_eq!(subjects(&two), [topic("second")]);
    // A failed delivery: due again after the retry delay, not before.
    s.retry(&t, &one[0], DELAY).await.unwrap();
    assert!(claim(s, &t).await.is_empty());
    tokio::time::sleep(PAST_DELAY).await;
    assert_eq!(subjects(&claim(s, &t).await), [topic("first")]);
    // Retrying a settled subject does not bring it back.
    s.settle(&t, &two[0], true).await.unwrap();
    s.retry(&t, &two[0], DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    assert_eq!(s.pending(&t).await, Ok(1));
    assert_eq!(
        s.purge_tenant(&t).await,
        Ok(2),
        "first queued, second's state"
    );
}

fn invalid<T: std::fmt::Debug>(r: Result<T, BackendError>, what: &str) {
    assert!(matches!(r, Err(BackendError::Invalid(_))), "{what}: {r:?}");
}

/// Bad arguments are refused; equal names of two tenants are apart.
async fn arguments_and_isolation(a: &dyn PresenceOutbox, b: &dyn PresenceOutbox) {
    let t = tenant("pev-conf-args");
    invalid(a.mark(&t, &[topic("")], DELAY).await, "empty topic");
    invalid(a.mark(&t, &[topic("a\nb")], DELAY).await, "newline");
    invalid(a.mark(&t, &[user("t", "")], DELAY).await, "empty user");
    invalid(
        a.mark(&t, &[topic("t")], Duration::ZERO).await,
        "zero delay",
    );
    invalid(a.claim(&t, 1, Duration::ZERO).await, "zero lease");
    assert!(matches!(
        a.mark(&t, &[topic(&"x".repeat(257))], DELAY).await,
        Err(BackendError::TooLarge(_))
    ));
    assert_eq!(a.pending(&t).await, Ok(0), "nothing marked");
    a.mark(&t, &[], DELAY).await.unwrap();

    let other = tenant("pev-conf-args-other");
    a.mark(&t, &[user("room", "ann")], DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    assert!(claim(b, &other).await.is_empty(), "other tenant: nothing");
    let c = claim(b, &t).await.remove(0);
    b.settle(&t, &c, true).await.unwrap();
    b.mark(&other, &[user("room", "ann")], DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let c = claim(a, &other).await.remove(0);
    assert!(!c.delivered, "t's state is not other's");
    a.settle(&other, &c, false).await.unwrap();
    assert_eq!(a.purge_tenant(&other).await, Ok(0));
    assert_eq!(a.purge_tenant(&t).await, Ok(1));
}

/// Eight claimers on two hosts share 50 due subjects: each once.
async fn concurrent_claimers_get_each_subject_once(a: &dyn PresenceOutbox, b: &dyn PresenceOutbox) {
    let t = tenant("pev-conf-parallel");
    let all: Vec<Subject> = (0..50).map(|i| topic(&format!("t{i}"))).collect();
    a.mark(&t, &all, DELAY).await.unwrap();
    tokio::time::sleep(PAST_DELAY).await;
    let runs = join_all((0..8).map(|i| {
        let store = if i % 2 == 0 { a } else { b };
        let t = &t;
        async move {
            let mut got = Vec::new();
            loop {
                let batch = store.claim(t, 3, LONG).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                got.extend(batch.into_iter().map(|c| c.subject));
            }
            got
        }
    }))
    .await;
    let mut got: Vec<Subject> = runs.into_iter().flatten().collect();
    got.sort();
    let mut want = all.clone();
    want.sort();
    assert_eq!(got, want, "every subject exactly once");
    assert_eq!(a.purge_tenant(&t).await, Ok(50));
}
