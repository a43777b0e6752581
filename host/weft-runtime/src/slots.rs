//! The node's sandbox slots (`limits.max_concurrency`), shared fairly
//! between callers.
//!
//! While slots are free, any call takes one. Once they run out, calls wait,
//! and each slot given back goes to the waiting caller that holds the fewest;
//! among callers holding as many, to the one served least recently. One
//! caller's waiting calls are served in order. So a caller with a
//! thousand calls queued, say a fan-out of guests that spin to their
//! deadline, cannot keep every slot while another caller waits: the other
//! gets the next slot that frees. A first-come, first-served semaphore would
//! serve the thousand first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, oneshot};
use weft_proto::Caller;

pub(crate) struct Slots {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    total: usize,
    /// Woken when every slot is free again (`Slots::settled`).
    all_free: Notify,
}

struct State {
    free: usize,
    /// Slots in use, by the caller they were given to.
    held: HashMap<Caller, usize>,
    /// Calls waiting for a slot, by caller. A sender whose call gave up is
    /// skipped when its turn comes.
    waiting: HashMap<Caller, VecDeque<oneshot::Sender<()>>>,
    /// The callers in `waiting`, the one served least recently first.
    turns: VecDeque<Caller>,
}

/// One slot, held until dropped.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    caller: Caller,
}

impl Slots {
    pub fn new(total: usize) -> Self {
        let state = State { free: total, held: HashMap::new(), waiting: HashMap::new(), turns: VecDeque::new() };
        Self { shared: Arc::new(Shared { state: Mutex::new(state), total, all_free: Notify::new() }) }
    }

    /// A slot for `caller`, waiting for one if none is free.
    pub async fn acquire(&self, caller: &Caller) -> Slot {
        let rx = {
            let mut state = self.shared.state();
            if state.free > 0 {
                state.free -= 1;
                state.hold(caller);
                None
            } else {
                let (tx, rx) = oneshot::channel();
                state.wait(caller, tx);
                Some(rx)
            }
        };
        if let Some(rx) = rx {
            let mut waiting = Waiting { rx, given: false, shared: &self.shared, caller };
            // Senders are dropped only once they have sent: `Shared`
            // outlives every waiter.
            let _ = (&mut waiting.rx).await;
            waiting.given = true;
        }
        Slot { shared: self.shared.clone(), caller: caller.clone() }
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.shared.state().free
    }

    /// Waits until every slot is free.
    pub async fn settled(&self) {
        loop {
            let notified = self.shared.all_free.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.free() == self.shared.total {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives a slot of `caller`'s back: to the waiting caller that holds the
    /// fewest, or to the free slots if no one waits.
    fn release(&self, caller: &Caller) {
        let mut state = self.state();
        if let Some(held) = state.held.get_mut(caller) {
            *held -= 1;
            if *held == 0 {
                state.held.remove(caller);
            }
        }
        while let Some((next, tx)) = state.next_waiter() {
            if tx.send(()).is_ok() {
                state.hold(&next);
                return;
            }
        }
        state.free += 1;
        if state.free == self.total {
            self.all_free.notify_waiters();
        }
    }
}

impl State {
    fn hold(&mut self, caller: &Caller) {
        match self.held.get_mut(caller) {
            Some(held) => *held += 1,
            None => _ = self.held.insert(caller.clone(), 1),
        }
    }

    fn wait(&mut self, caller: &Caller, tx: oneshot::Sender<()>) {
        let queue = self.waiting.entry(caller.clone()).or_default();
        if queue.is_empty() {
            self.turns.push_back(caller.clone());
        }
        queue.push_back(tx);
    }

    /// Takes the next waiter to serve: the first in line of the caller that
    /// holds the fewest slots, the least recently served if several do.
    fn next_waiter(&mut self) -> Option<(Caller, oneshot::Sender<()>)> {
        let held = |c: &Caller| self.held.get(c).copied().unwrap_or(0);
        let (turn, _) = self.turns.iter().enumerate().min_by_key(|(_, c)| held(c))?;
        let caller = self.turns.remove(turn)?;
        let queue = self.waiting.get_mut(&caller)?;
        let tx = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&caller);
        } else {
            self.turns.push_back(caller.clone());
        }
        Some((caller, tx))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.release(&self.caller);
    }
}

/// A call waiting for its slot. Dropped before the slot arrives (its
/// deadline passed), it closes its channel so that its turn is skipped;
/// dropped just after, it gives the slot back.
struct Waiting<'a> {
    rx: oneshot::Receiver<()>,
    given: bool,
    shared: &'a Shared,
    caller: &'a Caller,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.given {
            return;
        }
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.shared.release(self.caller);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use super::*;

    fn tenant(name: &str) -> Caller {
        Caller::Tenant(name.into())
    }

    async fn pending(slots: &Arc<Slots>, caller: Caller) -> tokio::task::JoinHandle<Slot> {
        let slots = slots.clone();
        let task = tokio::spawn(async move { slots.acquire(&caller).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        task
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiting_caller_holding_fewest() {
        let slots = Arc::new(Slots::new(2));
        let (a1, a2) = (slots.acquire(&Caller::Anonymous).await, slots.acquire(&Caller::Anonymous).await);
        assert_eq!(slots.free(), 0);
        let queued: Vec<_> = queue_up(&slots, Caller::Anonymous, 3).await;
        let b = pending(&slots, tenant("b")).await;
        drop(a1);
        let b = tokio::time::timeout(Duration::from_secs(5), b).await.expect("b is served first").unwrap();
        assert!(queued.iter().all(|t| !t.is_finished()), "the anonymous calls queued earlier still wait");
        drop(a2);
        drop(b);
        for t in queued {
            drop(tokio::time::timeout(Duration::from_secs(5), t).await.expect("then the rest, in turn").unwrap());
        }
        tokio::time::timeout(Duration::from_secs(5), slots.settled()).await.expect("every slot is free again");
        assert_eq!(slots.free(), 2);
    }

    async fn queue_up(slots: &Arc<Slots>, caller: Caller, n: usize) -> Vec<tokio::task::JoinHandle<Slot>> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            tasks.push(pending(slots, caller.clone()).await);
        }
        tasks
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_slot() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.acquire(&tenant("a")).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), slots.acquire(&tenant("b"))).await;
        assert!(gave_up.is_err(), "no slot was free");
        drop(held);
        assert_eq!(slots.free(), 1, "the slot skips the waiter that gave up");

        // Given its slot but dropped before it ran again: the slot comes back.
        let held = slots.acquire(&tenant("a")).await;
        let b = tenant("b");
        let mut waiter = Box::pin(slots.acquire(&b));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiter.as_mut().poll(&mut cx).is_pending(), "b waits");
        drop(held);
        assert_eq!(slots.free(), 0, "the slot went to b");
        drop(waiter);
        assert_eq!(slots.free(), 1, "and came back");
    }

    #[tokio::test]
    async fn callers_holding_as_many_take_turns() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.acquire(&tenant("a")).await;
        let a = queue_up(&slots, tenant("a"), 2).await;
        let b = queue_up(&slots, tenant("b"), 2).await;
        drop(held);
        let mut served = Vec::new();
        let mut tasks: Vec<_> =
            [("a", a), ("b", b)].into_iter().flat_map(|(n, ts)| ts.into_iter().map(move |t| (n, t))).collect();
        while !tasks.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = tasks.iter().position(|(_, t)| t.is_finished()).expect("one waiter holds the slot");
            let (name, task) = tasks.remove(done);
            served.push(name);
            drop(task.await.unwrap());
        }
        assert_eq!(served, ["a", "b", "a", "b"]);
    }

    #[tokio::test]
    async fn one_callers_waiting_calls_are_served_in_order() {
        let slots = Arc::new(Slots::new(1));
        let held = slots.acquire(&tenant("a")).await;
        let first = pending(&slots, tenant("b")).await;
        let second = pending(&slots, tenant("b")).await;
        drop(held);
        let first = tokio::time::timeout(Duration::from_secs(5), first).await.unwrap().unwrap();
        assert!(!second.is_finished());
        drop(first);
        drop(tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap());
        assert_eq!(slots.free(), 1);
    }
}
