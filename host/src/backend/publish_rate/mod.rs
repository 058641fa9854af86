//! Publish rates per topic, merged across the fleet (the seeds'
//! `createPublishRateAggregator`): which topics of a tenant publish the
//! most, in messages and bytes per second, summed over every host.
//!
//! Each host samples its own publishes ([`PublishRates::record`], called
//! for every event a plugin publishes) and every
//! [`PublishRates::INTERVAL`] reports its top [`TOP_N`] topics per tenant
//! to a [`RateBoard`]; [`RateBoard::merged`] sums the reports of every host
//! that reported within [`STALE_AFTER`] and ranks the topics. The memory
//! board holds this host's reports only; the Redis board
//! (`{ns}:t:{<tenant>}:rates`, a hash of host → report) holds the fleet's.
//! The operator reads the result at `GET /admin/tenants/{id}/publish-rates`.

pub mod memory;
pub mod redis;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::backend::BackendError;
use crate::tenant::TenantId;

/// Topics a host reports per tenant and the board returns (the seeds' `topN`).
pub const TOP_N: usize = 20;
/// A host's report older than this no longer counts (the seeds' `staleAfter`).
pub const STALE_AFTER: Duration = Duration::from_secs(12);
/// Topics sampled per tenant per interval; publishes to further topics are
/// counted under [`OTHER_TOPICS`].
pub const MAX_SAMPLED_TOPICS: usize = 1000;
/// The pseudo-topic collecting publishes beyond [`MAX_SAMPLED_TOPICS`].
pub const OTHER_TOPICS: &str = "(other topics)";

/// One topic's rate as one host measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicRate {
    /// The topic.
    pub topic: String,
    /// Events per second.
    pub messages_per_sec: f64,
    /// Bytes of event data per second.
    pub bytes_per_sec: f64,
}

/// One topic's rate summed over the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MergedRate {
    /// The topic.
    pub topic: String,
    /// Events per second, all hosts.
    pub messages_per_sec: f64,
    /// Bytes of event data per second, all hosts.
    pub bytes_per_sec: f64,
    /// Hosts that published to it.
    pub contributing_instances: u32,
}

/// Where hosts report their rates and the fleet's are read.
#[async_trait]
pub trait RateBoard: Send + Sync + 'static {
    /// Replace `instance`'s report for `tenant` with `slice`.
    async fn report(
        &self,
        tenant: &TenantId,
        instance: &str,
        slice: &[TopicRate],
    ) -> Result<(), BackendError>;
    /// The fresh reports of `tenant` merged, busiest topic first, at most [`TOP_N`].
    async fn merged(&self, tenant: &TenantId) -> Result<Vec<MergedRate>, BackendError>;
    /// Forget `tenant`'s reports; returns how many were removed.
    async fn purge_tenant(&self, tenant: &TenantId) -> Result<u64, BackendError>;
}

/// Sum per topic, rank by messages then bytes, keep [`TOP_N`]. Shared by
/// every board.
pub fn merge<'a>(reports: impl IntoIterator<Item = &'a [TopicRate]>) -> Vec<MergedRate> {
    let mut by_topic: BTreeMap<&str, MergedRate> = BTreeMap::new();
    for slice in reports {
        for r in slice {
            let m = by_topic.entry(&r.topic).or_insert_with(|| MergedRate {
                topic: r.topic.clone(),
                messages_per_sec: 0.0,
                bytes_per_sec: 0.0,
                contributing_instances: 0,
            });
            m.messages_per_sec += r.messages_per_sec;
            m.bytes_per_sec += r.bytes_per_sec;
            m.contributing_instances += 1;
        }
    }
    let mut merged: Vec<MergedRate> = by_topic.into_values().collect();
    merged.sort_by(|a, b| {
        b.messages_per_sec
            .total_cmp(&a.messages_per_sec)
            .then(b.bytes_per_sec.total_cmp(&a.bytes_per_sec))
            .then(a.topic.cmp(&b.topic))
    });
    merged.truncate(TOP_N);
    merged
}

/// Shards of the sampler's tenant table.
const SHARDS: usize = 16;

/// Per topic: events and bytes in the current interval.
type Counts = HashMap<Box<str>, (u64, u64)>;

/// This host's publish sampler (see the module docs). Share it as
/// `Arc<PublishRates>`.
pub struct PublishRates {
    board: Arc<dyn RateBoard>,
    instance: String,
    shards: Box<[Mutex<HashMap<TenantId, Counts>>]>,
    hasher: std::collections::hash_map::RandomState,
    /// Tenants reported last interval (they get one report after going quiet).
    reported: Mutex<Vec<TenantId>>,
}

impl PublishRates {
    /// How often a host reports (the seeds' `publishInterval`).
    pub const INTERVAL: Duration = Duration::from_secs(5);

    /// A sampler reporting to `board` as a fresh instance.
    pub fn new(board: Arc<dyn RateBoard>) -> Self {
        Self {
            board,
            instance: uuid::Uuid::new_v4().to_string(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            reported: Mutex::new(Vec::new()),
        }
    }

    /// The board the rates are reported to.
    pub fn board(&self) -> &Arc<dyn RateBoard> {
        &self.board
    }

    /// Count one published event of `bytes` bytes on `topic`. Never blocks
    /// for long: one short lock of the tenant's shard.
    pub fn record(&self, tenant: &TenantId, topic: &str, bytes: usize) {
        let shard = &self.shards[(self.hasher.hash_one(tenant.as_str()) as usize) & (SHARDS - 1)];
        let mut shard = shard.lock();
        let counts = match shard.get_mut(tenant) {
            Some(c) => c,
            None => shard.entry(tenant.clone()).or_default(),
        };
        let key: &str = if counts.contains_key(topic) || counts.len() < MAX_SAMPLED_TOPICS {
            topic
        } else {
            OTHER_TOPICS
        };
        let entry = match counts.get_mut(key) {
            Some(e) => e,
            None => counts.entry(Box::from(key)).or_insert((0, 0)),
        };
        entry.0 += 1;
        entry.1 += bytes as u64;
    }

    /// Take the counts of the interval that lasted `elapsed` and report
    /// each active (or just quieted) tenant's top topics.
    pub async fn report(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(0.001);
        let mut slices: Vec<(TenantId, Vec<TopicRate>)> = Vec::new();
        for shard in self.shards.iter() {
            for (tenant, counts) in std::mem::take(&mut *shard.lock()) {
                let mut slice: Vec<TopicRate> = counts
                    .into_iter()
                    .map(|(topic, (n, b))| TopicRate {
                        topic: topic.into(),
                        messages_per_sec: n as f64 / secs,
                        bytes_per_sec: b as f64 / secs,
                    })
                    .collect();
                slice.sort_by(|a, b| b.messages_per_sec.total_cmp(&a.messages_per_sec));
                slice.truncate(TOP_N);
                slices.push((tenant, slice));
            }
        }
        let now: Vec<TenantId> = slices.iter().map(|(t, _)| t.clone()).collect();
        let quieted: Vec<TenantId> = std::mem::replace(&mut *self.reported.lock(), now)
            .into_iter()
            .filter(|t| !slices.iter().any(|(s, _)| s == t))
            .collect();
        slices.extend(quieted.into_iter().map(|t| (t, Vec::new())));
        for (tenant, slice) in slices {
            if let Err(e) = self.board.report(&tenant, &self.instance, &slice).await {
                tracing::debug!(%tenant, error = %e, "publish rates not reported");
            }
        }
    }

    /// Report every [`PublishRates::INTERVAL`] until the task is aborted.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let rates = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Self::INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut last = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let now = tokio::time::Instant::now();
                rates.report(now - last).await;
                last = now;
            }
        })
    }
}

/// The behaviour every board shows; run by the memory and the Redis board.
#[cfg(test)]
pub(crate) async fn conformance(board: &dyn RateBoard) {
    let a = TenantId::parse("conformance-rates-a").unwrap();
    let b = TenantId::parse("conformance-rates-b").unwrap();
    let rate = |topic: &str, m: f64| TopicRate {
        topic: topic.into(),
        messages_per_sec: m,
        bytes_per_sec: m * 10.0,
    };
    assert_eq!(board.merged(&a).await.unwrap(), []);
    board
        .report(&a, "host-1", &[rate("chat", 10.0), rate("feed", 1.0)])
        .await
        .unwrap();
    board
        .report(&a, "host-2", &[rate("chat", 5.0), rate("news", 7.0)])
        .await
        .unwrap();
    board
        .report(&b, "host-1", &[rate("chat", 99.0)])
        .await
        .unwrap();
    let m = board.merged(&a).await.unwrap();
    let view: Vec<(&str, f64, u32)> = m
        .iter()
        .map(|r| {
            (
                r.topic.as_str(),
                r.messages_per_sec,
                r.contributing_instances,
            )
        })
        .collect();
    assert_eq!(
        view,
        [("chat", 15.0, 2), ("news", 7.0, 1), ("feed", 1.0, 1)]
    );
    assert_eq!(m[0].bytes_per_sec, 150.0);
    // A new report replaces the host's previous one.
    board.report(&a, "host-2", &[]).await.unwrap();
    let m = board.merged(&a).await.unwrap();
    assert_eq!(m[0].messages_per_sec, 10.0);
    assert_eq!(m.len(), 2);
    assert_eq!(
        board.merged(&b).await.unwrap()[0].messages_per_sec,
        99.0,
        "b apart"
    );
    assert!(board.purge_tenant(&a).await.unwrap() >= 1);
    assert_eq!(board.merged(&a).await.unwrap(), []);
    board.purge_tenant(&b).await.unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_sampler_reports_rates_and_bounds_topics() {
        let board = Arc::new(memory::MemoryRateBoard::new());
        let rates = PublishRates::new(board.clone());
        let t = TenantId::parse("acme").unwrap();
        for _ in 0..50 {
            rates.record(&t, "hot", 100);
        }
        rates.record(&t, "cold", 10);
        for i in 0..(MAX_SAMPLED_TOPICS + 5) {
            rates.record(&t, &format!("t{i}"), 1);
        }
        rates.report(Duration::from_secs(5)).await;
        let m = board.merged(&t).await.unwrap();
        assert_eq!(m[0].topic, "hot");
        assert_eq!(m[0].messages_per_sec, 10.0);
        assert_eq!(m[0].bytes_per_sec, 1000.0);
        assert_eq!(m.len(), TOP_N);
        // Quiet now: one empty report clears it.
        rates.report(Duration::from_secs(5)).await;
        assert_eq!(board.merged(&t).await.unwrap(), []);
    }
}
