//! Bounded label values: which tenants get a label of their own, how topics
//! (and group names) become labels, and the hard cap on series per metric.
//!
//! Tenants and topics are chosen by tenants and their clients, so nothing
//! they send may grow the metrics without bound:
//!
//! - **tenants**: the first [`MetricsSettings::max_tenants`] tenants seen
//!   get their id as label; every later one is `other`;
//! - **topics**: the first `map_topic` rule whose prefix matches names the
//!   label; without one, a topic with a `:` becomes its first segment and
//!   `:*` (`room:42` → `room:*`), and a topic without one stays as it is;
//! - **series**: a metric holds at most [`MetricsSettings::max_series`]
//!   label sets; an observation that would add one more is dropped and
//!   counted in `{prefix}metrics_series_dropped_total`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};

use parking_lot::RwLock;
use serde::Deserialize;

use crate::tenant::TenantId;

/// The label of tenants past [`MetricsSettings::max_tenants`] (and of
/// topics a rule maps to it).
pub const OTHER: &str = "other";

/// One `[[metrics.map_topic]]` rule: topics starting with `prefix` are
/// labelled `label`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// The start of the topics this rule covers.
    pub prefix: String,
    /// Their label.
    pub label: String,
}

/// How metrics are named and bounded (the `[metrics]` table).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Start of every metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*` or empty).
    /// Default `tenantry_`.
    pub prefix: String,
    /// Tenants with a label of their own; later ones are `other`.
    /// Default 1000.
    pub max_tenants: usize,
    /// Label sets one metric may hold. Default 10000.
    pub max_series: usize,
    /// Topic (and group name) labels, first match wins.
    pub map_topic: Vec<TopicRule>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            prefix: "tenantry_".into(),
            max_tenants: 1000,
            max_series: 10_000,
            map_topic: Vec::new(),
        }
    }
}

impl MetricsSettings {
    /// `Err` with the reason if a value cannot be used.
    pub fn validate(&self) -> Result<(), String> {
        let p = self.prefix.as_bytes();
        let name_ok = p.iter().enumerate().all(|(i, c)| {
            c.is_ascii_alphabetic() || *c == b'_' || *c == b':' || (i > 0 && c.is_ascii_digit())
        });
        if !name_ok {
            return Err(format!(
                "metrics.prefix {:?} must match [a-zA-Z_:][a-zA-Z0-9_:]*",
                self.prefix
            ));
        }
        if self.max_series == 0 {
            return Err("metrics.max_series must be greater than 0".into());
        }
        if let Some(r) = self.map_topic.iter().find(|r| r.label.is_empty()) {
            return Err(format!(
                "metrics.map_topic rule for {:?} needs a label",
                r.prefix
            ));
        }
        Ok(())
    }
}

/// Which tenants have a label of their own (see the module docs).
pub struct TenantLabels {
    max: usize,
    admitted: RwLock<HashSet<TenantId>>,
}

impl TenantLabels {
    /// At most `max` tenants labelled by id.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            admitted: RwLock::new(HashSet::new()),
        }
    }

    /// The label of `tenant`: its id, or [`OTHER`] once `max` others have
    /// theirs.
    pub fn label<'a>(&self, tenant: &'a TenantId) -> &'a str {
        if self.admitted.read().contains(tenant) {
            return tenant.as_str();
        }
        let mut admitted = self.admitted.write();
        if admitted.contains(tenant) || admitted.len() < self.max {
            admitted.insert(tenant.clone());
            tenant.as_str()
        } else {
            OTHER
        }
    }
}

/// Topic and group-name labels (see the module docs).
pub struct TopicMap {
    rules: Vec<TopicRule>,
}

impl TopicMap {
    /// The map of `rules` (first match wins) over the default rule.
    pub fn new(rules: Vec<TopicRule>) -> Self {
        Self { rules }
    }

    /// The label of `topic` (see the module docs).
    pub fn label<'a>(&'a self, topic: &'a str) -> Cow<'a, str> {
        if let Some(rule) = self.rules.iter().find(|r| topic.starts_with(&r.prefix)) {
            return Cow::Borrowed(&rule.label);
        }
        match topic.split_once(':') {
            Some((first, _)) => Cow::Owned(format!("{first}:*")),
            None => Cow::Borrowed(topic),
        }
    }
}

/// The hard cap on label sets per metric (see the module docs).
pub struct SeriesBudget {
    max: usize,
    hasher: std::collections::hash_map::RandomState,
    /// Hashes of `(metric, labels)` admitted, and the count per metric.
    seen: RwLock<(HashSet<u64>, std::collections::HashMap<&'static str, usize>)>,
}

impl SeriesBudget {
    /// At most `max` label sets per metric.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            hasher: Default::default(),
            seen: RwLock::new(Default::default()),
        }
    }

    /// Whether `metric` may have a series for `labels`: `true` if it has one
    /// already or is below the cap (then it is counted).
    pub fn admit(&self, metric: &'static str, labels: &[&str]) -> bool {
        let mut h = self.hasher.build_hasher();
        metric.hash(&mut h);
        labels.hash(&mut h);
        let key = h.finish();
        if self.seen.read().0.contains(&key) {
            return true;
        }
        let mut seen = self.seen.write();
        if seen.0.contains(&key) {
            return true;
        }
        let count = seen.1.entry(metric).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        seen.0.insert(key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn tenants_past_the_cap_are_other() {
        let labels = TenantLabels::new(2);
        let (a, b, c) = (tid("a"), tid("b"), tid("c"));
        assert_eq!(labels.label(&a), "a");
        assert_eq!(labels.label(&b), "b");
        assert_eq!(labels.label(&c), OTHER);
        assert_eq!(labels.label(&a), "a", "admitted tenants keep their label");
    }

    #[test]
    fn topics_map_through_rules_then_the_first_segment() {
        let map = TopicMap::new(vec![
            TopicRule {
                prefix: "room:vip".into(),
                label: "vip".into(),
            },
            TopicRule {
                prefix: "user:".into(),
                label: OTHER.into(),
            },
        ]);
        assert_eq!(map.label("room:vip-1"), "vip");
        assert_eq!(map.label("user:42"), OTHER);
        assert_eq!(map.label("room:42"), "room:*");
        assert_eq!(map.label("a:b:c"), "a:*");
        assert_eq!(map.label("news"), "news");
    }

    #[test]
    fn series_past_the_cap_are_refused() {
        let budget = SeriesBudget::new(2);
        assert!(budget.admit("m", &["a"]));
        assert!(budget.admit("m", &["b"]));
        assert!(!budget.admit("m", &["c"]));
        assert!(budget.admit("m", &["a"]), "existing series go on");
        assert!(budget.admit("n", &["c"]), "the cap is per metric");
    }

    #[test]
    fn settings_are_checked() {
        assert!(MetricsSettings::default().validate().is_ok());
        let bad = |f: fn(&mut MetricsSettings)| {
            let mut s = MetricsSettings::default();
            f(&mut s);
            s.validate().is_err()
        };
        assert!(bad(|s| s.prefix = "9x".into()));
        assert!(bad(|s| s.prefix = "a-b".into()));
        assert!(bad(|s| s.max_series = 0));
        assert!(bad(|s| s.map_topic = vec![TopicRule {
            prefix: "a".into(),
            label: String::new(),
        }]));
        let ok = MetricsSettings {
            prefix: String::new(),
            ..MetricsSettings::default()
        };
        assert!(ok.validate().is_ok());
    }
}
