//! Composition root of `kvsync run` (skeleton).
use crate::cli::{CrdArgs, RunArgs};

pub async fn run(_args: RunArgs) -> Result<(), String> {
    Err("not yet".into())
}

pub async fn crd(_args: CrdArgs) -> Result<(), String> {
    Err("not yet".into())
}
