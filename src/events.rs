//! Kubernetes Events (`events.k8s.io/v1`, Kubernetes ≥ 1.19) as both stages
//! write them: named `<object>.<nanoseconds>` like kube's `Recorder` names
//! them, the note cut to the API's limit.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::ObjectMeta;

/// The API's limit for an Event's note.
const NOTE_LIMIT: usize = 1024;

/// Who writes an Event.
pub struct Reporting<'a> {
    /// `reportingController`.
    pub controller: &'a str,
    /// `reportingInstance`: the pod name when the operator runs in one.
    pub instance: &'a str,
}

/// What an Event says.
pub struct Said<'a> {
    pub type_: &'a str,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

/// A new Event about `regarding`, at `now`.
pub fn event(
    regarding: ObjectReference,
    said: Said<'_>,
    by: &Reporting<'_>,
    now: Timestamp,
) -> Event {
    let name = regarding.name.as_deref().unwrap_or(by.controller);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{:x}", now.as_nanosecond())),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(said.type_.to_owned()),
        reason: Some(said.reason.to_owned()),
        action: Some(said.action.to_owned()),
        note: Some(truncate(said.note, NOTE_LIMIT)),
        regarding: Some(regarding),
        reporting_controller: Some(by.controller.to_owned()),
        reporting_instance: Some(by.instance.to_owned()),
        ..Event::default()
    }
}

/// Cuts `text` to at most `limit` bytes, on a character boundary.
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit - "…".len();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_character_boundaries() {
        assert_eq!(truncate("short".into(), 10), "short");
        let long = "é".repeat(600);
        let cut = truncate(long, NOTE_LIMIT);
        assert!(cut.len() <= NOTE_LIMIT);
        assert!(cut.ends_with('…'));
    }
}
