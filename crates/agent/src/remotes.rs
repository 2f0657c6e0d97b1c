//! The managers an agent knows, with weights (SwarmKit's remotes package): each observation moves
//! a manager's weight halfway towards the observed value (clipped to ±256), and a manager is
//! picked at random in proportion to its weight (negative counts as zero, plus a tiny bias so
//! that every manager can still be picked). A failed session observes the negative default
//! weight, so the next pick is very likely another manager; each session message observes the
//! managers it lists at the weight the dispatcher gives and drops the ones it does not list.

use std::collections::{BTreeMap, BTreeSet};

/// The weight a manager starts with and the size of a failure's observation.
pub const DEFAULT_WEIGHT: i32 = 10;
/// How far one observation moves a weight towards the observed value.
const SMOOTHING: f64 = 0.5;
/// Weights stay within ±this.
const WEIGHT_MAX: f64 = 256.0;
/// Added to every weight when picking, so that a manager at zero can still be picked.
const BIAS: f64 = 0.001;

/// Managers by remote API address, with their weights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Remotes {
    weights: BTreeMap<String, i32>,
}

impl Remotes {
    /// `addrs`, each at the default weight.
    pub fn new<I: IntoIterator<Item = String>>(addrs: I) -> Remotes {
        let mut r = Remotes::default();
        for a in addrs {
            r.observe(&a, DEFAULT_WEIGHT);
        }
        r
    }

    /// Whether no manager is known.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The known addresses and their weights.
    pub fn weights(&self) -> &BTreeMap<String, i32> {
        &self.weights
    }

    /// Moves `addr`'s weight towards `weight` (an unknown address starts from zero).
    pub fn observe(&mut self, addr: &str, weight: i32) {
        let w0 = f64::from(self.weights.get(addr).copied().unwrap_or(0));
        let w1 = f64::from(weight).clamp(-WEIGHT_MAX, WEIGHT_MAX);
        let wn = (SMOOTHING * w1 + (1.0 - SMOOTHING) * w0).clamp(-WEIGHT_MAX, WEIGHT_MAX);
        // Within ±256, so the cast is exact.
        self.weights.insert(addr.to_string(), wn.ceil() as i32);
    }

    /// Like [`Remotes::observe`], for a known address only.
    pub fn observe_if_exists(&mut self, addr: &str, weight: i32) {
        if self.weights.contains_key(addr) {
            self.observe(addr, weight);
        }
    }

    /// Keeps only the addresses `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.weights.retain(|a, _| keep(a));
    }

    /// Picks a manager not in `exclude` with probability proportional to its weight; `r` is
    /// uniform in [0, 1).
    pub fn select_with(&self, exclude: &BTreeSet<String>, r: f64) -> Option<String> {
        let mut cum = 0.0;
        let cdf: Vec<(f64, &String)> = self
            .weights
            .iter()
            .filter(|(a, _)| !exclude.contains(*a))
            .map(|(a, &w)| {
                cum += f64::from(w.max(0)) + BIAS;
                (cum, a)
            })
            .collect();
        let target = cum * r;
        cdf.iter()
            .find(|(c, _)| *c > target)
            .or(cdf.last())
            .map(|(_, a)| (*a).clone())
    }

    /// Picks a manager not in `exclude` at random by weight.
    pub fn select_excluding(&self, exclude: &BTreeSet<String>) -> Option<String> {
        self.select_with(exclude, rand::random::<f64>())
    }

    /// Picks a manager at random by weight.
    pub fn select(&self) -> Option<String> {
        self.select_excluding(&BTreeSet::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_smooth_and_clip() {
        let mut r = Remotes::new(["a:1".to_string()]);
        // From 0 halfway to 10.
        assert_eq!(r.weights()["a:1"], 5);
        r.observe("a:1", 10);
        assert_eq!(r.weights()["a:1"], 8); // ceil(7.5)
        r.observe("a:1", -DEFAULT_WEIGHT);
        assert_eq!(r.weights()["a:1"], -1);
        r.observe("a:1", 10_000);
        assert_eq!(r.weights()["a:1"], 128);
        r.observe_if_exists("b:1", 10);
        assert!(!r.weights().contains_key("b:1"));
    }

    #[test]
    fn a_failed_manager_is_rarely_picked_but_never_unpickable() {
        let none = BTreeSet::new();
        let mut r = Remotes::new(["a:1".to_string(), "b:1".to_string()]);
        for _ in 0..4 {
            r.observe("a:1", DEFAULT_WEIGHT);
            r.observe("b:1", DEFAULT_WEIGHT);
        }
        r.observe_if_exists("a:1", -DEFAULT_WEIGHT);
        r.observe_if_exists("a:1", -DEFAULT_WEIGHT);
        assert!(r.weights()["a:1"] <= 0, "{r:?}");
        // Only the bias is left for a: a tiny slice at the start of [0, 1).
        assert_eq!(r.select_with(&none, 0.0).as_deref(), Some("a:1"));
        for i in 1..1000 {
            let pick = r.select_with(&none, f64::from(i) / 1000.0);
            assert_eq!(pick.as_deref(), Some("b:1"), "at {i}");
        }
        let picks = (0..2000).filter(|_| r.select().as_deref() == Some("b:1"));
        assert!(picks.count() > 1950);
    }

    #[test]
    fn picks_follow_weights_and_an_empty_set_picks_none() {
        let none = BTreeSet::new();
        assert_eq!(Remotes::default().select(), None);
        let mut r = Remotes::default();
        r.observe("a:1", 20); // 10
        r.observe("b:1", 60); // 30
        assert_eq!(r.select_with(&none, 0.2).as_deref(), Some("a:1"));
        assert_eq!(r.select_with(&none, 0.3).as_deref(), Some("b:1"));
        assert_eq!(r.select_with(&none, 0.999_999).as_deref(), Some("b:1"));
        let b: BTreeSet<String> = ["b:1".to_string()].into();
        assert_eq!(r.select_with(&b, 0.999).as_deref(), Some("a:1"));
        let both: BTreeSet<String> = ["a:1".to_string(), "b:1".to_string()].into();
        assert_eq!(r.select_with(&both, 0.5), None);
        r.retain(|a| a != "b:1");
        assert_eq!(r.select_with(&none, 0.9).as_deref(), Some("a:1"));
    }
}
