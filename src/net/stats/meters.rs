//! What a role counts with, and how its counts are read out.
//!
//! [`Counter`], [`Gauge`] and [`Histogram`] are relaxed atomics: recording is one
//! `fetch_add` (two for a histogram: its bucket and its sum), with no lock and no
//! allocation, so they can sit on a per-message path. Nothing reads them there; they are
//! read when someone asks ([`crate::metrics::render`], for the admin listener's
//! `GET /metrics`), through [`RoleMetrics::collect`], which writes each series into a
//! [`Collect`] — a sink this module only describes, so plumbing knows no exposition
//! format and no role.
//!
//! A role's counters are one object of its own (`ChatMetrics`, `ProxyMetrics`,
//! `HttpMetrics`) held by the service's [`Stats`](super::Stats)
//! ([`Stats::role_metrics`](super::Stats::role_metrics)), so they live as long as the
//! service, across restarts of the role.

use std::any::Any;
use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.0.fetch_add(n, Relaxed);
        }
    }

    /// The count now.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A level that goes up and down (users, sessions, rooms).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds `n` (negative to lower it).
    pub fn add(&self, n: i64) {
        if n != 0 {
            self.0.fetch_add(n, Relaxed);
        }
    }

    /// The level now.
    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
}

/// Durations in fixed buckets, as Prometheus histograms count them: how many were at
/// most each bound, and their sum.
///
/// One counter per bucket (not cumulative: an observation adds to one bucket only, and
/// the reader adds them up) and the sum in whole microseconds, so recording is two
/// relaxed adds; the count is the buckets' total, so it always agrees with them. A sum in
/// microseconds wraps after some 584,000 years of observed time.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of every bucket but the last (`+Inf`), ascending.
    bounds: &'static [Duration],
    /// One more than `bounds`: the last counts what is above every bound.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending; `+Inf` is added).
    pub fn new(bounds: &'static [Duration]) -> Self {
        debug_assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "bounds not ascending"
        );
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Counts one duration.
    pub fn observe(&self, d: Duration) {
        // The first bucket whose bound is at least `d` (Prometheus's `le`).
        let i = self.bounds.partition_point(|b| *b < d);
        self.buckets[i].fetch_add(1, Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// The counts now: each bucket's own count (not cumulative) with its upper bound in
    /// seconds (the last is `+Inf`), and the sum in seconds.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = self
                    .bounds
                    .get(i)
                    .map_or(f64::INFINITY, Duration::as_secs_f64);
                (bound, n.load(Relaxed))
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum_us.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations in this bucket alone)`, ascending; the last
    /// bound is `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
}

impl HistogramSnapshot {
    /// How many observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum()
    }
}

/// What kind of series a family holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric family: its name, what it means, its kind.
#[derive(Debug)]
pub struct Family {
    /// The family's name as the exposition's `# TYPE` line gives it: a counter's samples
    /// add `_total`, a histogram's `_bucket`, `_sum` and `_count`. With `seconds`, the
    /// name gets `_seconds` after it (and a `# UNIT` line).
    pub name: &'static str,
    /// One sentence for `# HELP`: no backslash, quote or newline (it is written as is).
    pub help: &'static str,
    pub kind: Kind,
    /// Measured in seconds.
    pub seconds: bool,
}

/// A value for one series of a [`Family`] (the kind must match the family's).
#[derive(Debug)]
pub enum Value {
    Counter(u64),
    Gauge(i64),
    /// A gauge that is not a whole number (a start time, in seconds).
    GaugeFloat(f64),
    Histogram(HistogramSnapshot),
}

/// Where series are written when they are read out. The reader adds the labels every
/// series of a service carries (`service`, `role`); `labels` are the series' own.
pub trait Collect {
    fn series(&mut self, family: &'static Family, labels: &[(&'static str, &str)], value: Value);
}

/// A role's own counters, held by its service's [`Stats`](super::Stats).
pub trait RoleMetrics: Any + Send + Sync + Debug {
    /// Writes every series this role keeps.
    fn collect(&self, out: &mut dyn Collect);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[Duration] = &[Duration::from_millis(1), Duration::from_millis(10)];

    #[test]
    fn a_histogram_counts_each_duration_in_the_first_bucket_that_holds_it() {
        let h = Histogram::new(BOUNDS);
        for ms in [0, 1, 2, 10, 11, 5000] {
            h.observe(Duration::from_millis(ms));
        }
        h.observe(Duration::from_micros(1001));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 3), (f64::INFINITY, 2)]);
        assert_eq!(s.count(), 7);
        assert!((s.sum - 5.025001).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn counters_and_gauges_add() {
        let c = Counter::default();
        c.inc();
        c.add(41);
        c.add(0);
        assert_eq!(c.get(), 42);
        let g = Gauge::default();
        g.add(3);
        g.add(-5);
        assert_eq!(g.get(), -2);
    }
}
