//! Which hosts may receive a Key Vault bearer token.
//!
//! A KeyVaultSecret names its vault by URL, and whoever can create one could
//! otherwise point kvsync (and a token for the team's identity) at a server of
//! their choosing. So the host must match an allow-list before any request is
//! made. Patterns are exact host names or `*.suffix` (any subdomain, not the
//! bare suffix).

/// The public and sovereign Azure clouds' Key Vault and Managed HSM domains.
pub const DEFAULT_VAULT_HOSTS: &[&str] = &[
    "*.vault.azure.net",
    "*.vault.azure.cn",
    "*.vault.usgovcloudapi.net",
    "*.vault.microsoftazure.de",
    "*.managedhsm.azure.net",
];

/// The allow-list: the defaults plus what the operator was told (`--allow-vault-host`).
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    extra: Vec<String>,
}

impl AllowedHosts {
    pub fn new(extra: &[String]) -> Self {
        AllowedHosts {
            extra: extra.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a token for this host may be sent at all.
    pub fn allows(&self, host: &str) -> bool {
        DEFAULT_VAULT_HOSTS.iter().any(|p| matches(p, host)) || self.is_extra(host)
    }

    /// Whether the host was allowed only by `--allow-vault-host`. Such hosts
    /// (the emulator, a private endpoint alias) do not end in the challenge
    /// resource's domain, so the SDK's challenge-resource check is turned off
    /// for them — and only for them.
    pub fn is_extra(&self, host: &str) -> bool {
        !DEFAULT_VAULT_HOSTS.iter().any(|p| matches(p, host))
            && self.extra.iter().any(|p| matches(p, host))
    }
}

fn matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => host == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn azure_vaults_are_allowed_and_lookalikes_are_not() {
        let hosts = AllowedHosts::new(&[]);
        assert!(hosts.allows("shop-kv.vault.azure.net"));
        assert!(hosts.allows("SHOP.vault.azure.cn"));
        assert!(
            !hosts.allows("vault.azure.net"),
            "the bare suffix is not a vault"
        );
        assert!(!hosts.allows("evilvault.azure.net"));
        assert!(!hosts.allows("shop.vault.azure.net.evil.com"));
        assert!(!hosts.allows("localhost"));
    }

    #[test]
    fn extra_hosts_are_exact_or_wildcard() {
        let hosts = AllowedHosts::new(&["localhost".into(), "*.kv.internal".into()]);
        assert!(hosts.allows("localhost") && hosts.is_extra("localhost"));
        assert!(hosts.allows("a.kv.internal"));
        assert!(!hosts.allows("127.0.0.1"));
        assert!(!hosts.is_extra("shop.vault.azure.net"));
    }
}
