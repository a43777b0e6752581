//! Operator alerts: conditions worth a human's attention (a refused link, a
//! member down, a cluster unreachable), raised once per subject and updated
//! while they persist, listed by `GET /v1/alerts`, acknowledged by
//! `POST /v1/alerts/{id}/ack`. Bounded per kind, the oldest inactive ones
//! going first: subjects are often what a peer claims (a node id, a
//! cluster, a destination), and a flood of one kind must not push the
//! others out.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// Alerts kept of each kind.
const KEPT_PER_KIND: usize = 36;

/// What an alert is about (a closed set, for metrics and filtering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A link refused by federation policy (either side).
    LinkRefused,
    /// A member of this cluster was declared down.
    MemberDown,
    /// Calls from a foreign cluster hit its rate limit.
    RateLimited,
    /// No route leads to a cluster that was reachable.
    ClusterUnreachable,
    /// A route flaps and is held down.
    RouteFlapping,
    /// A route update was unsigned, forged, replayed or from the wrong cluster.
    RouteSignature,
    /// A seed could not be dialled for a while.
    SeedUnreachable,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::LinkRefused,
        AlertKind::MemberDown,
        AlertKind::RateLimited,
        AlertKind::ClusterUnreachable,
        AlertKind::RouteFlapping,
        AlertKind::RouteSignature,
        AlertKind::SeedUnreachable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::LinkRefused => "link-refused",
            AlertKind::MemberDown => "member-down",
            AlertKind::RateLimited => "rate-limited",
            AlertKind::ClusterUnreachable => "cluster-unreachable",
            AlertKind::RouteFlapping => "route-flapping",
            AlertKind::RouteSignature => "route-signature",
            AlertKind::SeedUnreachable => "seed-unreachable",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub id: u64,
    pub kind: AlertKind,
    /// What it is about: a peer address, a node, a cluster.
    pub subject: String,
    pub message: String,
    pub first_unix_ms: u64,
    pub last_unix_ms: u64,
    /// Times the condition was seen.
    pub count: u64,
    /// Still true (false once resolved).
    pub active: bool,
    pub acked: bool,
}

#[derive(Default)]
pub struct Alerts {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_key: BTreeMap<(AlertKind, String), Alert>,
}

impl Alerts {
    /// Raises (or refreshes) the alert for `subject`. Returns true when it
    /// is new or was inactive, so the caller logs it once.
    pub fn raise(&self, kind: AlertKind, subject: &str, message: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = crate::unix_ms();
        let key = (kind, subject.to_owned());
        if let Some(alert) = inner.by_key.get_mut(&key) {
            let fresh = !alert.active;
            alert.count += 1;
            alert.last_unix_ms = now;
            alert.message = message.to_owned();
            alert.active = true;
            if fresh {
                alert.acked = false;
            }
            return fresh;
        }
        let of_kind = inner.by_key.range((kind, String::new())..).take_while(|((k, _), _)| *k == kind);
        if of_kind.clone().count() >= KEPT_PER_KIND {
            let oldest = of_kind.min_by_key(|(_, a)| (a.active, a.last_unix_ms)).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                inner.by_key.remove(&oldest);
            }
        }
        inner.next_id += 1;
        let alert = Alert {
            id: inner.next_id,
            kind,
            subject: subject.to_owned(),
            message: message.to_owned(),
            first_unix_ms: now,
            last_unix_ms: now,
            count: 1,
            active: true,
            acked: false,
        };
        inner.by_key.insert(key, alert);
        true
    }

    /// The condition is over.
    pub fn resolve(&self, kind: AlertKind, subject: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(alert) = inner.by_key.get_mut(&(kind, subject.to_owned())) {
            alert.active = false;
        }
    }

    /// Active alerts first, newest first.
    pub fn list(&self) -> Vec<Alert> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<Alert> = inner.by_key.values().cloned().collect();
        all.sort_by_key(|a| std::cmp::Reverse((a.active, a.last_unix_ms)));
        all
    }

    /// Acknowledges alert `id`; false if there is none.
    pub fn ack(&self, id: u64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.by_key.values_mut().find(|a| a.id == id) {
            Some(alert) => {
                alert.acked = true;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_raised_once_refreshed_resolved_and_acknowledged() {
        let alerts = Alerts::default();
        assert!(alerts.raise(AlertKind::LinkRefused, "ws://x", "refused"));
        assert!(!alerts.raise(AlertKind::LinkRefused, "ws://x", "refused again"), "still active: not new");
        let a = alerts.list().remove(0);
        assert_eq!((a.count, a.active, a.acked, a.message.as_str()), (2, true, false, "refused again"));
        assert!(alerts.ack(a.id));
        assert!(!alerts.ack(999));
        alerts.resolve(AlertKind::LinkRefused, "ws://x");
        assert!(!alerts.list()[0].active);
        assert!(alerts.raise(AlertKind::LinkRefused, "ws://x", "back"), "a resolved alert that returns is new");
        assert!(!alerts.list()[0].acked, "and needs a new acknowledgement");
    }

    #[test]
    fn the_store_is_bounded_per_kind_so_one_kind_cannot_push_others_out() {
        let alerts = Alerts::default();
        alerts.raise(AlertKind::ClusterUnreachable, "delta", "gone");
        alerts.raise(AlertKind::RouteSignature, "early", "forged");
        for i in 0..(KEPT_PER_KIND + 300) {
            alerts.raise(AlertKind::RouteSignature, &format!("flood{i}"), "forged");
        }
        let list = alerts.list();
        assert_eq!(list.len(), KEPT_PER_KIND + 1);
        assert!(list.iter().any(|a| a.kind == AlertKind::ClusterUnreachable && a.subject == "delta"));
        assert!(!list.iter().any(|a| a.subject == "early"), "the oldest of the flooded kind went");
    }
}
