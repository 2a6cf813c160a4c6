//! Which hosts may receive a Key Vault bearer token, and for which resource.
//!
//! A KeyVaultSecret names its vault by URL, and whoever can create one could
//! otherwise point kvsync (and a token for the team's identity) at a server of
//! their choosing. So the host must match an allow-list before any request is
//! made. Patterns are exact host names or `*.suffix` (any subdomain, not the
//! bare suffix).
//!
//! The token's scope is fixed here too, never taken from the server: a vault
//! host of a cloud gets that cloud's Key Vault resource, and a host added with
//! `--allow-vault-host` the Key Vault resource of the cloud whose Entra ID the
//! operator signs in to (its authority host). A server whose challenge names
//! another resource (ARM, Graph) gets no token at all.
//!
//! ```text
//!  *.vault.azure.net            ─▶ https://vault.azure.net/.default
//!  *.vault.azure.cn             ─▶ https://vault.azure.cn/.default
//!  *.vault.usgovcloudapi.net    ─▶ https://vault.usgovcloudapi.net/.default
//!  *.vault.microsoftazure.de    ─▶ https://vault.microsoftazure.de/.default
//!  --allow-vault-host           ─▶ the authority host's cloud (public cloud if unknown)
//! ```
//!
//! Managed HSM (`*.managedhsm.azure.net`) serves keys only, no secrets, so it
//! is not on the list.

/// One Azure cloud: its Key Vault domain and its Entra ID authority host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cloud {
    pub vault_domain: &'static str,
    pub authority_host: &'static str,
}

/// The public and sovereign Azure clouds; the first is the default.
pub const CLOUDS: &[Cloud] = &[
    Cloud {
        vault_domain: "vault.azure.net",
        authority_host: "login.microsoftonline.com",
    },
    Cloud {
        vault_domain: "vault.azure.cn",
        authority_host: "login.chinacloudapi.cn",
    },
    Cloud {
        vault_domain: "vault.usgovcloudapi.net",
        authority_host: "login.microsoftonline.us",
    },
    Cloud {
        vault_domain: "vault.microsoftazure.de",
        authority_host: "login.microsoftonline.de",
    },
];

impl Cloud {
    /// The only scope kvsync asks Entra ID for on this cloud.
    pub fn key_vault_scope(&self) -> String {
        format!("https://{}/.default", self.vault_domain)
    }

    fn serves(&self, host: &str) -> bool {
        matches(&format!("*.{}", self.vault_domain), host)
    }

    /// The cloud of an authority host URL; the public cloud if unknown (the emulator).
    fn of_authority(authority_host: &str) -> Cloud {
        let host = url::Url::parse(authority_host)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        CLOUDS
            .iter()
            .find(|cloud| host.as_deref() == Some(cloud.authority_host))
            .copied()
            .unwrap_or(CLOUDS[0])
    }
}

/// The default allow-list, for messages: `*.vault.azure.net, …`.
pub fn default_vault_hosts() -> String {
    CLOUDS
        .iter()
        .map(|cloud| format!("*.{}", cloud.vault_domain))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The allow-list: the clouds' vault domains plus what the operator was told
/// (`--allow-vault-host`), whose tokens are for the operator's own cloud.
#[derive(Clone, Debug)]
pub struct AllowedHosts {
    extra: Vec<String>,
    home: Cloud,
}

impl AllowedHosts {
    pub fn new(extra: &[String], authority_host: &str) -> Self {
        AllowedHosts {
            extra: extra.iter().map(|h| h.to_ascii_lowercase()).collect(),
            home: Cloud::of_authority(authority_host),
        }
    }

    fn cloud_of(&self, host: &str) -> Option<Cloud> {
        CLOUDS.iter().find(|cloud| cloud.serves(host)).copied()
    }

    /// Whether a token for this host may be sent at all.
    pub fn allows(&self, host: &str) -> bool {
        self.token_scope(host).is_some()
    }

    /// The scope of the tokens sent to this host; `None` if none may be.
    pub fn token_scope(&self, host: &str) -> Option<String> {
        self.cloud_of(host)
            .or_else(|| self.is_extra(host).then_some(self.home))
            .map(|cloud| cloud.key_vault_scope())
    }

    /// Whether the host was allowed only by `--allow-vault-host`. Such hosts
    /// (the emulator, a private endpoint alias) do not end in the challenge
    /// resource's domain, so the SDK's challenge-resource check is turned off
    /// for them — the fixed scope still holds.
    pub fn is_extra(&self, host: &str) -> bool {
        self.cloud_of(host).is_none() && self.extra.iter().any(|p| matches(p, host))
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
        let hosts = AllowedHosts::new(&[], "https://login.microsoftonline.com/");
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
        let hosts = AllowedHosts::new(
            &["localhost".into(), "*.kv.internal".into()],
            "https://login.microsoftonline.com/",
        );
        assert!(hosts.allows("localhost") && hosts.is_extra("localhost"));
        assert!(hosts.allows("a.kv.internal"));
        assert!(!hosts.allows("127.0.0.1"));
        assert!(!hosts.is_extra("shop.vault.azure.net"));
    }

    #[test]
    fn managed_hsm_serves_no_secrets_and_is_not_allowed() {
        let hosts = AllowedHosts::new(&[], "https://login.microsoftonline.com/");
        assert!(!hosts.allows("shop.managedhsm.azure.net"));
        assert!(hosts.allows("shop.vault.usgovcloudapi.net"));
        assert!(hosts.allows("shop.vault.microsoftazure.de"));
    }

    #[test]
    fn the_scope_is_the_clouds_key_vault_never_the_servers_choice() {
        let china = AllowedHosts::new(&["kv.internal".into()], "https://login.chinacloudapi.cn/");
        assert_eq!(
            china.token_scope("shop.vault.azure.net").as_deref(),
            Some("https://vault.azure.net/.default")
        );
        assert_eq!(
            china.token_scope("SHOP.vault.azure.cn").as_deref(),
            Some("https://vault.azure.cn/.default")
        );
        assert_eq!(
            china.token_scope("kv.internal").as_deref(),
            Some("https://vault.azure.cn/.default"),
            "an extra host is in the operator's cloud"
        );
        assert_eq!(china.token_scope("management.azure.com"), None);
        let emulator = AllowedHosts::new(&["localhost".into()], "https://localhost:4443/");
        assert_eq!(
            emulator.token_scope("localhost").as_deref(),
            Some("https://vault.azure.net/.default")
        );
    }
}
