//! The metric types: plain atomics that can live in `static`s, so recording one is an atomic
//! add and nothing else (no lock, no allocation, no registry lookup). They are written out by
//! prometheus-client's encoders ([`EncodeMetric`]), never by hand.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// A value that goes up and down (Prometheus gauge).
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at 0.
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }

    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `d` (negative to subtract).
    pub fn add(&self, d: i64) {
        self.0.fetch_add(d, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for Gauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.get())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// A value that only goes up (Prometheus counter; the encoder adds `_total` to its name).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at 0.
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl EncodeMetric for Counter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Upper bounds of a [`Timer`]'s buckets, in seconds: Prometheus's default buckets, which
/// SwarmKit's timers (docker/go-metrics) and grpc-go's handling-time histogram use.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of durations in seconds (SwarmKit's `metrics.Timer`): one atomic count per
/// bucket and an atomic sum of nanoseconds, so an observation is two atomic adds.
#[derive(Debug)]
pub struct Timer {
    /// Observations per bucket of [`BUCKETS`], then those above the last bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the observations, in nanoseconds (584 years fit).
    sum_nanos: AtomicU64,
}

impl Default for Timer {
    fn default() -> Self {
        Timer::new()
    }
}

impl Timer {
    /// A timer with no observation.
    pub const fn new() -> Timer {
        Timer {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Records the time since `start`.
    pub fn observe_since(&self, start: Instant) {
        self.observe(start.elapsed());
    }

    /// Starts a measurement recorded when the guard is dropped (SwarmKit's `StartTimer`).
    pub fn start(&self) -> TimerGuard<'_> {
        TimerGuard {
            timer: self,
            start: Instant::now(),
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl EncodeMetric for Timer {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); BUCKETS.len() + 1];
        for (i, slot) in buckets.iter_mut().enumerate() {
            *slot = (
                BUCKETS.get(i).copied().unwrap_or(f64::INFINITY),
                self.counts[i].load(Ordering::Relaxed),
            );
        }
        // The count is the buckets' sum, so a scrape racing an observation stays consistent.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Records the time since it was made into its timer when dropped.
#[must_use = "the duration is recorded when the guard is dropped"]
#[derive(Debug)]
pub struct TimerGuard<'a> {
    timer: &'a Timer,
    start: Instant,
}

impl Drop for TimerGuard<'_> {
    fn drop(&mut self) {
        self.timer.observe_since(self.start);
    }
}

/// Gauges with one label whose values are known in advance (SwarmKit's `nodes{state}` and
/// `tasks{state}`): every value is shown, at 0 when nothing is in that state.
#[derive(Debug)]
pub struct StateGauges<const N: usize> {
    label: &'static str,
    values: [&'static str; N],
    gauges: [Gauge; N],
}

impl<const N: usize> StateGauges<N> {
    /// Gauges for each of `values` of `label`.
    pub const fn new(label: &'static str, values: [&'static str; N]) -> Self {
        StateGauges {
            label,
            values,
            gauges: [const { Gauge::new() }; N],
        }
    }

    /// The gauge of the `i`th value (`None` past the end).
    pub fn at(&self, i: usize) -> Option<&Gauge> {
        self.gauges.get(i)
    }

    /// The gauge of `value`.
    pub fn get(&self, value: &str) -> Option<&Gauge> {
        let i = self.values.iter().position(|v| *v == value)?;
        self.gauges.get(i)
    }

    /// The label values, in order.
    pub fn values(&self) -> &[&'static str; N] {
        &self.values
    }

    /// Sets every gauge to 0.
    pub fn reset(&self) {
        for g in &self.gauges {
            g.set(0);
        }
    }
}

impl<const N: usize> EncodeMetric for StateGauges<N> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, gauge) in self.values.iter().zip(&self.gauges) {
            let labels = [(self.label, *value)];
            gauge.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_counts_each_observation_in_its_bucket() {
        let t = Timer::new();
        t.observe(Duration::from_millis(3));
        t.observe(Duration::from_millis(5));
        t.observe(Duration::from_secs(20));
        assert_eq!(t.count(), 3);
        assert_eq!(t.counts[0].load(Ordering::Relaxed), 2, "<= 5 ms");
        assert_eq!(t.counts[BUCKETS.len()].load(Ordering::Relaxed), 1, "+Inf");
        assert_eq!(
            t.sum_nanos.load(Ordering::Relaxed),
            20_008_000_000,
            "sum in nanoseconds"
        );
    }
}
