//! A Key Vault + Entra ID emulator that speaks the real wire protocol (skeleton: see branch `emulator`).

#[derive(clap::Args, Debug)]
pub struct EmulatorArgs {}

pub async fn run(_args: EmulatorArgs) -> Result<(), String> {
    Err("not yet".into())
}
