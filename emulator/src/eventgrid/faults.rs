//! Injected event faults: what real delivery does now and then (at-least-once,
//! late, out of order, lost on a misconfigured subscription), on demand.
//! Each rule applies to the next `count` events the vaults publish, before
//! they fan out to subscriptions and queues; rules are used in the order
//! they were added.
//!
//! ```text
//!  {"kind": "drop",      "count": n}               the next n events reach nobody
//!  {"kind": "duplicate", "count": n}               … are delivered twice (same id)
//!  {"kind": "delay",     "count": n, "delayMs": d} … become available d ms later
//!  {"kind": "reorder",   "count": n}               … are held until the n-th, then delivered newest first
//! ```

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventFaultKind {
    Drop,
    Duplicate,
    Delay,
    Reorder,
}

/// Body of the control API's `POST /eventgrid/faults`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventFaultRequest {
    pub kind: EventFaultKind,
    pub count: u32,
    pub delay_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventFaultError {
    #[error("count must be at least 1 (at least 2 to reorder)")]
    Count,
    #[error("delayMs is required with kind delay, and only there")]
    DelayMs,
}

#[derive(Debug)]
enum Rule<T> {
    Drop,
    Duplicate,
    Delay(Duration),
    Reorder(Vec<T>),
}

/// Pending fault rules, each with what is left of its count.
#[derive(Debug)]
pub struct EventFaults<T> {
    rules: Vec<(Rule<T>, u32)>,
}

impl<T> Default for EventFaults<T> {
    fn default() -> Self {
        EventFaults { rules: Vec::new() }
    }
}

impl<T: Clone> EventFaults<T> {
    pub fn add(&mut self, request: EventFaultRequest) -> Result<(), EventFaultError> {
        let minimum = if request.kind == EventFaultKind::Reorder {
            2
        } else {
            1
        };
        if request.count < minimum {
            return Err(EventFaultError::Count);
        }
        let rule = match (request.kind, request.delay_ms) {
            (EventFaultKind::Delay, Some(ms)) => Rule::Delay(Duration::from_millis(ms)),
            (EventFaultKind::Delay, None) | (_, Some(_)) => return Err(EventFaultError::DelayMs),
            (EventFaultKind::Drop, None) => Rule::Drop,
            (EventFaultKind::Duplicate, None) => Rule::Duplicate,
            (EventFaultKind::Reorder, None) => Rule::Reorder(Vec::new()),
        };
        self.rules.push((rule, request.count));
        Ok(())
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// What becomes of one published event: the deliveries to make now, each
    /// with the delay before it is available (none for a dropped or held event).
    pub fn route(&mut self, event: T) -> Vec<(T, Duration)> {
        let Some((rule, remaining)) = self.rules.first_mut() else {
            return vec![(event, Duration::ZERO)];
        };
        *remaining -= 1;
        let used_up = *remaining == 0;
        let deliveries = match rule {
            Rule::Drop => Vec::new(),
            Rule::Duplicate => vec![(event.clone(), Duration::ZERO), (event, Duration::ZERO)],
            Rule::Delay(delay) => vec![(event, *delay)],
            Rule::Reorder(held) => {
                held.push(event);
                if used_up {
                    held.drain(..).rev().map(|e| (e, Duration::ZERO)).collect()
                } else {
                    Vec::new()
                }
            }
        };
        if used_up {
            self.rules.remove(0);
        }
        deliveries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(requests: &[(EventFaultKind, u32, Option<u64>)]) -> EventFaults<u32> {
        let mut faults = EventFaults::default();
        for &(kind, count, delay_ms) in requests {
            faults
                .add(EventFaultRequest {
                    kind,
                    count,
                    delay_ms,
                })
                .unwrap();
        }
        faults
    }

    fn now(events: &[u32]) -> Vec<(u32, Duration)> {
        events.iter().map(|&e| (e, Duration::ZERO)).collect()
    }

    #[test]
    fn rules_apply_in_order_each_for_its_count() {
        use EventFaultKind::*;
        let mut faults = faults(&[
            (Drop, 1, None),
            (Duplicate, 1, None),
            (Delay, 1, Some(1500)),
            (Reorder, 3, None),
        ]);
        assert_eq!(faults.route(1), []);
        assert_eq!(faults.route(2), now(&[2, 2]));
        assert_eq!(faults.route(3), [(3, Duration::from_millis(1500))]);
        assert_eq!(faults.route(4), []);
        assert_eq!(faults.route(5), []);
        assert_eq!(faults.route(6), now(&[6, 5, 4]));
        assert_eq!(faults.route(7), now(&[7]), "no rule left");
    }

    #[test]
    fn nonsense_is_refused() {
        use EventFaultKind::*;
        let mut faults = EventFaults::<u32>::default();
        let request = |kind, count, delay_ms| EventFaultRequest {
            kind,
            count,
            delay_ms,
        };
        assert_eq!(
            faults.add(request(Drop, 0, None)),
            Err(EventFaultError::Count)
        );
        assert_eq!(
            faults.add(request(Reorder, 1, None)),
            Err(EventFaultError::Count)
        );
        assert_eq!(
            faults.add(request(Delay, 1, None)),
            Err(EventFaultError::DelayMs)
        );
        assert_eq!(
            faults.add(request(Drop, 1, Some(5))),
            Err(EventFaultError::DelayMs)
        );
    }
}
