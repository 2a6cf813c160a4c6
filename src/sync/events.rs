//! Kubernetes Events on KeyVaultSecrets: one kube [`Recorder`] per object,
//! dropped when the object goes away.
//!
//! kube's `Recorder` keeps every Event it published for 6 minutes (to fold a
//! repeat into a series) and prunes that cache only when it publishes the
//! next Event. One recorder shared by all objects therefore holds the last
//! Events of every object that synced, deleted or not, until something else
//! is published. A recorder per object folds the same repeats (the fold key
//! names the object anyway) and is dropped with the object's memory.
//!
//! ```text
//!  ObjectEvents
//!   └─ recorders: "ns/name" ─▶ Recorder ─▶ its cache: this object's Events (≤ 6 min)
//!        removed by forget (object deleted) and retain (after a re-list)
//! ```

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};

/// Publishes Events on KeyVaultSecrets, one recorder per object.
pub struct ObjectEvents {
    client: kube::Client,
    reporter: Reporter,
    recorders: Mutex<HashMap<String, Recorder>>,
}

impl ObjectEvents {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        ObjectEvents {
            client,
            reporter,
            recorders: Mutex::default(),
        }
    }

    /// Publishes `event` about `object` ("ns/name") through its recorder.
    pub async fn publish(
        &self,
        object: &str,
        event: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let recorder = self
            .recorders
            .lock()
            .unwrap()
            .entry(object.to_owned())
            .or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone()))
            .clone();
        recorder.publish(event, reference).await
    }

    /// Drops the recorder of `object` (it was deleted).
    pub fn forget(&self, object: &str) {
        self.recorders.lock().unwrap().remove(object);
    }

    /// Keeps only the recorders of objects for which `alive` holds.
    pub fn retain(&self, alive: impl Fn(&str) -> bool) {
        self.recorders
            .lock()
            .unwrap()
            .retain(|object, _| alive(object));
    }
}
