//! A node-wide budget of host memory that many tasks draw on at once: each
//! holds its share as a [`Charge`], given back when the charge is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

/// A share of a [`Budget`], given back when dropped.
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Charge {
    /// Takes more of the budget, up to `bytes` in all, if it is free.
    pub fn grow_to(&mut self, bytes: usize) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        let limit = self.budget.limit;
        let grown = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|total| *total <= limit)
            })
            .is_ok();
        if grown {
            self.bytes += more;
        }
        grown
    }

    /// Gives back what is over `bytes`, when the charge was more.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.used.fetch_sub(self.bytes - bytes, Ordering::AcqRel);
            self.bytes = bytes;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), limit })
    }

    /// `bytes` of the budget, if they are free.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Option<Charge> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .ok()
            .map(|_| Charge { budget: self.clone(), bytes })
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn charges_share_the_budget_and_give_it_back() {
        let budget = Budget::new(100);
        let first = budget.charge(60).unwrap();
        assert!(budget.charge(50).is_none(), "over the budget");
        let second = budget.charge(40).unwrap();
        drop(first);
        assert!(budget.charge(usize::MAX).is_none(), "no overflow");
        let mut third = budget.charge(60).unwrap();
        assert_eq!(budget.used(), 100);
        third.shrink_to(10);
        third.shrink_to(50);
        assert_eq!(budget.used(), 50, "only ever less");
        assert!(!third.grow_to(61), "over the budget with the other 40");
        assert!(third.grow_to(60));
        assert_eq!(budget.used(), 100);
        drop((second, third));
        assert_eq!(budget.used(), 0);
    }
}
