//! Kubernetes Events on KeyVaultSecrets, folded as kube's `Recorder` folds
//! them: the same event (object, type, reason, action) again within 6
//! minutes becomes a series on the first one — its count and last time
//! patched — instead of another Event.
//!
//! Written here rather than through `Recorder`, which keeps a whole Event per
//! fold key and prunes only when it publishes again: with a recorder per
//! object its table was 5.7 KB per KeyVaultSecret (17 MB, 30 % of the
//! operator's heap at 3,000 objects), and one shared recorder keeps every
//! object's last Event until the next one is published. A fold here is the
//! Event's name, a count and a time, pruned once it is 6 minutes old.
//!
//! ```text
//!  ObjectEvents
//!   └─ folds: (ObjectKey, type, reason, action) ─▶ Fold { event name, count, last }
//!        pruned when older than 6 minutes (checked at most once a minute),
//!        removed by forget (object deleted) and retain (after a re-list)
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};
use serde_json::json;

use super::key::ObjectKey;
use crate::events::{Reporting, Said};

/// How long a repeat folds into the first Event (kube's `Recorder` uses 6 minutes).
const FOLD_WINDOW: Duration = Duration::from_secs(360);
/// How often old folds are looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FoldKey {
    object: ObjectKey,
    type_: &'static str,
    reason: String,
    action: String,
}

/// The Event a repeat folds into.
struct Fold {
    name: String,
    count: i32,
    last: Timestamp,
}

#[derive(Default)]
struct Folds {
    by_key: HashMap<FoldKey, Fold>,
    pruned: Option<Timestamp>,
}

impl Folds {
    /// Drops folds older than the window (at most once per [`PRUNE_EVERY`]).
    fn prune(&mut self, now: Timestamp) {
        if self.pruned.is_some_and(|at| elapsed(at, now) < PRUNE_EVERY) {
            return;
        }
        self.pruned = Some(now);
        self.by_key
            .retain(|_, fold| elapsed(fold.last, now) < FOLD_WINDOW);
    }

    /// The Event `key` folds into at `now`, with its next count; `None`
    /// for a new Event.
    fn repeat(&mut self, key: &FoldKey, now: Timestamp) -> Option<(String, i32)> {
        self.prune(now);
        let fold = self
            .by_key
            .get_mut(key)
            .filter(|fold| elapsed(fold.last, now) < FOLD_WINDOW)?;
        fold.count += 1;
        fold.last = now;
        Some((fold.name.clone(), fold.count))
    }
}

fn elapsed(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or_default()
}

/// Publishes Events on KeyVaultSecrets.
pub struct ObjectEvents {
    client: kube::Client,
    reporter: Reporter,
    folds: Mutex<Folds>,
}

impl ObjectEvents {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        ObjectEvents {
            client,
            reporter,
            folds: Mutex::default(),
        }
    }

    /// Publishes `event` about `object`: a new Event, or a repeat counted
    /// on the one it folds into.
    pub async fn publish(
        &self,
        object: &ObjectKey,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let type_ = match event.type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let key = FoldKey {
            object: object.clone(),
            type_,
            reason: event.reason.clone(),
            action: event.action.clone(),
        };
        let namespace = reference.namespace.clone().unwrap_or_default();
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let repeat = self.folds.lock().unwrap().repeat(&key, now);
        if let Some((name, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            let series = json!({ "series": series });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&series))
                .await?;
            return Ok(());
        }
        let instance = self.reporter.instance.as_deref();
        let reporting = Reporting {
            controller: &self.reporter.controller,
            instance: instance.unwrap_or(&self.reporter.controller),
        };
        let said = Said {
            type_,
            reason: &event.reason,
            action: &event.action,
            note: event.note.clone().unwrap_or_default(),
        };
        let created = crate::events::event(reference.clone(), said, &reporting, now);
        let name = created.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &created).await?;
        self.folds.lock().unwrap().by_key.insert(
            key,
            Fold {
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// Drops the folds of `object` (it was deleted).
    pub fn forget(&self, object: &ObjectKey) {
        self.retain(|o| o != object);
    }

    /// Keeps only the folds of objects for which `alive` holds.
    pub fn retain(&self, alive: impl Fn(&ObjectKey) -> bool) {
        self.folds
            .lock()
            .unwrap()
            .by_key
            .retain(|key, _| alive(&key.object));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(object: &str, reason: &str) -> FoldKey {
        FoldKey {
            object: object.into(),
            type_: "Warning",
            reason: reason.into(),
            action: "Sync".into(),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn repeats_within_six_minutes_fold_into_the_first_event() {
        let mut folds = Folds::default();
        let first = key("ns/db", "AuthFailed");
        assert_eq!(
            folds.repeat(&first, at(0)),
            None,
            "nothing to fold into yet"
        );
        folds.by_key.insert(
            first.clone(),
            Fold {
                name: "db.1".into(),
                count: 1,
                last: at(0),
            },
        );
        assert_eq!(folds.repeat(&first, at(30)), Some(("db.1".into(), 2)));
        assert_eq!(
            folds.repeat(&first, at(30 + 359)),
            Some(("db.1".into(), 3)),
            "the window runs from the last repeat"
        );
        assert_eq!(
            folds.repeat(&key("ns/db", "RemoteNotFound"), at(400)),
            None,
            "another reason is another Event"
        );
        assert_eq!(folds.repeat(&first, at(30 + 359 + 361)), None);
        assert!(folds.by_key.is_empty(), "an old fold is dropped");
    }
}
