//! Target policies an ESO user expects: what happens to the Secret when the
//! remote secrets are deleted, and whether a ref reads a value or its tags;
//! and one ESO lacks: whether a version that is not valid yet is taken.
//!
//! ```text
//!  remote secret deleted (404) ─ Retain (default): RemoteNotFound, the Secret keeps its data
//!                              ├ Merge:  its keys leave the Secret; the Secret stays
//!                              └ Delete: its keys leave; when none is left the Secret goes
//!  remoteRef.metadataPolicy ── None (default): the value
//!                              └ Fetch: the tags — one (`property`: tag name) or all as a JSON object
//!  notBeforePolicy ─────────── Respect (default): the newest version valid now (nbf ≤ now); a newer
//!                              │   one is pending, and taken at its nbf (a rotation scheduled in Key Vault)
//!                              └ Ignore: the newest version, whatever its nbf (what ESO does)
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a sync does when a referenced remote secret no longer exists.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the Secret as it is and report `RemoteNotFound`.
    #[default]
    Retain,
    /// Drop the missing secret's keys; keep the Secret even when empty.
    Merge,
    /// Drop the missing secret's keys; delete the Secret when no key is left.
    Delete,
}

/// What a `data[]` ref reads: the value, or the secret's tags.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MetadataPolicy {
    #[default]
    None,
    /// The tags: one tag (`property` names it) or all as a JSON object.
    Fetch,
}

/// Which version of a remote secret a ref that pins none reads, given Key
/// Vault's `nbf` (not before), which Key Vault itself does not enforce.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NotBeforePolicy {
    /// The newest enabled version whose `nbf` has passed (or that has none);
    /// a newer one is pending until its `nbf`, then taken within seconds.
    #[default]
    Respect,
    /// The newest version as soon as it exists, whatever its `nbf`.
    Ignore,
}
