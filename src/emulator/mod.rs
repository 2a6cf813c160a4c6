//! A Key Vault + Entra ID emulator that speaks the real wire protocol.
