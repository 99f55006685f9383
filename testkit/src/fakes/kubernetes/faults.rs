//! Faults a test switches on at run time, and the log of what the fake answered.
//!
//! Throttling is modelled on the two 429s a real API server sends: API Priority and Fairness
//! (and max-in-flight) reject with a *plain-text* body and `Retry-After`, not a Status; other
//! throttles (eviction, webhooks) answer a `TooManyRequests` Status carrying
//! `details.retryAfterSeconds`. A dropped answer is applied first, then the connection is torn
//! down without a response: the write's outcome is unknown to the client.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use super::super::filter::Filter;

/// One answered (or dropped) request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string ("" when there is none).
    pub query: String,
    /// `None` when the connection was dropped instead of answering.
    pub status: Option<u16>,
    /// The authenticated user, if any.
    pub user: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Throttle {
    /// APF's answer: text/plain body, `Retry-After`, no Status.
    PriorityAndFairness,
    /// A `TooManyRequests` Status with `details.retryAfterSeconds`.
    Status,
}

#[derive(Clone, Debug)]
pub(crate) enum Fault {
    Throttle { style: Throttle, retry_after: u32 },
    Fail,
    DropAfterApply,
}

#[derive(Clone, Debug)]
struct Rule {
    fault: Fault,
    remaining: usize,
    filter: Filter,
}

#[derive(Debug, Default)]
struct State {
    latency: Duration,
    rules: Vec<Rule>,
    log: Vec<LoggedRequest>,
}

/// Switches faults on the running fake; clones share one state.
#[derive(Clone, Debug, Default)]
pub struct FaultHandle {
    state: Arc<Mutex<State>>,
}

/// What the server must do with one request.
#[derive(Debug, Default)]
pub(crate) struct Decision {
    /// Answer instead of serving (throttle, fail).
    pub before: Option<Fault>,
    /// Serve, then drop the connection instead of answering.
    pub drop_after_apply: bool,
}

impl FaultHandle {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not wedge the server: the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Added before every response (including faulted ones).
    pub fn latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The next `n` matching requests are rejected as API Priority and Fairness rejects them:
    /// 429, `Retry-After: retry_after_secs`, a plain-text body.
    pub fn throttle(&self, n: usize, retry_after_secs: u32, filter: Filter) {
        self.push(
            Fault::Throttle {
                style: Throttle::PriorityAndFairness,
                retry_after: retry_after_secs,
            },
            n,
            filter,
        );
    }

    /// The next `n` matching requests answer a 429 `TooManyRequests` Status with
    /// `details.retryAfterSeconds` and `Retry-After`.
    pub fn throttle_status(&self, n: usize, retry_after_secs: u32, filter: Filter) {
        self.push(
            Fault::Throttle {
                style: Throttle::Status,
                retry_after: retry_after_secs,
            },
            n,
            filter,
        );
    }

    /// The next `n` matching requests answer 500 `InternalError` without being applied.
    pub fn fail(&self, n: usize, filter: Filter) {
        self.push(Fault::Fail, n, filter);
    }

    /// The next `n` matching requests are applied, then the connection is closed (HTTP/1.1)
    /// or the stream reset (HTTP/2) without a response.
    pub fn drop_after_apply(&self, n: usize, filter: Filter) {
        self.push(Fault::DropAfterApply, n, filter);
    }

    /// Removes every fault and the latency (the request log stays).
    pub fn clear(&self) {
        let mut s = self.lock();
        s.rules.clear();
        s.latency = Duration::ZERO;
    }

    /// How many faulted answers are still armed.
    pub fn pending(&self) -> usize {
        self.lock().rules.iter().map(|r| r.remaining).sum()
    }

    fn push(&self, fault: Fault, n: usize, filter: Filter) {
        if n > 0 {
            self.lock().rules.push(Rule {
                fault,
                remaining: n,
                filter,
            });
        }
    }

    /// Consumes the faults that apply to this request: at most one answer-instead fault
    /// (throttling comes first, as APF sits before everything else), and a drop only when
    /// the request is actually served.
    pub(crate) fn decide(&self, method: &str, path: &str) -> Decision {
        let mut s = self.lock();
        let mut d = Decision::default();
        let take = |want: &dyn Fn(&Fault) -> bool, s: &mut State| -> Option<Fault> {
            let rule = s
                .rules
                .iter_mut()
                .find(|r| r.remaining > 0 && want(&r.fault) && r.filter.matches(method, path))?;
            rule.remaining -= 1;
            Some(rule.fault.clone())
        };
        d.before = take(&|f| matches!(f, Fault::Throttle { .. }), &mut s)
            .or_else(|| take(&|f| matches!(f, Fault::Fail), &mut s));
        if d.before.is_none() {
            d.drop_after_apply = take(&|f| matches!(f, Fault::DropAfterApply), &mut s).is_some();
        }
        s.rules.retain(|r| r.remaining > 0);
        d
    }

    pub(crate) fn current_latency(&self) -> Duration {
        self.lock().latency
    }

    pub(crate) fn log(&self, entry: LoggedRequest) {
        self.lock().log.push(entry);
    }

    pub(crate) fn requests(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_count_down_per_matching_request() {
        let f = FaultHandle::default();
        f.throttle(1, 2, Filter::method("POST"));
        f.fail(1, Filter::path("rolebindings"));
        let get = f.decide("GET", "/apis/rbac.authorization.k8s.io/v1/rolebindings");
        assert!(matches!(get.before, Some(Fault::Fail)));
        let post = f.decide("post", "/x");
        assert!(matches!(
            post.before,
            Some(Fault::Throttle { retry_after: 2, .. })
        ));
        assert!(f.decide("POST", "/x").before.is_none());
        assert_eq!(f.pending(), 0);
    }
}
