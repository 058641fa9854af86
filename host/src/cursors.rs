//! Live cursors on the wire (the seeds' `createCursor`): where each
//! connection's pointer is on a topic, relayed to everyone looking at it,
//! fleet-wide.
//!
//! A connection subscribed to a topic sends
//! `{"type":"cursor","topic":T,"data":{…}}` (or `"position"` instead of
//! `"data"`) as its pointer moves. Per connection and topic the host sends
//! at most one update per [`THROTTLE`] — the first at once, the latest of
//! the rest when the window ends (so the final position always arrives) —
//! as `update` `{"key":<connection id>,"user":<user id or null>,"data":…}`
//! on `__cursor:{T}` through the bus (every host's attached connections
//! get it), and keeps it in the [`CursorStore`] for [`TTL`] (memory, or
//! Redis for a fleet).
//!
//! `{"type":"cursor-snapshot","topic":T}` (the seeds' client sends it on
//! every open) attaches the connection: it is subscribed to `__cursor:{T}`
//! and gets `snapshot` `[entries]`, every live cursor of the topic. When a
//! connection unsubscribes from T or closes, its cursor goes: `remove`
//! `{"key":…}`. Both frames need a subscription to T (its gate decided who
//! may see the topic); otherwise they are ignored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backend::cursor::{CursorStore, Throttle, Throttled};
use crate::backend::{BackendError, Bus};
use crate::metrics::{self, CursorEvent};
use crate::tenant::TenantId;

/// The reserved topic prefix cursor frames travel on: `__cursor:{topic}`.
pub const CURSOR_TOPIC_PREFIX: &str = "__cursor:";
/// One update per connection and topic per this long (the seeds' `throttle`).
pub const THROTTLE: Duration = crate::backend::cursor::DEFAULT_THROTTLE;
/// A cursor not moved for this long is gone from snapshots.
pub const TTL: Duration = crate::backend::cursor::DEFAULT_TTL;
/// Cursors throttled at once on this host; updates of further ones are dropped.
pub const MAX_THROTTLED: usize = 100_000;

/// `__cursor:{topic}`.
pub fn channel(topic: &str) -> String {
    format!("{CURSOR_TOPIC_PREFIX}{topic}")
}

/// Throttle key: tenant, topic, connection.
type Key = (TenantId, String, String);

/// This host's cursors. Share it as `Arc<Cursors>`.
pub struct Cursors {
    store: Arc<dyn CursorStore>,
    bus: Arc<dyn Bus>,
    throttle: Mutex<Throttle<Key, String>>,
    /// Topics each connection has a cursor on.
    owned: Mutex<HashMap<String, (TenantId, HashSet<String>)>>,
    /// Wakes the flusher when a trailing send is scheduled.
    wake: Notify,
    me: Weak<Cursors>,
}

impl Cursors {
    /// Cursors kept in `store`, relayed through `bus`.
    pub fn new(store: Arc<dyn CursorStore>, bus: Arc<dyn Bus>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            store,
            bus,
            throttle: Mutex::new(Throttle::new(THROTTLE, MAX_THROTTLED)),
            owned: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            me: me.clone(),
        })
    }

    /// Connection `conn` (of `user`) moved its cursor on `topic` to `data`
    /// (JSON). Sent now, later (throttled) or, if this host throttles too
    /// many cursors, not at all.
    pub async fn update(
        &self,
        tenant: &TenantId,
        conn: &str,
        user: Option<&str>,
        topic: &str,
        data: &str,
    ) {
        let entry = serde_json::json!({
            "key": conn,
            "user": user,
            "data": serde_json::value::RawValue::from_string(data.to_owned()).ok(),
        })
        .to_string();
        self.owned
            .lock()
            .entry(conn.to_owned())
            .or_insert_with(|| (tenant.clone(), HashSet::new()))
            .1
            .insert(topic.to_owned());
        let key = (tenant.clone(), topic.to_owned(), conn.to_owned());
        let decided = self.throttle.lock().update(key, entry, Instant::now());
        metrics::cursor(tenant, topic, CursorEvent::Update);
        match decided {
            Throttled::Send(entry) => self.send(tenant, topic, conn, &entry).await,
            Throttled::Deferred(_) => {
                metrics::cursor(tenant, topic, CursorEvent::Throttled);
                self.wake.notify_one();
            }
            Throttled::Dropped => {}
        }
    }

    async fn send(&self, tenant: &TenantId, topic: &str, conn: &str, entry: &str) {
        metrics::cursor(tenant, topic, CursorEvent::Broadcast);
        if let Err(e) = self.store.update(tenant, topic, conn, entry, TTL).await {
            tracing::debug!(%tenant, topic, error = %e, "cursor not stored");
        }
        if let Err(e) = self
            .bus
            .publish(tenant, &channel(topic), "update", entry)
            .await
        {
            tracing::debug!(%tenant, topic, error = %e, "cursor update not published");
        }
    }

    /// The live cursors of `topic` as a JSON array (the `snapshot` data).
    pub async fn snapshot(&self, tenant: &TenantId, topic: &str) -> Result<String, BackendError> {
        let entries = self.store.snapshot(tenant, topic).await?;
        let mut out = String::from("[");
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&e.data);
        }
        out.push(']');
        Ok(out)
    }

    /// Remove `conn`'s cursor from `topic`, telling the topic's viewers.
    pub async fn remove(&self, conn: &str, topic: &str) {
        let tenant = {
            let mut owned = self.owned.lock();
            let Some((tenant, topics)) = owned.get_mut(conn) else {
                return;
            };
            if !topics.remove(topic) {
                return;
            }
            let tenant = tenant.clone();
            if topics.is_empty() {
                owned.remove(conn);
            }
            tenant
        };
        self.throttle
            .lock()
            .remove(&(tenant.clone(), topic.to_owned(), conn.to_owned()));
        let _ = self.store.remove(&tenant, topic, conn).await;
        let data = serde_json::json!({ "key": conn }).to_string();
        if let Err(e) = self
            .bus
            .publish(&tenant, &channel(topic), "remove", &data)
            .await
        {
            tracing::debug!(%tenant, topic, error = %e, "cursor removal not published");
        }
    }

    /// Remove every cursor of `conn` (it closed).
    pub async fn remove_all(&self, conn: &str) {
        let topics: Vec<String> = self
            .owned
            .lock()
            .get(conn)
            .map(|(_, t)| t.iter().cloned().collect())
            .unwrap_or_default();
        for topic in topics {
            self.remove(conn, &topic).await;
        }
    }

    /// Send the trailing updates as they fall due, until the task is aborted.
    pub fn spawn_flusher(&self) -> Option<JoinHandle<()>> {
        let me = self.me.upgrade()?;
        Some(tokio::spawn(async move {
            loop {
                let due = me.throttle.lock().next_due();
                match due {
                    Some(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = me.wake.notified() => continue,
                        }
                    }
                    None => me.wake.notified().await,
                }
                let ready = me.throttle.lock().take_due(Instant::now());
                for ((tenant, topic, conn), entry) in ready {
                    me.send(&tenant, &topic, &conn, &entry).await;
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cursor::memory::MemoryCursors;
    use crate::backend::memory::MemoryBus;
    use crate::hub::{Hub, Outbound};
    use serde_json::{Value, json};

    fn frame(o: Outbound) -> Value {
        let Outbound::Text(t) = o;
        serde_json::from_str(t.as_str()).unwrap()
    }

    #[tokio::test]
    async fn updates_are_throttled_with_the_last_position_kept() {
        let hub = Hub::new();
        let bus = Arc::new(MemoryBus::new(Arc::clone(&hub)));
        let cursors = Cursors::new(Arc::new(MemoryCursors::new()), bus);
        let _flusher = cursors.spawn_flusher();
        let t = TenantId::parse("acme").unwrap();
        let (tx, mut rx) = crate::outbound::queue(64);
        let viewer = hub.connect(t.clone(), tx, 10);
        viewer.subscribe(&channel("canvas")).unwrap();
        for x in 1..=10 {
            cursors
                .update(&t, "c1", Some("ann"), "canvas", &format!("{{\"x\":{x}}}"))
                .await;
        }
        let first = frame(rx.recv().await.unwrap());
        assert_eq!(first["event"], "update");
        assert_eq!(
            first["data"],
            json!({"key":"c1","user":"ann","data":{"x":1}})
        );
        let last = frame(rx.recv().await.unwrap());
        assert_eq!(
            last["data"]["data"],
            json!({"x":10}),
            "trailing edge: the latest"
        );
        tokio::time::sleep(THROTTLE * 3).await;
        assert!(
            rx.try_recv().is_err(),
            "two sends for ten moves in one window"
        );
        assert_eq!(
            cursors.snapshot(&t, "canvas").await.unwrap(),
            r#"[{"data":{"x":10},"key":"c1","user":"ann"}]"#
        );
        cursors.remove_all("c1").await;
        let gone = frame(rx.recv().await.unwrap());
        assert_eq!(
            (gone["event"].as_str(), &gone["data"]),
            (Some("remove"), &json!({"key":"c1"}))
        );
        assert_eq!(cursors.snapshot(&t, "canvas").await.unwrap(), "[]");
    }
}
