//! The emulator's own access tokens: RS256 JWTs shaped like Entra's v1 tokens,
//! signed with a key generated at start, for the resources the emulator stands
//! in for ([`Resource`]: Key Vault, an Event Grid namespace, and Storage, whose
//! tokens Azurite checks the shape of).
//!
//! A surface accepts a token only when the signature is the emulator's, the
//! audience is its own resource and the token has not expired; the caller's
//! identity is then the `appid` and `tid` claims. Tokens do not survive a
//! restart, like a real tenant's key rollover would not let them.
//!
//! A rollover ([`TokenAuthority::rollover`]) keeps the retired keys' public
//! halves: a token one of them signed is not garbage but *revoked*, which Key
//! Vault with continuous access evaluation answers with a claims challenge
//! (`error="insufficient_claims"`), the signal for SDKs to bypass their token
//! cache. Garbage and foreign keys stay plain `Invalid`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The resource (audience) of Key Vault data-plane tokens.
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";

/// A resource the token endpoint grants tokens for (its `aud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    KeyVault,
    /// Event Grid namespaces' data plane (receive, acknowledge, …).
    EventGrid,
    /// Azure Storage (queues): the emulator delivers events to Azurite with such
    /// tokens, and clients read the queue with them.
    Storage,
}

impl Resource {
    const ALL: [Resource; 3] = [Resource::KeyVault, Resource::EventGrid, Resource::Storage];

    /// The token audience, as Entra's v1 tokens carry it.
    pub fn audience(self) -> &'static str {
        match self {
            Resource::KeyVault => KEY_VAULT_RESOURCE,
            Resource::EventGrid => "https://eventgrid.azure.net",
            Resource::Storage => "https://storage.azure.com",
        }
    }

    /// The resource a `{resource}/.default` scope names.
    pub fn from_scope(scope: &str) -> Option<Self> {
        let resource = scope.trim().strip_suffix("/.default")?;
        Self::from_resource(resource)
    }

    /// The resource named by IMDS's `resource` parameter (trailing `/` allowed).
    pub fn from_resource(resource: &str) -> Option<Self> {
        let resource = resource.trim().trim_end_matches('/');
        Self::ALL.into_iter().find(|r| r.audience() == resource)
    }

    /// The scopes the token endpoint grants, for error messages.
    pub fn granted_scopes() -> String {
        Self::ALL
            .map(|r| format!("{}/.default", r.audience()))
            .join(", ")
    }
}
/// Lifetime of an access token, as `expires_in` reports it.
pub const TOKEN_LIFETIME_SECONDS: i64 = 3599;

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("cannot generate the token signing key: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot load the token signing key: {0}")]
    Load(#[from] jsonwebtoken::errors::Error),
}

/// Why a vault refuses a bearer token. The message becomes the 401's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("AKV10000: Request is missing a Bearer or PoP token.")]
    Missing,
    #[error(
        "AKV10022: Invalid token: the token is malformed or not signed by this tenant's authority."
    )]
    Invalid,
    #[error("AKV10022: Invalid audience. Expected {KEY_VAULT_RESOURCE}.")]
    WrongAudience,
    #[error("AKV10013: Token validation failed: the token has expired.")]
    Expired,
    #[error(
        "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{expected_tenant}/."
    )]
    WrongTenant { expected_tenant: String },
    /// Signed by a key retired at `since` (Unix seconds): the token was revoked.
    #[error("AKV10022: Invalid token: the token was revoked; get a new one.")]
    Revoked { since: i64 },
}

/// Claims of an emulator access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub tid: String,
    pub appid: String,
    pub oid: String,
    pub sub: String,
    pub idtyp: String,
    pub ver: String,
}

/// Who made a request, as established from its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant_id: String,
    pub client_id: String,
}

pub struct TokenAuthority {
    key_id: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Keys retired by rollovers, each with the time it was retired (newest last).
    retired: Vec<(DecodingKey, i64)>,
}

fn issuer_for(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

impl TokenAuthority {
    /// Generates a fresh RSA-2048 signing key.
    pub fn generate() -> Result<Self, TokenKeyError> {
        let key =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)?;
        Ok(Self {
            key_id: uuid::Uuid::new_v4().simple().to_string(),
            encoding: EncodingKey::from_rsa_pem(key.serialize_pem().as_bytes())?,
            decoding: DecodingKey::from_rsa_pem(key.public_key_pem().as_bytes())?,
            retired: Vec::new(),
        })
    }

    /// Replaces the signing key with a fresh one at `now`: every token issued so
    /// far is refused from now on, as [`TokenRejection::Revoked`].
    pub fn rollover(&mut self, now: i64) -> Result<(), TokenKeyError> {
        let mut fresh = Self::generate()?;
        fresh.retired = std::mem::take(&mut self.retired);
        let previous = std::mem::replace(self, fresh);
        self.retired.push((previous.decoding, now));
        Ok(())
    }

    /// Signs an access token for an app and `resource`, valid from `now` for
    /// [`TOKEN_LIFETIME_SECONDS`].
    pub fn issue(
        &self,
        resource: Resource,
        tenant_id: &str,
        client_id: &str,
        object_id: &str,
        now: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = AccessClaims {
            aud: resource.audience().to_owned(),
            iss: issuer_for(tenant_id),
            iat: now,
            nbf: now,
            exp: now + TOKEN_LIFETIME_SECONDS,
            tid: tenant_id.to_owned(),
            appid: client_id.to_owned(),
            oid: object_id.to_owned(),
            sub: object_id.to_owned(),
            idtyp: "app".to_owned(),
            ver: "1.0".to_owned(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".to_owned());
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
    }

    /// The public signing key as a JWK (`kid`, `use: sig`), for the issuer's JWKS.
    pub fn jwk(&self) -> jsonwebtoken::jwk::Jwk {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.encoding, Algorithm::RS256)
            .expect("an RSA key yields its public components");
        jwk.common.key_id = Some(self.key_id.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        jwk
    }

    /// Checks a bearer token presented to a vault of `vault_tenant`.
    pub fn verify(&self, token: &str, vault_tenant: &str) -> Result<Caller, TokenRejection> {
        self.verify_for(Resource::KeyVault, token, vault_tenant)
    }

    /// Checks a bearer token presented to `resource` of tenant `expected_tenant`.
    pub fn verify_for(
        &self,
        resource: Resource,
        token: &str,
        expected_tenant: &str,
    ) -> Result<Caller, TokenRejection> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[resource.audience()]);
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => {
                    TokenRejection::Expired
                }
                ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
                ErrorKind::InvalidSignature => self.revoked(token, &validation),
                _ => TokenRejection::Invalid,
            })?
            .claims;
        if claims.iss != issuer_for(&claims.tid) {
            return Err(TokenRejection::Invalid);
        }
        if claims.tid != expected_tenant {
            return Err(TokenRejection::WrongTenant {
                expected_tenant: expected_tenant.to_owned(),
            });
        }
        Ok(Caller {
            tenant_id: claims.tid,
            client_id: claims.appid,
        })
    }

    /// `Revoked` when a retired key signed the token (the newest such key's
    /// retirement time), else `Invalid`.
    fn revoked(&self, token: &str, validation: &Validation) -> TokenRejection {
        self.retired
            .iter()
            .rev()
            .find(|(key, _)| jsonwebtoken::decode::<AccessClaims>(token, key, validation).is_ok())
            .map_or(TokenRejection::Invalid, |(_, since)| {
                TokenRejection::Revoked { since: *since }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    const TENANT: &str = "tenant-a";

    static AUTHORITY: LazyLock<TokenAuthority> =
        LazyLock::new(|| TokenAuthority::generate().unwrap());

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn an_issued_token_identifies_the_app_to_a_vault_of_its_tenant() {
        let token = AUTHORITY
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        assert_eq!(
            AUTHORITY.verify(&token, TENANT).unwrap(),
            Caller {
                tenant_id: TENANT.into(),
                client_id: "app-1".into()
            }
        );
        let claims: AccessClaims = jsonwebtoken::dangerous::insecure_decode(&token)
            .unwrap()
            .claims;
        assert_eq!(claims.aud, KEY_VAULT_RESOURCE);
        assert_eq!(claims.iss, "https://sts.windows.net/tenant-a/");
        assert_eq!(claims.exp - claims.iat, TOKEN_LIFETIME_SECONDS);
    }

    #[test]
    fn the_published_jwk_verifies_issued_tokens() {
        let token = AUTHORITY
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        let key = DecodingKey::from_jwk(&AUTHORITY.jwk()).unwrap();
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[KEY_VAULT_RESOURCE]);
        assert!(jsonwebtoken::decode::<AccessClaims>(&token, &key, &validation).is_ok());
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid, AUTHORITY.jwk().common.key_id);
    }

    #[test]
    fn a_token_of_another_tenant_is_refused() {
        let token = AUTHORITY
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        assert_eq!(
            AUTHORITY.verify(&token, "tenant-b"),
            Err(TokenRejection::WrongTenant {
                expected_tenant: "tenant-b".into()
            })
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let token = AUTHORITY
            .issue(
                Resource::KeyVault,
                TENANT,
                "app-1",
                "oid-1",
                now() - 2 * TOKEN_LIFETIME_SECONDS,
            )
            .unwrap();
        assert_eq!(
            AUTHORITY.verify(&token, TENANT),
            Err(TokenRejection::Expired)
        );
    }

    #[test]
    fn tokens_of_another_key_or_garbage_are_refused() {
        let other = TokenAuthority::generate().unwrap();
        let forged = other
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        assert_eq!(
            AUTHORITY.verify(&forged, TENANT),
            Err(TokenRejection::Invalid)
        );
        assert_eq!(
            AUTHORITY.verify("not.a.jwt", TENANT),
            Err(TokenRejection::Invalid)
        );
        assert_eq!(AUTHORITY.verify("", TENANT), Err(TokenRejection::Invalid));
    }

    #[test]
    fn a_token_signed_before_a_rollover_is_revoked_not_invalid() {
        let mut authority = TokenAuthority::generate().unwrap();
        let first = authority
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        authority.rollover(1_000).unwrap();
        let second = authority
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        authority.rollover(2_000).unwrap();
        assert_eq!(
            authority.verify(&first, TENANT),
            Err(TokenRejection::Revoked { since: 1_000 })
        );
        assert_eq!(
            authority.verify(&second, TENANT),
            Err(TokenRejection::Revoked { since: 2_000 })
        );
        let forged = TokenAuthority::generate()
            .unwrap()
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        assert_eq!(
            authority.verify(&forged, TENANT),
            Err(TokenRejection::Invalid)
        );
        let fresh = authority
            .issue(Resource::KeyVault, TENANT, "app-1", "oid-1", now())
            .unwrap();
        assert!(authority.verify(&fresh, TENANT).is_ok());
    }

    #[test]
    fn each_resource_accepts_only_its_own_tokens() {
        for resource in Resource::ALL {
            let token = AUTHORITY
                .issue(resource, TENANT, "app-1", "oid-1", now())
                .unwrap();
            for surface in Resource::ALL {
                let verified = AUTHORITY.verify_for(surface, &token, TENANT);
                if surface == resource {
                    assert!(verified.is_ok(), "{resource:?}");
                } else {
                    assert_eq!(verified, Err(TokenRejection::WrongAudience));
                }
            }
        }
        assert_eq!(
            Resource::from_scope("https://eventgrid.azure.net/.default"),
            Some(Resource::EventGrid)
        );
        assert_eq!(
            Resource::from_resource("https://storage.azure.com/"),
            Some(Resource::Storage)
        );
        assert_eq!(
            Resource::from_scope("https://management.azure.com/.default"),
            None
        );
    }

    #[test]
    fn a_token_for_another_resource_is_refused() {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(AUTHORITY.key_id.clone());
        let now = now();
        let claims = AccessClaims {
            aud: "https://management.azure.com".into(),
            iss: issuer_for(TENANT),
            iat: now,
            nbf: now,
            exp: now + 60,
            tid: TENANT.into(),
            appid: "app-1".into(),
            oid: "o".into(),
            sub: "o".into(),
            idtyp: "app".into(),
            ver: "1.0".into(),
        };
        let token = jsonwebtoken::encode(&header, &claims, &AUTHORITY.encoding).unwrap();
        assert_eq!(
            AUTHORITY.verify(&token, TENANT),
            Err(TokenRejection::WrongAudience)
        );
    }
}
