//! Injected faults: "the next N requests to this surface matching this path prefix
//! (and method) fail this way". Lets tests and demos show what a client does when
//! Key Vault throttles, errors or hangs, without waiting for it to happen.
//!
//! Rules are consumed in the order they were added; a rule is dropped once it has
//! fired `count` times.
//!
//! Besides failures and hangs, a vault can be made to misbehave as no real Key
//! Vault does, to show what a client trusts: a 401 challenge naming another
//! resource (`{"challengeResource": "https://management.azure.com"}`), or a
//! redirect (`{"redirectTo": "/secrets/other?api-version=7.6"}`).

use serde::Deserialize;
use std::fmt;

/// Which Azure surface a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultTarget {
    Vault(String),
    Entra,
    /// The Event Grid namespace.
    EventGrid,
}

impl fmt::Display for FaultTarget {
    /// The form used in fault requests and counter keys: `vault:shop`,
    /// `entra` or `eventgrid`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vault(name) => write!(f, "vault:{name}"),
            Self::Entra => f.write_str("entra"),
            Self::EventGrid => f.write_str("eventgrid"),
        }
    }
}

/// A failing response, optionally with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusFault {
    pub status: u16,
    pub retry_after_seconds: Option<u64>,
}

/// Holds the request this long, then serves it normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HangFault {
    pub hang_ms: u64,
}

/// Answers 401 with a challenge whose `resource` is this (not Key Vault's).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChallengeFault {
    pub challenge_resource: String,
}

/// Answers 307 with this `Location`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectFault {
    pub redirect_to: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum FaultKind {
    Status(StatusFault),
    Hang(HangFault),
    Challenge(ChallengeFault),
    Redirect(RedirectFault),
}

/// Body of the control API's `POST /faults`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRequest {
    pub target: String,
    #[serde(default = "root_path")]
    pub path_prefix: String,
    pub method: Option<String>,
    pub count: u32,
    pub kind: FaultKind,
}

fn root_path() -> String {
    "/".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("target {0:?} is none of \"entra\", \"eventgrid\" and \"vault:<name of a vault>\"")]
    UnknownTarget(String),
    #[error("count must be at least 1")]
    ZeroCount,
    #[error("status {0} is not an HTTP error status (400-599)")]
    NotAnErrorStatus(u16),
    #[error("pathPrefix must start with '/'")]
    RelativePath,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FaultRule {
    target: FaultTarget,
    path_prefix: String,
    method: Option<String>,
    remaining: u32,
    kind: FaultKind,
}

#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// Validates and adds a rule; `vault_exists` tells which vault targets are real.
    pub fn add(
        &mut self,
        request: FaultRequest,
        vault_exists: impl Fn(&str) -> bool,
    ) -> Result<(), FaultError> {
        let target = match request.target.as_str() {
            "entra" => FaultTarget::Entra,
            "eventgrid" => FaultTarget::EventGrid,
            other => match other.strip_prefix("vault:") {
                Some(vault) if vault_exists(vault) => FaultTarget::Vault(vault.to_owned()),
                _ => return Err(FaultError::UnknownTarget(request.target)),
            },
        };
        if request.count == 0 {
            return Err(FaultError::ZeroCount);
        }
        if let FaultKind::Status(StatusFault { status, .. }) = request.kind
            && !(400..=599).contains(&status)
        {
            return Err(FaultError::NotAnErrorStatus(status));
        }
        if !request.path_prefix.starts_with('/') {
            return Err(FaultError::RelativePath);
        }
        self.rules.push(FaultRule {
            target,
            path_prefix: request.path_prefix,
            method: request.method.map(|m| m.to_ascii_uppercase()),
            remaining: request.count,
            kind: request.kind,
        });
        Ok(())
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The fault for this request, if any rule matches; uses up one of its count.
    pub fn take(&mut self, target: &FaultTarget, method: &str, path: &str) -> Option<FaultKind> {
        let index = self.rules.iter().position(|rule| {
            rule.target == *target
                && path.starts_with(&rule.path_prefix)
                && rule.method.as_deref().is_none_or(|m| m == method)
        })?;
        let rule = &mut self.rules[index];
        let kind = rule.kind.clone();
        rule.remaining -= 1;
        if rule.remaining == 0 {
            self.rules.remove(index);
        }
        Some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(body: serde_json::Value) -> FaultRequest {
        serde_json::from_value(body).unwrap()
    }

    fn shop() -> FaultTarget {
        FaultTarget::Vault("shop".into())
    }

    fn plan_with(body: serde_json::Value) -> FaultPlan {
        let mut plan = FaultPlan::default();
        plan.add(request(body), |vault| vault == "shop").unwrap();
        plan
    }

    #[test]
    fn a_fault_fires_count_times_on_matching_requests_only() {
        let mut plan = plan_with(json!({"target": "vault:shop", "pathPrefix": "/secrets/db",
            "method": "get", "count": 2, "kind": {"status": 429, "retryAfterSeconds": 3}}));
        let throttled = Some(FaultKind::Status(StatusFault {
            status: 429,
            retry_after_seconds: Some(3),
        }));
        assert_eq!(plan.take(&shop(), "PUT", "/secrets/db-password"), None);
        assert_eq!(plan.take(&shop(), "GET", "/secrets/api-key"), None);
        assert_eq!(
            plan.take(&FaultTarget::Entra, "GET", "/secrets/db-password"),
            None
        );
        assert_eq!(plan.take(&shop(), "GET", "/secrets/db-password"), throttled);
        assert_eq!(
            plan.take(&shop(), "GET", "/secrets/db-password/"),
            throttled
        );
        assert_eq!(plan.take(&shop(), "GET", "/secrets/db-password"), None);
    }

    #[test]
    fn hang_faults_and_defaults_parse() {
        let mut plan = plan_with(json!({"target": "entra", "count": 1, "kind": {"hangMs": 250}}));
        assert_eq!(
            plan.take(&FaultTarget::Entra, "POST", "/t/oauth2/v2.0/token"),
            Some(FaultKind::Hang(HangFault { hang_ms: 250 }))
        );
        plan.add(
            request(json!({"target": "entra", "count": 5, "kind": {"status": 500}})),
            |_| false,
        )
        .unwrap();
        plan.clear();
        assert_eq!(plan.take(&FaultTarget::Entra, "POST", "/"), None);
    }

    #[test]
    fn challenge_and_redirect_faults_parse() {
        let mut plan = plan_with(
            json!({"target": "vault:shop", "count": 1, "kind": {"challengeResource": "https://management.azure.com"}}),
        );
        assert_eq!(
            plan.take(&shop(), "GET", "/secrets"),
            Some(FaultKind::Challenge(ChallengeFault {
                challenge_resource: "https://management.azure.com".into()
            }))
        );
        let mut plan = plan_with(
            json!({"target": "vault:shop", "count": 1, "kind": {"redirectTo": "/secrets/x"}}),
        );
        assert_eq!(
            plan.take(&shop(), "GET", "/secrets"),
            Some(FaultKind::Redirect(RedirectFault {
                redirect_to: "/secrets/x".into()
            }))
        );
    }

    #[test]
    fn invalid_fault_requests_are_refused() {
        let mut plan = FaultPlan::default();
        let cases = [
            (
                json!({"target": "vault:nope", "count": 1, "kind": {"status": 500}}),
                FaultError::UnknownTarget("vault:nope".into()),
            ),
            (
                json!({"target": "shop", "count": 1, "kind": {"status": 500}}),
                FaultError::UnknownTarget("shop".into()),
            ),
            (
                json!({"target": "entra", "count": 0, "kind": {"status": 500}}),
                FaultError::ZeroCount,
            ),
            (
                json!({"target": "entra", "count": 1, "kind": {"status": 200}}),
                FaultError::NotAnErrorStatus(200),
            ),
            (
                json!({"target": "entra", "pathPrefix": "secrets", "count": 1, "kind": {"status": 500}}),
                FaultError::RelativePath,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(plan.add(request(body), |v| v == "shop"), Err(expected));
        }
        let unknown_kind = serde_json::from_value::<FaultRequest>(
            json!({"target": "entra", "count": 1, "kind": {"status": 500, "hang": 1}}),
        );
        assert!(unknown_kind.is_err());
    }
}
