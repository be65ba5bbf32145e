//! What a run exercised, so that a campaign can show (and assert) that it covered each kind of
//! step.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Default, Clone)]
pub struct Stats(BTreeMap<&'static str, u64>);

impl Stats {
    pub fn bump(&mut self, what: &'static str) {
        *self.0.entry(what).or_default() += 1;
    }

    /// Keeps the largest value seen.
    pub fn max(&mut self, what: &'static str, value: u64) {
        let v = self.0.entry(what).or_default();
        *v = (*v).max(value);
    }

    pub fn get(&self, what: &str) -> u64 {
        self.0.get(what).copied().unwrap_or(0)
    }

    /// Sums the counts of `other` into these (maxima stay maxima).
    pub fn add(&mut self, other: &Stats) {
        for (&k, &v) in &other.0 {
            let mine = self.0.entry(k).or_default();
            *mine = match k.starts_with("max ") {
                true => (*mine).max(v),
                false => *mine + v,
            };
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}
