//! A credential that asks Entra ID for one scope only.
//!
//! The SDK's Key Vault client learns the token scope from the vault's 401
//! challenge (`WWW-Authenticate: Bearer … resource="…"`). A server that is
//! not Key Vault — any host a KeyVaultSecret may name, and `--allow-vault-host`
//! hosts where the SDK's challenge check is off — could name Azure Resource
//! Manager or Graph there and have kvsync fetch (and send it) a token for
//! that resource with the team's or the operator's identity. Every SDK client
//! is given its credential through [`KeyVaultOnly`]: a request naming the
//! cloud's Key Vault resource (see [`super::hosts`]) is passed on with kvsync's
//! own scope string, any other is refused before Entra ID is asked.

use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;

/// The vault asked for a token for something other than Key Vault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the vault at {host} asked for a token for {requested:?}; kvsync only requests {allowed} for this host, so no token was requested"
)]
pub struct ForeignScope {
    pub host: String,
    pub requested: Vec<String>,
    pub allowed: String,
}

/// `inner`, restricted to the scope `allowed`.
#[derive(Debug)]
pub struct KeyVaultOnly {
    pub inner: Arc<dyn TokenCredential>,
    pub host: String,
    pub allowed: String,
}

#[async_trait::async_trait]
impl TokenCredential for KeyVaultOnly {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if !matches!(scopes, [scope] if same_resource(scope, &self.allowed)) {
            tracing::warn!(host = %self.host, requested = ?scopes, allowed = %self.allowed, "refused a token request for a foreign scope");
            return Err(azure_core::Error::new(
                ErrorKind::Credential,
                ForeignScope {
                    host: self.host.clone(),
                    requested: scopes.iter().map(|s| s.to_string()).collect(),
                    allowed: self.allowed.clone(),
                },
            ));
        }
        self.inner
            .get_token(&[self.allowed.as_str()], options)
            .await
    }
}

/// Whether two scopes name the same resource (`https://vault.azure.net`,
/// `https://vault.azure.net/` and their `/.default` are one).
fn same_resource(a: &str, b: &str) -> bool {
    let resource = |scope: &str| {
        scope
            .trim_end_matches("/.default")
            .trim_end_matches('/')
            .to_ascii_lowercase()
    };
    resource(a) == resource(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_vault_resource_is_the_same() {
        let kv = "https://vault.azure.net/.default";
        assert!(same_resource("https://vault.azure.net/.default", kv));
        assert!(same_resource("https://vault.azure.net//.default", kv));
        assert!(same_resource("https://VAULT.azure.net", kv));
        assert!(!same_resource("https://management.azure.com/.default", kv));
        assert!(!same_resource(
            "https://vault.azure.net.evil.com/.default",
            kv
        ));
        assert!(!same_resource("https://graph.microsoft.com/.default", kv));
    }
}
