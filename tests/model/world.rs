//! The model behind `tests/model.rs` — pure, no I/O: the vaults' history,
//! each KeyVaultSecret's specs and triggers, what a spec entry renders to in
//! one vault state, and issue 10's rule checked against one observation.
//!
//! ```text
//!  steps ──▶ History   every vault state, with the span in which it may have been live
//!        ──▶ Object    spec per generation (+ when set), force-syncs, target deletions
//!        ──▶ Clock     when the operator was down (stopped … restarted + RESTART_GRACE)
//!
//!  Observation (KeyVaultSecret + Secret) ──▶ check()   ──▶ Vec<Violation>   (after every step)
//!                                        ──▶ settled() ──▶ Ok | why not     (before idle windows)
//!  a foreign Secret (someone else's, merged into) ──▶ check_foreign() ──▶ Violation (after every step):
//!                                          no foreign Secret loses data, ever
//! ```
//!
//! Times are offsets from the test's start. A vault change is known only to
//! have happened between the start and the end of its control-API call, so
//! state `k` may have been live from the start of change `k` until the end
//! of change `k + 1`: the checker accepts a rendering of any state that may
//! have been live in the allowed window, and nothing older.
//!
//! Each spec entry (one `data` item, one `extract`, one `find`) is matched
//! against a state of its own: the operator reads refs one after the other,
//! so one Secret may mix moments; the rule bounds each ref's age. A `find`
//! lists, then reads each match: its names come from one state, each of its
//! values from a state of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A moment of the test: time since it started.
pub type At = Duration;

/// What the operator documents: refreshes are spread ±10 % (`src/schedule.rs`).
pub const JITTER: f64 = 0.1;
/// Time the operator gets to act on what it was told or what it read: a
/// sync's own latency (token, vault reads, Secret and status writes) on a
/// loaded 2-core machine, and the delay of the watch event of a spec change,
/// a force-sync or a target deletion. Not a documented bound: kept small so
/// a real staleness bug (a whole interval late) cannot hide in it.
pub const SLACK: Duration = Duration::from_secs(3);
/// After an operator (re)start: list, watch, tokens and the first sync of
/// every object before the operator can be held to its bounds again.
pub const RESTART_GRACE: Duration = Duration::from_secs(10);

pub const VAULTS: [&str; 3] = ["north", "south", "east"];
/// Plain secrets (tag `grp` = `a` for even, `b` for odd indices).
pub const PLAIN: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "p5"];
/// JSON-object secrets with two fields each (see [`json_fields`]).
pub const JSON: [&str; 2] = ["j0", "j1"];

pub fn tags_of(name: &str) -> BTreeMap<String, String> {
    match PLAIN.iter().position(|p| *p == name) {
        Some(i) => BTreeMap::from([("grp".into(), if i % 2 == 0 { "a" } else { "b" }.into())]),
        None => BTreeMap::new(),
    }
}

pub fn json_fields(name: &str) -> [String; 2] {
    [format!("{name}-a"), format!("{name}-b")]
}

/// Longest a Ready object's data may lag the vault: interval + jitter + slack.
pub fn staleness_bound(interval: Duration) -> Duration {
    interval.mul_f64(1.0 + JITTER) + SLACK
}

// ───────────────────────────── vault history ─────────────────────────────

#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    pub id: String,
    pub value: String,
    pub enabled: bool,
}

/// Every secret of every vault: versions oldest first; absent = deleted.
#[derive(Clone, Debug, Default)]
pub struct VaultState(BTreeMap<(String, String), Vec<Version>>);

impl VaultState {
    pub fn versions(&self, vault: &str, name: &str) -> &[Version] {
        self.0
            .get(&(vault.to_owned(), name.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    pub fn latest(&self, vault: &str, name: &str) -> Option<&Version> {
        self.versions(vault, name).last()
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Set {
                vault,
                name,
                version,
            } => self
                .0
                .entry((vault.clone(), name.clone()))
                .or_default()
                .push(version.clone()),
            Change::SetEnabled {
                vault,
                name,
                enabled,
            } => {
                if let Some(latest) = self
                    .0
                    .get_mut(&(vault.clone(), name.clone()))
                    .and_then(|v| v.last_mut())
                {
                    latest.enabled = *enabled;
                }
            }
            Change::Delete { vault, name } => {
                self.0.remove(&(vault.clone(), name.clone()));
            }
        }
    }
}

/// One change made through the emulator's control API.
#[derive(Clone, Debug)]
pub enum Change {
    Set {
        vault: String,
        name: String,
        version: Version,
    },
    SetEnabled {
        vault: String,
        name: String,
        enabled: bool,
    },
    Delete {
        vault: String,
        name: String,
    },
}

impl Change {
    fn secret(&self) -> (&str, &str) {
        match self {
            Change::Set { vault, name, .. }
            | Change::SetEnabled { vault, name, .. }
            | Change::Delete { vault, name } => (vault, name),
        }
    }
}

struct Epoch {
    state: VaultState,
    /// Start of the control call that made this state (it may be live from then).
    began: At,
    /// End of that call (it is live by then).
    applied: At,
    /// The secret the change touched.
    changed: (String, String),
    what: String,
}

/// Every state the vaults went through.
pub struct History {
    epochs: Vec<Epoch>,
    /// value → "vault/name@version" (for traces that never print a value).
    origin: BTreeMap<String, String>,
    /// Every (vault, name, version) ever created.
    known: BTreeSet<(String, String, String)>,
}

impl Default for History {
    fn default() -> Self {
        History {
            epochs: vec![Epoch {
                state: VaultState::default(),
                began: At::ZERO,
                applied: At::ZERO,
                changed: (String::new(), String::new()),
                what: "start".into(),
            }],
            origin: BTreeMap::new(),
            known: BTreeSet::new(),
        }
    }
}

impl History {
    pub fn record(&mut self, change: Change, began: At, applied: At) {
        let mut state = self.current().clone();
        state.apply(&change);
        let (vault, name) = change.secret();
        let what = match &change {
            Change::Set { version, .. } => {
                let label = format!("{vault}/{name}@{}", short(&version.id));
                self.known
                    .insert((vault.to_owned(), name.to_owned(), version.id.clone()));
                self.origin.insert(version.value.clone(), label.clone());
                if let Ok(serde_json::Value::Object(fields)) =
                    serde_json::from_str::<serde_json::Value>(&version.value)
                {
                    for (field, value) in fields {
                        if let Some(text) = value.as_str() {
                            self.origin
                                .insert(text.to_owned(), format!("{label}.{field}"));
                        }
                    }
                }
                format!("set {label}")
            }
            Change::SetEnabled { enabled, .. } => {
                format!(
                    "{} {vault}/{name}",
                    if *enabled { "enable" } else { "disable" }
                )
            }
            Change::Delete { .. } => format!("delete {vault}/{name}"),
        };
        self.epochs.push(Epoch {
            changed: (vault.to_owned(), name.to_owned()),
            state,
            began,
            applied,
            what,
        });
    }

    pub fn current(&self) -> &VaultState {
        &self.epochs.last().expect("an initial epoch").state
    }

    /// Indices of the states that may have been live at some moment of [from, to].
    fn live_during(&self, from: At, to: At) -> std::ops::Range<usize> {
        let first = (0..self.epochs.len())
            .find(|&k| {
                self.epochs
                    .get(k + 1)
                    .is_none_or(|next| next.applied >= from)
            })
            .unwrap_or(self.epochs.len() - 1);
        let end = (first..self.epochs.len())
            .take_while(|&k| self.epochs[k].began <= to)
            .last()
            .map_or(first + 1, |k| k + 1);
        first..end
    }

    /// The states of [from, to] in which `relevant` may differ: the first
    /// one and each later one whose change touched a secret it depends on.
    fn candidates<'a>(
        &'a self,
        from: At,
        to: At,
        relevant: impl Fn(&(String, String)) -> bool + 'a,
    ) -> impl Iterator<Item = &'a VaultState> + 'a {
        let range = self.live_during(from, to);
        let first = range.start;
        range
            .filter(move |&k| k == first || relevant(&self.epochs[k].changed))
            .map(|k| &self.epochs[k].state)
    }

    /// What a value is, for traces: `vault/name@version[.field]`.
    pub fn label(&self, value: &str) -> String {
        self.origin
            .get(value)
            .cloned()
            .unwrap_or_else(|| format!("<unknown value, {} bytes>", value.len()))
    }

    /// The last changes of these secrets, for traces.
    pub fn timeline(&self, secrets: &BTreeSet<(String, String)>, last: usize) -> Vec<String> {
        let lines: Vec<String> = self
            .epochs
            .iter()
            .filter(|e| secrets.contains(&e.changed))
            .map(|e| {
                format!(
                    "{:.1}–{:.1}s {}",
                    e.began.as_secs_f64(),
                    e.applied.as_secs_f64(),
                    e.what
                )
            })
            .collect();
        lines[lines.len().saturating_sub(last)..].to_vec()
    }
}

pub fn short(version: &str) -> &str {
    &version[..version.len().min(8)]
}

// ─────────────────────────────── specs ───────────────────────────────────

#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    Data {
        key: String,
        name: String,
        pin: Option<String>,
        property: Option<String>,
    },
    Extract {
        name: String,
    },
    Find(Find),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Find {
    /// `tags: {grp: <value>}`
    Tag(&'static str),
    /// `nameRegex: ^p[<lo>-<hi>]$`
    Plain(u8, u8),
}

impl Find {
    fn matches(self, name: &str) -> bool {
        match self {
            Find::Tag(value) => tags_of(name).get("grp").map(String::as_str) == Some(value),
            Find::Plain(lo, hi) => name
                .strip_prefix('p')
                .and_then(|d| d.parse::<u8>().ok())
                .is_some_and(|d| (lo..=hi).contains(&d)),
        }
    }

    pub fn name_regex(lo: u8, hi: u8) -> String {
        format!("^p[{lo}-{hi}]$")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    pub vault: String,
    /// 0: client secret of an app registration; 1: a federated service account.
    pub identity: usize,
    /// Seconds; 0 = sync once (and on triggers).
    pub interval: u64,
    pub entries: Vec<Entry>,
}

impl Spec {
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval)
    }

    /// Vault secrets named by `data` and `extract` (not by `find`).
    pub fn static_names(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Data { name, .. } | Entry::Extract { name } => Some(name.clone()),
                Entry::Find(_) => None,
            })
            .collect()
    }

    pub fn find(&self) -> Option<Find> {
        self.entries.iter().find_map(|e| match e {
            Entry::Find(find) => Some(*find),
            _ => None,
        })
    }

    /// Entries in the order kvsync reads them: `data`, then `dataFrom`.
    pub fn in_read_order(&self) -> impl Iterator<Item = &Entry> {
        let is_data = |e: &&Entry| matches!(e, Entry::Data { .. });
        let data = self.entries.iter().filter(is_data);
        data.chain(self.entries.iter().filter(move |e| !is_data(e)))
    }

    /// Names only, e.g. `north id1 5s [k0=p3@1a2b3c4d, extract j0, find grp=a]`.
    pub fn summary(&self) -> String {
        let entries: Vec<String> = self
            .entries
            .iter()
            .map(|e| match e {
                Entry::Data {
                    key,
                    name,
                    pin,
                    property,
                } => format!(
                    "{key}={name}{}{}",
                    pin.as_deref()
                        .map(|p| format!("@{}", short(p)))
                        .unwrap_or_default(),
                    property
                        .as_deref()
                        .map(|p| format!(".{p}"))
                        .unwrap_or_default()
                ),
                Entry::Extract { name } => format!("extract {name}"),
                Entry::Find(Find::Tag(t)) => format!("find grp={t}"),
                Entry::Find(Find::Plain(lo, hi)) => format!("find {}", Find::name_regex(*lo, *hi)),
            })
            .collect();
        format!(
            "{} id{} {}s [{}]",
            self.vault,
            self.identity,
            self.interval,
            entries.join(", ")
        )
    }

    /// The KeyVaultSecret spec.
    pub fn to_json(&self, vault_url: &str, auth: serde_json::Value) -> serde_json::Value {
        use serde_json::json;
        let mut data = Vec::new();
        let mut data_from = Vec::new();
        for entry in &self.entries {
            match entry {
                Entry::Data {
                    key,
                    name,
                    pin,
                    property,
                } => {
                    let mut remote = json!({"name": name});
                    if let Some(pin) = pin {
                        remote["version"] = json!(pin);
                    }
                    if let Some(property) = property {
                        remote["property"] = json!(property);
                    }
                    data.push(json!({"secretKey": key, "remoteRef": remote}));
                }
                Entry::Extract { name } => data_from.push(json!({"extract": {"name": name}})),
                Entry::Find(Find::Tag(t)) => data_from.push(json!({"find": {"tags": {"grp": t}}})),
                Entry::Find(Find::Plain(lo, hi)) => {
                    data_from.push(json!({"find": {"nameRegex": Find::name_regex(*lo, *hi)}}))
                }
            }
        }
        let interval = if self.interval == 0 {
            "0".to_owned()
        } else {
            format!("{}s", self.interval)
        };
        json!({"vaultUrl": vault_url, "auth": auth, "refreshInterval": interval,
               "data": data, "dataFrom": data_from})
    }
}

// ────────────────────────────── rendering ────────────────────────────────

/// Why an entry cannot be rendered, as the operator's `Ready` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Broken {
    Disabled,
    NotFound,
}

impl Broken {
    pub fn reason(self) -> &'static str {
        match self {
            Broken::Disabled => "RemoteDisabled",
            Broken::NotFound => "RemoteNotFound",
        }
    }
}

pub type Rendered = Result<BTreeMap<String, String>, Broken>;

fn readable<'a>(
    state: &'a VaultState,
    vault: &str,
    name: &str,
    pin: Option<&str>,
) -> Result<&'a Version, Broken> {
    let version = match pin {
        Some(pin) => state.versions(vault, name).iter().find(|v| v.id == pin),
        None => state.latest(vault, name),
    }
    .ok_or(Broken::NotFound)?;
    if version.enabled {
        Ok(version)
    } else {
        Err(Broken::Disabled)
    }
}

fn json_object(value: &str) -> BTreeMap<String, String> {
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The enabled secrets of `vault` a `find` matches.
fn find_matches(find: Find, vault: &str, state: &VaultState) -> BTreeSet<String> {
    PLAIN
        .iter()
        .chain(JSON.iter())
        .filter(|name| find.matches(name))
        .filter(|name| state.latest(vault, name).is_some_and(|v| v.enabled))
        .map(|name| name.to_string())
        .collect()
}

pub fn render_entry(entry: &Entry, vault: &str, state: &VaultState) -> Rendered {
    match entry {
        Entry::Data {
            key,
            name,
            pin,
            property,
        } => {
            let version = readable(state, vault, name, pin.as_deref())?;
            let value = match property {
                Some(field) => json_object(&version.value)
                    .remove(field)
                    .unwrap_or_default(),
                None => version.value.clone(),
            };
            Ok(BTreeMap::from([(key.clone(), value)]))
        }
        Entry::Extract { name } => Ok(json_object(&readable(state, vault, name, None)?.value)),
        Entry::Find(find) => Ok(find_matches(*find, vault, state)
            .into_iter()
            .map(|name| {
                let value = state.latest(vault, &name).expect("matched").value.clone();
                (name, value)
            })
            .collect()),
    }
}

/// The whole Secret data in one state, or the ways it is broken.
pub fn render(
    spec: &Spec,
    state: &VaultState,
) -> Result<BTreeMap<String, String>, BTreeSet<Broken>> {
    let mut data = BTreeMap::new();
    let mut broken = BTreeSet::new();
    for entry in &spec.entries {
        match render_entry(entry, &spec.vault, state) {
            Ok(part) => data.extend(part),
            Err(why) => {
                broken.insert(why);
            }
        }
    }
    if broken.is_empty() {
        Ok(data)
    } else {
        Err(broken)
    }
}

/// Whether a change of this secret may change what `entry` renders.
fn depends_on(entry: &Entry, vault: &str, changed: &(String, String)) -> bool {
    changed.0 == vault
        && match entry {
            Entry::Data { name, .. } | Entry::Extract { name } => *name == changed.1,
            Entry::Find(_) => true,
        }
}

/// The Secret keys an entry owns, among those present.
fn keys_of<'a>(entry: &Entry, present: impl Iterator<Item = &'a String>) -> BTreeSet<String> {
    match entry {
        Entry::Data { key, .. } => BTreeSet::from([key.clone()]),
        Entry::Extract { name } => json_fields(name).into_iter().collect(),
        Entry::Find(_) => present
            .filter(|k| PLAIN.contains(&k.as_str()) || JSON.contains(&k.as_str()))
            .cloned()
            .collect(),
    }
}

/// Whether `part` is what `entry` may have rendered from the states of
/// [from, to]. A `find` lists, then reads each match on its own (Key Vault
/// has no snapshot of several secrets): its names come from one state, each
/// value from a state of its own.
fn entry_fits(
    entry: &Entry,
    vault: &str,
    part: &BTreeMap<String, String>,
    history: &History,
    from: At,
    to: At,
) -> bool {
    let renders: Vec<BTreeMap<String, String>> = history
        .candidates(from, to, |changed| depends_on(entry, vault, changed))
        .filter_map(|state| render_entry(entry, vault, state).ok())
        .collect();
    match entry {
        Entry::Find(_) => {
            renders.iter().any(|r| r.keys().eq(part.keys()))
                && part
                    .iter()
                    .all(|(name, value)| renders.iter().any(|r| r.get(name) == Some(value)))
        }
        Entry::Data { .. } | Entry::Extract { .. } => renders.iter().any(|r| r == part),
    }
}

/// Whether `data` is, entry by entry, what the vault may have held during
/// [from, to]; else the first entry that is not.
fn data_matches(
    spec: &Spec,
    data: &BTreeMap<String, String>,
    history: &History,
    from: At,
    to: At,
) -> Result<(), String> {
    let mut claimed = BTreeSet::new();
    for entry in &spec.entries {
        let keys = keys_of(entry, data.keys());
        let part: BTreeMap<String, String> = data
            .iter()
            .filter(|(k, _)| keys.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !entry_fits(entry, &spec.vault, &part, history, from, to) {
            let held: Vec<String> = part
                .iter()
                .map(|(k, v)| format!("{k}={}", history.label(v)))
                .collect();
            let secrets: BTreeSet<(String, String)> = PLAIN
                .iter()
                .chain(JSON.iter())
                .map(|n| (spec.vault.clone(), n.to_string()))
                .filter(|changed| depends_on(entry, &spec.vault, changed))
                .collect();
            let timeline = history.timeline(&secrets, 6).join("; ");
            return Err(format!(
                "entry {} holds [{}], not a rendering of any vault state live in the window; its vault history: {timeline}",
                Spec {
                    entries: vec![entry.clone()],
                    ..spec.clone()
                }
                .summary(),
                held.join(", ")
            ));
        }
        claimed.extend(keys);
    }
    let extra: Vec<&String> = data.keys().filter(|k| !claimed.contains(*k)).collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(format!("keys {extra:?} belong to no entry of the spec"))
    }
}

// ─────────────────────────────── time ────────────────────────────────────

/// When the operator was not running, or had just started.
#[derive(Default)]
pub struct Clock {
    /// (stop began, started again + RESTART_GRACE), in order, disjoint.
    downtimes: Vec<(At, At)>,
}

impl Clock {
    /// The operator is down (or just started) from `from` until `to`.
    pub fn down(&mut self, from: At, to: At) {
        match self.downtimes.last_mut() {
            Some(last) if from <= last.1 => last.1 = last.1.max(to),
            _ => self.downtimes.push((from, to)),
        }
    }

    /// When the operator is up again (after the last grace).
    pub fn up_again(&self) -> At {
        self.downtimes.last().map_or(At::ZERO, |d| d.1)
    }

    pub fn downtimes(&self) -> &[(At, At)] {
        &self.downtimes
    }

    /// Operator time between `from` and `to`: wall time minus downtimes.
    pub fn uptime(&self, from: At, to: At) -> Duration {
        let down: Duration = self
            .downtimes
            .iter()
            .map(|&(s, e)| e.min(to).saturating_sub(s.max(from)))
            .sum();
        to.saturating_sub(from).saturating_sub(down)
    }

    /// The moment `budget` of operator time before `now`.
    pub fn back(&self, now: At, budget: Duration) -> At {
        let mut t = now;
        let mut remaining = budget;
        for &(s, e) in self.downtimes.iter().rev() {
            if s >= t {
                continue;
            }
            let gap = t.saturating_sub(e.min(t));
            if gap >= remaining {
                return t - remaining;
            }
            remaining -= gap;
            t = s;
        }
        t.saturating_sub(remaining)
    }
}

// ─────────────────────────────── objects ─────────────────────────────────

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Created,
    SpecEdit,
    ForceSync,
    TargetDeleted,
}

/// One KeyVaultSecret as the test made it.
pub struct Object {
    pub name: String,
    /// generation → (spec, when the write returned).
    pub specs: BTreeMap<i64, (Spec, At)>,
    pub triggers: Vec<(At, Trigger)>,
    /// Last time the checker saw `Ready=True`.
    pub last_seen_ready: Option<At>,
    /// Since when the object has been seen failing with an unchanged status.
    pub failing: Option<Failing>,
}

/// A failing object's status and Secret when first seen so: while the
/// status stays the same, the Secret must too.
pub struct Failing {
    kvs_version: String,
    since: At,
    data: Option<BTreeMap<String, String>>,
    /// When the Secret was first seen changed nonetheless.
    changed_seen: Option<At>,
}

impl Object {
    pub fn current(&self) -> (i64, &Spec) {
        let (generation, (spec, _)) = self.specs.last_key_value().expect("a spec");
        (*generation, spec)
    }

    fn target_deletions(&self) -> impl Iterator<Item = At> + '_ {
        self.triggers
            .iter()
            .filter(|(_, t)| *t == Trigger::TargetDeleted)
            .map(|(at, _)| *at)
    }

    /// Specs that were current at some moment of [from, to].
    fn specs_during(&self, from: At, to: At) -> impl Iterator<Item = &Spec> {
        let set_ats: Vec<At> = self.specs.values().map(|(_, at)| *at).collect();
        self.specs
            .values()
            .enumerate()
            .filter(move |(i, (_, at))| {
                *at <= to && set_ats.get(i + 1).is_none_or(|next| *next >= from)
            })
            .map(|(_, (spec, _))| spec)
    }

    /// The oldest vault moment the data of a Ready object may show at `now`:
    /// one interval (+ jitter + slack) of operator time back — the longest
    /// interval of any spec in force during that window, none if one was 0.
    /// For `refreshInterval: 0` (no periodic bound): never before the last
    /// creation, spec edit, force-sync or target deletion the operator has
    /// had SLACK to act on, plus the minimum refresh interval (an object
    /// reads as of now at most once per that interval). (With an interval, the interval is the bound: a
    /// force-sync reads as of now, but a later refresh may use a listing as
    /// old as the interval allows.)
    fn floor(&self, clock: &Clock, now: At, observed_generation: i64) -> At {
        let (generation, spec) = self.current();
        let mut periodic = None;
        if spec.interval > 0 {
            let window_start = clock.back(now, staleness_bound(spec.interval()));
            let recent: Vec<&Spec> = self
                .specs_during(window_start, now)
                .chain(self.specs.range(observed_generation..).map(|(_, (s, _))| s))
                .collect();
            if recent.iter().all(|s| s.interval > 0) {
                let longest = recent
                    .iter()
                    .map(|s| s.interval())
                    .max()
                    .expect("the current spec");
                periodic = Some(clock.back(now, staleness_bound(longest)));
            }
        }
        let once = spec.interval == 0 && observed_generation == generation;
        let triggered = self
            .triggers
            .iter()
            .filter(|_| once)
            .map(|(at, _)| *at)
            .filter(|at| clock.uptime(*at, now) >= SLACK + crate::support::MIN_REFRESH_INTERVAL)
            .max();
        periodic
            .into_iter()
            .chain(triggered)
            .max()
            .unwrap_or(At::ZERO)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ready {
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
}

/// One object and its Secret as read by the test.
#[derive(Clone, Debug)]
pub struct Observation {
    pub kvs_version: String,
    pub ready: Option<Ready>,
    pub status_generation: Option<i64>,
    pub synced_versions: BTreeMap<String, String>,
    pub secret: Option<(String, BTreeMap<String, String>)>,
    /// The rollout of the Secret's data counted (`RolledOut` present, not
    /// `Pending`): the status's last write after a sync.
    pub rollout_counted: bool,
    /// Before the KeyVaultSecret was read.
    pub read_from: At,
    /// After the Secret was read.
    pub read_to: At,
}

#[derive(Debug)]
pub struct Violation {
    pub rule: &'static str,
    pub object: String,
    pub detail: String,
}

/// What a foreign Secret (cert-manager's, say) looks like now: its data,
/// whether it has an ownerReference, whether it is immutable.
#[derive(Debug)]
pub struct Foreign {
    pub data: BTreeMap<String, String>,
    pub owned: bool,
    pub immutable: bool,
}

/// The rule for Secrets kvsync did not create, whatever KeyVaultSecrets
/// merge into them, change their policy or rename away from them: the
/// Secret stays, with every key and value it was made with (kvsync's own
/// keys may come and go), gains no ownerReference and is never frozen.
pub fn check_foreign(
    name: &str,
    now: Option<&Foreign>,
    original: &BTreeMap<String, String>,
) -> Option<Violation> {
    let violation = |detail: String| {
        Some(Violation {
            rule: "foreign-keeps-its-data",
            object: name.to_owned(),
            detail,
        })
    };
    let Some(now) = now else {
        return violation("the foreign Secret was deleted".into());
    };
    let lost: Vec<&String> = original
        .iter()
        .filter(|(k, v)| now.data.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    if !lost.is_empty() {
        return violation(format!("lost or changed its keys {lost:?}"));
    }
    if now.owned {
        return violation("gained an ownerReference".into());
    }
    if now.immutable {
        return violation("became immutable".into());
    }
    None
}

/// The vault secret a `syncedVersions` key is about: keys may carry a
/// qualifier (a pin, a kind) after a character no secret name can contain.
fn synced_name(key: &str) -> &str {
    let end = key
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(key.len());
    &key[..end]
}

/// `status.syncedVersions` names exactly the current spec's refs (and the
/// `find` matches of a state live in [from, to]), each with a version the
/// vault has had.
fn synced_versions_match(
    spec: &Spec,
    synced: &BTreeMap<String, String>,
    history: &History,
    from: At,
    to: At,
) -> Result<(), String> {
    let names: BTreeSet<String> = synced.keys().map(|k| synced_name(k).to_owned()).collect();
    let fixed = spec.static_names();
    let found: BTreeSet<String> = names.difference(&fixed).cloned().collect();
    let missing: Vec<&String> = fixed.difference(&names).collect();
    if !missing.is_empty() {
        return Err(format!(
            "syncedVersions lacks {missing:?} ({:?})",
            synced.keys()
        ));
    }
    let fits = match spec.find() {
        None => found.is_empty(),
        Some(find) => history
            .candidates(from, to, |changed| changed.0 == spec.vault)
            .any(|state| {
                find_matches(find, &spec.vault, state)
                    .difference(&fixed)
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    == found
            }),
    };
    if !fits {
        return Err(format!(
            "syncedVersions has {:?}, the spec refers to {fixed:?}{}",
            synced.keys(),
            if spec.find().is_some() {
                " plus find matches"
            } else {
                ""
            }
        ));
    }
    for (key, version) in synced {
        let name = synced_name(key);
        let known = (spec.vault.clone(), name.to_owned(), version.clone());
        if !history.known.contains(&known) {
            return Err(format!(
                "syncedVersions {key}={} is no version the vault had",
                short(version)
            ));
        }
    }
    Ok(())
}

/// The rule of issue 10 for one observation of one object (and the
/// object's memory of what it saw, for the next observation).
pub fn check(
    object: &mut Object,
    seen: &Observation,
    history: &History,
    clock: &Clock,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let name = object.name.clone();
    let mut fail = |rule, detail: String| {
        violations.push(Violation {
            rule,
            object: name.clone(),
            detail,
        })
    };
    let now = seen.read_from;
    let (generation, spec) = object.current();
    let (_, set_at) = object.specs[&generation];
    let Some(ready) = &seen.ready else {
        return violations;
    };
    if ready.status {
        if ready.observed_generation < generation && clock.uptime(set_at, now) >= SLACK {
            fail(
                "spec-observed",
                format!(
                    "Ready=True for generation {} but generation {generation} was set {:.1}s ago",
                    ready.observed_generation,
                    now.saturating_sub(set_at).as_secs_f64()
                ),
            );
        }
        let floor = object.floor(clock, now, ready.observed_generation);
        match &seen.secret {
            None => {
                let just_deleted = object
                    .target_deletions()
                    .any(|at| clock.uptime(at, now) < SLACK);
                if !just_deleted {
                    fail(
                        "ready-without-secret",
                        "Ready=True but the Secret does not exist".into(),
                    );
                }
            }
            Some((_, data)) => {
                let mut why = Vec::new();
                let fits = object
                    .specs
                    .range(ready.observed_generation..)
                    .any(|(_, (s, _))| {
                        data_matches(s, data, history, floor, seen.read_to)
                            .map_err(|e| why.push(e))
                            .is_ok()
                    });
                if !fits {
                    fail(
                        "ready-but-stale",
                        format!(
                            "Ready=True (generation {}), allowed window starts {:.1}s ago (spec {}): {}",
                            ready.observed_generation,
                            now.saturating_sub(floor).as_secs_f64(),
                            spec.summary(),
                            why.last().cloned().unwrap_or_default()
                        ),
                    );
                }
            }
        }
        if ready.observed_generation == generation
            && seen.status_generation == Some(generation)
            && let Err(e) =
                synced_versions_match(spec, &seen.synced_versions, history, floor, seen.read_to)
        {
            fail("synced-versions", e);
        }
    } else {
        let deletions: Vec<At> = object.target_deletions().collect();
        let deleted_since = |t: At| deletions.iter().any(|at| *at >= t);
        let data = seen.secret.as_ref().map(|(_, d)| d.clone());
        match &mut object.failing {
            Some(failing)
                if failing.kvs_version == seen.kvs_version && !deleted_since(failing.since) =>
            {
                if failing.data != data {
                    // A successful sync writes the Secret, then its status:
                    // give the status write SLACK to follow.
                    let changed = *failing.changed_seen.get_or_insert(now);
                    if clock.uptime(changed, now) >= SLACK {
                        fail(
                            "failing-sync-keeps-last-good",
                            format!(
                                "Ready=False ({}) unchanged since {:.1}s, yet the Secret changed ({} → {}) {:.1}s ago",
                                ready.reason,
                                failing.since.as_secs_f64(),
                                if failing.data.is_some() {
                                    "present"
                                } else {
                                    "absent"
                                },
                                if data.is_some() { "present" } else { "absent" },
                                now.saturating_sub(changed).as_secs_f64()
                            ),
                        );
                    }
                }
            }
            _ => {
                object.failing = Some(Failing {
                    kvs_version: seen.kvs_version.clone(),
                    since: seen.read_to,
                    data,
                    changed_seen: None,
                })
            }
        }
    }
    if ready.status {
        object.failing = None;
        // Good only with the Secret there: right after the test deletes a
        // target, the status still says Ready until kvsync reacts.
        if seen.secret.is_some() {
            object.last_seen_ready = Some(now);
        }
    }
    violations
}

/// The first entry kvsync cannot render, in the order it reads them: the
/// vault secret's name and why.
fn first_broken(spec: &Spec, state: &VaultState) -> Option<(String, Broken)> {
    spec.in_read_order().find_map(|entry| {
        let why = render_entry(entry, &spec.vault, state).err()?;
        match entry {
            Entry::Data { name, .. } | Entry::Extract { name } => Some((name.clone(), why)),
            Entry::Find(_) => None,
        }
    })
}

/// Whether a condition message is about vault secret `name`.
fn names_secret(message: &str, name: &str) -> bool {
    message.starts_with(&format!("secret {name} "))
}

/// Whether an object has caught up with the vault's current state: Ready
/// with its rendering and exact `syncedVersions`, or — when a ref is
/// disabled or deleted — not Ready with the reason of the first such ref
/// kvsync reads, its name in the message, and the last good Secret kept.
pub fn settled(
    object: &Object,
    seen: &Observation,
    history: &History,
    check_versions: bool,
) -> Result<(), String> {
    let (generation, spec) = object.current();
    let ready = seen.ready.as_ref().ok_or("no Ready condition")?;
    if ready.observed_generation != generation || seen.status_generation != Some(generation) {
        return Err(format!(
            "status is for generation {} (condition {}), spec is {generation}",
            seen.status_generation.unwrap_or(0),
            ready.observed_generation
        ));
    }
    let now = history.epochs.last().expect("an epoch").applied;
    match render(spec, history.current()) {
        Ok(data) => {
            if !ready.status {
                return Err(format!(
                    "Ready=False ({}), all refs are readable",
                    ready.reason
                ));
            }
            if !seen.rollout_counted {
                return Err("the rollout of the Secret's data not counted yet (RolledOut)".into());
            }
            let held = seen.secret.as_ref().map(|(_, d)| d);
            if held != Some(&data) {
                let labels = |d: &BTreeMap<String, String>| -> Vec<String> {
                    d.iter()
                        .map(|(k, v)| format!("{k}={}", history.label(v)))
                        .collect()
                };
                return Err(format!(
                    "Secret holds {:?}, the vault has {:?}",
                    held.map(labels),
                    labels(&data)
                ));
            }
            // Only the current state: it has been live since `now` at the latest.
            let after = now + Duration::from_millis(1);
            match check_versions {
                true => synced_versions_match(spec, &seen.synced_versions, history, after, after),
                false => Ok(()),
            }
        }
        Err(_) => {
            // kvsync stops at the first broken entry it reads: the condition
            // names that one (else kvsync has not yet seen the vault's state).
            let (name, why) = first_broken(spec, history.current()).expect("a broken entry");
            if ready.status || ready.reason != why.reason() || !names_secret(&ready.message, &name)
            {
                return Err(format!(
                    "Ready={} ({}: {}), want False with {} naming {name}",
                    ready.status,
                    ready.reason,
                    ready.message,
                    why.reason()
                ));
            }
            let deleted_since_good = object
                .target_deletions()
                .any(|at| object.last_seen_ready.is_none_or(|r| at >= r));
            if seen.secret.is_none() && object.last_seen_ready.is_some() && !deleted_since_good {
                return Err("the last good Secret is gone".into());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> At {
        Duration::from_secs(secs)
    }

    #[test]
    fn clock_skips_downtime() {
        let mut clock = Clock::default();
        clock.down(s(10), s(15));
        clock.down(s(12), s(20));
        assert_eq!(clock.downtimes(), [(s(10), s(20))]);
        assert_eq!(clock.uptime(s(0), s(30)), s(20));
        assert_eq!(clock.back(s(30), s(5)), s(25));
        assert_eq!(clock.back(s(30), s(15)), s(5));
        assert_eq!(clock.back(s(15), s(3)), s(7));
    }

    #[test]
    fn a_state_is_live_until_the_next_change_has_surely_happened() {
        let mut history = History::default();
        let set = |id: &str| Change::Set {
            vault: "north".into(),
            name: "p0".into(),
            version: Version {
                id: id.into(),
                value: id.into(),
                enabled: true,
            },
        };
        history.record(set("v1"), s(1), s(2));
        history.record(set("v2"), s(5), s(6));
        assert_eq!(history.live_during(s(7), s(8)), 2..3);
        assert_eq!(history.live_during(s(6), s(8)), 1..3);
        assert_eq!(history.live_during(s(3), s(4)), 1..2);
    }

    #[test]
    fn a_find_may_mix_moments_but_not_invent_a_value() {
        let mut history = History::default();
        let set = |name: &str, id: &str| Change::Set {
            vault: "north".into(),
            name: name.into(),
            version: Version {
                id: id.into(),
                value: id.into(),
                enabled: true,
            },
        };
        history.record(set("p0", "p0-old"), s(1), s(1));
        history.record(set("p1", "p1-old"), s(1), s(1));
        // Both change in one step, p1 first: a reader that read p1 before
        // and p0 after holds a pair no single state ever had.
        history.record(set("p1", "p1-new"), s(10), s(10));
        history.record(set("p0", "p0-new"), s(10), s(10));
        let find = Entry::Find(Find::Plain(0, 1));
        let part = |p0: &str, p1: &str| {
            BTreeMap::from([
                ("p0".to_owned(), p0.to_owned()),
                ("p1".to_owned(), p1.to_owned()),
            ])
        };
        assert!(entry_fits(
            &find,
            "north",
            &part("p0-new", "p1-old"),
            &history,
            s(5),
            s(11)
        ));
        assert!(!entry_fits(
            &find,
            "north",
            &part("p0-new", "p1-gone"),
            &history,
            s(5),
            s(11)
        ));
        assert!(
            !entry_fits(
                &find,
                "north",
                &part("p0-old", "p1-old"),
                &history,
                s(11),
                s(12)
            ),
            "a value older than the window"
        );
        let only_p0 = BTreeMap::from([("p0".to_owned(), "p0-new".to_owned())]);
        assert!(
            !entry_fits(&find, "north", &only_p0, &history, s(5), s(11)),
            "a set of names no state had"
        );
    }
}
