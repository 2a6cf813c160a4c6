//! What kvsync writes on a workload, and reads back after a restart.
//!
//! - `kvsync.io/reload-digest` (workload *metadata* annotation): the digest of
//!   each resource the workload reacts to, as its pods have it — from when it
//!   was last restarted or baselined; a resource deleted since keeps the
//!   digest the pods still have — plus the id of the key the digests were
//!   made with. Metadata annotations do not roll pods, so this can be written
//!   freely.
//! - `kvsync.io/restartedAt` (pod *template* annotation): when kvsync last
//!   restarted the workload. Changing it is what rolls the pods; reading it
//!   back gives the rate limit a memory that survives operator restarts.
//! - `kvsync.io/paused-at` (workload *metadata* annotation): when the first
//!   change of a running pause period (see
//!   [`super::annotations::pause_period_key`]) was seen. The rollout is made
//!   when the period has passed since then; keeping the start on the object
//!   rather than in a timer makes the period survive operator restarts.
//!
//! Digests are kept per resource rather than as one digest over the set, so
//! that a workload starting or stopping to react to a resource (an edited
//! annotation, a new volume in the pod spec — which rolls the pods anyway)
//! updates the record without a restart: only a resource whose data differs
//! from what the workload was last started with causes one.

use std::collections::BTreeMap;

use litemap::LiteMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::digest::Digest;
use super::kinds::ResourceRef;
#[cfg(doc)]
use crate::api::contract::{
    DIGEST_ANNOTATION, JOB_PENDING_ANNOTATION, PAUSED_AT_ANNOTATION, PENDING_ANNOTATION,
    RESTARTED_AT_ANNOTATION,
};

/// The [`PENDING_ANNOTATION`] value: `<until> <resource>,<resource>`, the
/// time rounded up to the second (so that evaluating again writes nothing).
pub fn pending_mark(until: OffsetDateTime, changed: &[ResourceRef]) -> String {
    format!(
        "{} {}",
        format_time(next_whole_second(until)),
        named_within_limit(changed)
    )
}

/// The [`JOB_PENDING_ANNOTATION`] value: `<job name> <resource>,<resource>`.
pub fn job_mark(job: &str, changed: &[ResourceRef]) -> String {
    format!("{job} {}", named_within_limit(changed))
}

/// Reads a [`job_mark`]: the Job's name and the resources named.
pub fn parse_job_mark(value: &str) -> (String, Vec<String>) {
    let (job, changed) = value.split_once(' ').unwrap_or((value, ""));
    (job.to_owned(), names(changed))
}

fn names(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `at`, rounded up to a whole second.
pub fn next_whole_second(at: OffsetDateTime) -> OffsetDateTime {
    let whole = at.replace_nanosecond(0).expect("0 is a valid nanosecond");
    if whole == at {
        whole
    } else {
        whole + time::Duration::SECOND
    }
}

/// The most bytes of resource names a [`pending_mark`] lists: a change of
/// thousands of Secrets (a summary record) must not make the mark exceed
/// the API server's limit on annotations and leave the restart unwritten.
pub const PENDING_NAMES_LIMIT: usize = 1024;

/// The names of `changed`, comma-separated, as many as fit in
/// [`PENDING_NAMES_LIMIT`]; the rest counted (`+N more`).
fn named_within_limit(changed: &[ResourceRef]) -> String {
    let mut named = String::new();
    for (shown, resource) in changed.iter().enumerate() {
        let name = resource.to_string();
        if named.len() + name.len() + 1 > PENDING_NAMES_LIMIT {
            named.push_str(&format!("+{} more", changed.len() - shown));
            break;
        }
        named.push_str(&name);
        named.push(',');
    }
    named.trim_end_matches(',').to_owned()
}

/// Reads a [`pending_mark`]: until when, and the resources named.
pub fn parse_pending_mark(value: &str) -> Option<(OffsetDateTime, Vec<String>)> {
    let (until, changed) = value.split_once(' ').unwrap_or((value, ""));
    Some((parse_time(Some(until))?, names(changed)))
}

const ABSENT: &str = "absent";

/// The state of one resource a workload reacts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Present(Digest),
    /// Referenced but never seen (or not visible through
    /// `--resource-label-selector`).
    Absent,
}

/// The resources a workload reacts to, with their states.
pub type Members = LiteMap<ResourceRef, MemberState>;

/// The content of [`DIGEST_ANNOTATION`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedRecord {
    /// [`super::digest::DigestKey::id`] of the key the digests were made with.
    pub key_id: String,
    /// Empty when read back in the summary form.
    pub members: Members,
    /// The resources the pod spec uses without the workload reacting to them
    /// (not matched by `search`, ignored, excluded), with the state the pods
    /// were last (re)started with: if one becomes a member, a difference
    /// restarts. Not kept in the summary form.
    pub unreacted: Members,
    /// The summary form's digest (see [`RECORD_LIMIT`]).
    pub summary: Option<String>,
}

/// A record longer than this is written in the summary form: one digest over
/// all members instead of one per member, so a `.*` pattern over thousands of
/// Secrets cannot push the workload's annotations past Kubernetes' 256 KiB
/// (which they share with the user's own). Then any change of the set —
/// a deletion too — restarts, without naming which resource changed.
pub const RECORD_LIMIT: usize = 32 * 1024;

/// The digest of the summary form.
pub fn summarize(members: &Members) -> String {
    let mut hash = Sha256::new();
    for (resource, state) in members {
        hash.update(resource.to_string());
        hash.update("\t");
        hash.update(state_text(state));
        hash.update("\n");
    }
    hex::encode(hash.finalize())
}

fn state_text(state: &MemberState) -> String {
    match state {
        MemberState::Present(digest) => digest.to_string(),
        MemberState::Absent => ABSENT.to_owned(),
    }
}

/// What a workload's [`DIGEST_ANNOTATION`] says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// No annotation: kvsync has not seen this workload before.
    Never,
    /// An annotation kvsync cannot read (edited by hand): treated like `Never`.
    Unreadable,
    Record(AppliedRecord),
}

impl Applied {
    pub fn from_annotation(value: Option<&str>) -> Self {
        match value {
            None => Applied::Never,
            Some(text) => AppliedRecord::parse(text).map_or(Applied::Unreadable, Applied::Record),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    key: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    digests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    summary: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    unreacted: BTreeMap<String, String>,
}

fn wire_members(members: &Members) -> BTreeMap<String, String> {
    members
        .iter()
        .map(|(resource, state)| (resource.to_string(), state_text(state)))
        .collect()
}

fn parse_members(wire: &BTreeMap<String, String>) -> Option<Members> {
    wire.iter()
        .map(|(resource, state)| {
            let state = match state.as_str() {
                ABSENT => MemberState::Absent,
                digest => MemberState::Present(digest.parse().ok()?),
            };
            Some((ResourceRef::parse(resource)?, state))
        })
        .collect()
}

impl AppliedRecord {
    pub fn new(key_id: String, members: Members) -> Self {
        AppliedRecord {
            key_id,
            members,
            unreacted: Members::new(),
            summary: None,
        }
    }

    /// With the states of the used resources it does not react to.
    pub fn with_unreacted(self, unreacted: Members) -> Self {
        AppliedRecord { unreacted, ..self }
    }

    /// The annotation value: one digest per member, or the summary form
    /// when that would be longer than [`RECORD_LIMIT`].
    pub fn render(&self) -> String {
        let each = Wire {
            key: self.key_id.clone(),
            digests: wire_members(&self.members),
            summary: self.summary.clone(),
            unreacted: wire_members(&self.unreacted),
        };
        let text = serde_json::to_string(&each).expect("a map of strings always serialises");
        if text.len() <= RECORD_LIMIT {
            return text;
        }
        serde_json::to_string(&Wire {
            key: self.key_id.clone(),
            digests: BTreeMap::new(),
            summary: Some(summarize(&self.members)),
            unreacted: BTreeMap::new(),
        })
        .expect("strings always serialise")
    }

    pub fn parse(text: &str) -> Option<Self> {
        let wire: Wire = serde_json::from_str(text).ok()?;
        Some(AppliedRecord {
            key_id: wire.key,
            members: parse_members(&wire.digests)?,
            unreacted: parse_members(&wire.unreacted)?,
            summary: wire.summary,
        })
    }
}

/// The latest time kvsync reads from an annotation (the start of the year
/// 3000): anything later is as unreadable as garbage. Every time kvsync
/// computes adds at most a bounded period ([`super::annotations::MAX_PAUSE_PERIOD`],
/// the minimum interval) to a time read here or to now, so no sum leaves the
/// calendar (`time` panics past the year 9999).
pub const LATEST_READABLE_TIME: OffsetDateTime = time::macros::datetime!(3000-01-01 0:00 UTC);

/// Reads a time annotation ([`RESTARTED_AT_ANNOTATION`], [`PAUSED_AT_ANNOTATION`],
/// Reloader's paused-at, the pending mark); an unreadable value, or one
/// before 1970 or from the year 3000 on, counts as "never".
pub fn parse_time(value: Option<&str>) -> Option<OffsetDateTime> {
    value
        .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
        .filter(|at| (OffsetDateTime::UNIX_EPOCH..LATEST_READABLE_TIME).contains(at))
}

/// Renders a time annotation. Sub-second precision keeps two restarts within
/// one second distinct (the same value would roll nothing).
pub fn format_time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .expect("any UTC time has an RFC 3339 form")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_mark_reads_back_and_is_stable_within_a_second() {
        use super::super::kinds::ResourceKind;
        let at = OffsetDateTime::from_unix_timestamp(100).unwrap();
        let changed = [
            ResourceRef::new(ResourceKind::Secret, "db"),
            ResourceRef::new(ResourceKind::ConfigMap, "cfg"),
        ];
        let mark = pending_mark(at + time::Duration::milliseconds(250), &changed);
        assert_eq!(
            mark,
            pending_mark(at + time::Duration::milliseconds(900), &changed)
        );
        let (until, names) = parse_pending_mark(&mark).unwrap();
        assert_eq!(until, at + time::Duration::SECOND);
        assert_eq!(names, [changed[0].to_string(), changed[1].to_string()]);
        assert_eq!(parse_pending_mark("garbage"), None);
        let thousands: Vec<ResourceRef> = (0..5000)
            .map(|i| {
                ResourceRef::new(
                    ResourceKind::Secret,
                    format!("a-rather-long-secret-name-{i:05}"),
                )
            })
            .collect();
        let mark = pending_mark(at, &thousands);
        assert!(
            mark.len() < PENDING_NAMES_LIMIT + 64,
            "{} bytes",
            mark.len()
        );
        let (_, names) = parse_pending_mark(&mark).unwrap();
        assert_eq!(names[0], thousands[0].to_string());
        assert_eq!(
            names.last().unwrap(),
            &format!("+{} more", thousands.len() - (names.len() - 1)),
            "the rest counted"
        );
    }
    use crate::reload::digest::{DigestKey, Object};

    const DB: Object = Object {
        namespace: "shop",
        name: "db",
    };

    #[test]
    fn the_job_mark_names_the_job_and_reads_back() {
        let changed = [ResourceRef::secret("db"), ResourceRef::config_map("cfg")];
        let mark = job_mark("nightly-0123456789", &changed);
        assert_eq!(
            parse_job_mark(&mark),
            (
                "nightly-0123456789".to_owned(),
                vec!["Secret/db".to_owned(), "ConfigMap/cfg".to_owned()]
            )
        );
        let thousands: Vec<ResourceRef> = (0..5000)
            .map(|i| ResourceRef::secret(format!("a-rather-long-secret-name-{i:05}")))
            .collect();
        assert!(job_mark("nightly-0123456789", &thousands).len() < PENDING_NAMES_LIMIT + 64);
    }

    #[test]
    fn record_round_trips() {
        let key = DigestKey::generate();
        let record = AppliedRecord::new(
            key.id(),
            [
                (
                    ResourceRef::secret("db"),
                    MemberState::Present(key.secret(DB, None)),
                ),
                (ResourceRef::config_map("app"), MemberState::Absent),
            ]
            .into_iter()
            .collect(),
        );
        let record = record.with_unreacted(
            [(
                ResourceRef::secret("unmatched"),
                MemberState::Present(key.secret(DB, None)),
            )]
            .into_iter()
            .collect(),
        );
        let text = record.render();
        assert!(text.contains("\"Secret/db\""), "{text}");
        assert!(
            text.contains("\"unreacted\":{\"Secret/unmatched\""),
            "{text}"
        );
        assert_eq!(AppliedRecord::parse(&text), Some(record.clone()));
        assert_eq!(
            Applied::from_annotation(Some(&text)),
            Applied::Record(record)
        );
    }

    #[test]
    fn large_records_are_summarised_within_the_limit() {
        let key = DigestKey::generate();
        let members: Members = (0..2000)
            .map(|i| {
                let name = format!("a-rather-long-secret-name-{i:05}");
                (
                    ResourceRef::secret(name),
                    MemberState::Present(key.secret(DB, None)),
                )
            })
            .collect();
        let record = AppliedRecord::new(key.id(), members.clone());
        let text = record.render();
        assert!(text.len() <= RECORD_LIMIT, "{} bytes", text.len());
        let read = AppliedRecord::parse(&text).unwrap();
        assert_eq!(read.key_id, key.id());
        assert!(read.members.is_empty());
        assert_eq!(read.summary, Some(summarize(&members)));
        let mut changed = members;
        changed.insert(ResourceRef::secret("one-more"), MemberState::Absent);
        assert_ne!(read.summary, Some(summarize(&changed)));
    }

    #[test]
    fn unreadable_annotations_are_not_errors() {
        assert_eq!(Applied::from_annotation(None), Applied::Never);
        for garbage in [
            "",
            "{}",
            "not json",
            r#"{"key":"k","digests":{"Pod/x":"absent"}}"#,
            r#"{"key":"k","digests":{"Secret/x":"zz"}}"#,
        ] {
            assert_eq!(
                Applied::from_annotation(Some(garbage)),
                Applied::Unreadable,
                "{garbage}"
            );
        }
    }

    #[test]
    fn restarted_at_round_trips_with_sub_second_precision() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let text = format_time(at);
        assert_eq!(text, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_time(Some(&text)), Some(at));
        assert_eq!(parse_time(Some("yesterday")), None);
        assert_eq!(parse_time(None), None);
    }
}
