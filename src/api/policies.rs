//! Target policies an ESO user expects: what happens to the Secret when the
//! remote secrets are deleted, and whether a ref reads a value or its tags.
//!
//! ```text
//!  remote secret deleted (404) ─ Retain (default): RemoteNotFound, the Secret keeps its data
//!                              ├ Merge:  its keys leave the Secret; the Secret stays
//!                              └ Delete: its keys leave; when none is left the Secret goes
//!  remoteRef.metadataPolicy ── None (default): the value
//!                              └ Fetch: the tags — one (`property`: tag name) or all as a JSON object
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
