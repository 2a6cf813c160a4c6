//! An Event Grid namespace subscription with pull delivery, read over its
//! data-plane REST API (`Microsoft.EventGrid`, api-version 2024-06-01).
//!
//! Note: no Rust crate covers the namespace pull API — the Azure SDK for Rust
//! has no Event Grid client, and the older community crates only publish.
//! The three calls kvsync needs are written here on `azure_core`'s own
//! [`Pipeline`] (the one the official SDK clients are built on), with its
//! bearer-token policy for `https://eventgrid.azure.net/.default` over an
//! `azure_identity` credential, so tokens, retries-off, user agent and
//! transport behave as for the Key Vault client.
//!
//! ```text
//!  POST {namespace}/topics/{t}/eventsubscriptions/{s}:receive?api-version=2024-06-01&maxEvents=32&maxWaitTime=60
//!       ─▶ {"value": [{"brokerProperties": {"lockToken", "deliveryCount"}, "event": {CloudEvent}}]}
//!          (a long poll: answered when events are there, else empty after maxWaitTime)
//!  POST …:acknowledge | …:reject | …:release   {"lockTokens": [≤ 100]}
//!       ─▶ {"failedLockTokens": [{"lockToken", "error"}], "succeededLockTokens": […]}
//! ```
//!
//! A response body is read up to [`MAX_RESPONSE_BYTES`] and no further.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::error::CheckSuccessOptions;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineStreamOptions, Request, Url,
};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use super::SourceError;
use super::config::FlagError;

pub const API_VERSION: &str = "2024-06-01";
const SCOPE: &str = "https://eventgrid.azure.net/.default";
/// Events asked for per receive call (the API allows 1–100).
const MAX_EVENTS: u32 = 32;
/// How long a receive call waits for an event (the API allows 10–120 s).
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// The most lock tokens one settlement call may carry.
const MAX_LOCK_TOKENS: usize = 100;
/// The largest response read: a full batch of Key Vault events is a few
/// tens of KiB; Event Grid's largest events (1 MB) would need 32 MB.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Where to receive: `https://{namespace host}/topics/{topic}/eventsubscriptions/{subscription}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionUrl {
    /// `https://{namespace host}[:port]/`.
    pub endpoint: Url,
    pub topic: String,
    pub subscription: String,
}

impl SubscriptionUrl {
    pub fn parse(text: &str) -> Result<Self, FlagError> {
        let url = super::config::url(text)?;
        if url.scheme() != "https" || url.query().is_some() || url.fragment().is_some() {
            return Err(FlagError::NotHttps(text.to_owned()));
        }
        let segments: Vec<&str> = url.path().trim_matches('/').split('/').collect();
        let ["topics", topic, "eventsubscriptions", subscription] = segments.as_slice() else {
            return Err(FlagError::SubscriptionPath(text.to_owned()));
        };
        let valid = |name: &str| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if !valid(topic) || !valid(subscription) {
            return Err(FlagError::SubscriptionName(text.to_owned()));
        }
        let mut endpoint = url.clone();
        endpoint.set_path("/");
        Ok(SubscriptionUrl {
            endpoint,
            topic: topic.to_string(),
            subscription: subscription.to_string(),
        })
    }

    fn operation(&self, verb: &str) -> Url {
        let mut url = self.endpoint.clone();
        url.set_path(&format!(
            "/topics/{}/eventsubscriptions/{}:{verb}",
            self.topic, self.subscription
        ));
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        url
    }
}

/// One event handed out, with the lock token that settles it.
#[derive(Debug)]
pub struct Delivery {
    pub lock_token: String,
    pub event: Value,
}

/// How received events are settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    Acknowledge,
    Reject,
    /// Back for the next receiver at once (this one cannot hand it over).
    Release,
}

impl Settle {
    fn verb(self) -> &'static str {
        match self {
            Settle::Acknowledge => "acknowledge",
            Settle::Reject => "reject",
            Settle::Release => "release",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiveResult {
    #[serde(default)]
    value: Vec<ReceiveDetails>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiveDetails {
    broker_properties: Option<BrokerProperties>,
    #[serde(default)]
    event: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrokerProperties {
    lock_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SettleResult {
    #[serde(default)]
    failed_lock_tokens: Vec<Value>,
}

/// A namespace subscription and the pipeline that reaches it.
pub struct EventGridSource {
    pub url: SubscriptionUrl,
    pipeline: Pipeline,
    /// Bound of one settlement call (a receive call gets [`MAX_WAIT`] more).
    request_timeout: Duration,
}

impl EventGridSource {
    pub fn new(
        url: SubscriptionUrl,
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
        request_timeout: Duration,
    ) -> Self {
        let auth = Arc::new(BearerTokenAuthorizationPolicy::new(credential, [SCOPE]));
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            vec![auth],
            None,
        );
        EventGridSource {
            url,
            pipeline,
            request_timeout,
        }
    }

    /// POSTs `body` to `url`; the response body, read up to the limit.
    async fn post(
        &self,
        url: Url,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, SourceError> {
        let mut request = Request::new(url, Method::Post);
        request.insert_header("content-type", "application/json");
        request.set_body(body);
        let options = PipelineStreamOptions {
            check_success: CheckSuccessOptions {
                success_codes: &[200],
            },
            ..Default::default()
        };
        let call = async {
            let response = self
                .pipeline
                .stream(&Context::new(), &mut request, Some(options))
                .await?;
            let mut body = response.into_body();
            let mut bytes = Vec::new();
            while let Some(chunk) = body.next().await {
                bytes.extend_from_slice(&chunk?);
                if bytes.len() > MAX_RESPONSE_BYTES {
                    return Err(SourceError::TooLarge(MAX_RESPONSE_BYTES));
                }
            }
            Ok(bytes)
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| SourceError::Timeout(timeout))?
    }

    /// One receive call: the events it handed out (those without a lock
    /// token cannot be settled and are left to expire).
    pub async fn receive(&self) -> Result<Vec<Delivery>, SourceError> {
        let mut url = self.url.operation("receive");
        url.query_pairs_mut()
            .append_pair("maxEvents", &MAX_EVENTS.to_string())
            .append_pair("maxWaitTime", &MAX_WAIT.as_secs().to_string());
        let body = self
            .post(url, b"{}".to_vec(), MAX_WAIT + self.request_timeout)
            .await?;
        let result: ReceiveResult = serde_json::from_slice(&body)?;
        Ok(result
            .value
            .into_iter()
            .filter_map(|details| {
                let lock_token = details.broker_properties?.lock_token?;
                Some(Delivery {
                    lock_token,
                    event: details.event,
                })
            })
            .collect())
    }

    /// Settles lock tokens; returns how many the namespace refused (lost locks).
    pub async fn settle(&self, how: Settle, tokens: &[String]) -> Result<usize, SourceError> {
        let mut failed = 0;
        for chunk in tokens.chunks(MAX_LOCK_TOKENS) {
            let body = serde_json::to_vec(&serde_json::json!({"lockTokens": chunk}))?;
            let answer = self
                .post(self.url.operation(how.verb()), body, self.request_timeout)
                .await?;
            let result: SettleResult = serde_json::from_slice(&answer)?;
            failed += result.failed_lock_tokens.len();
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_url_names_namespace_topic_and_subscription() {
        let url = SubscriptionUrl::parse(
            "https://ns1.westeurope-1.eventgrid.azure.net/topics/keyvault/eventsubscriptions/kvsync",
        )
        .unwrap();
        assert_eq!(
            url.operation("receive").as_str(),
            "https://ns1.westeurope-1.eventgrid.azure.net/topics/keyvault/eventsubscriptions/kvsync:receive?api-version=2024-06-01"
        );
        for wrong in [
            "http://ns/topics/t/eventsubscriptions/s",
            "https://ns/topics/t",
            "https://ns/topics/t/eventsubscriptions/s/extra",
            "https://ns/topics/t/eventsubscriptions/s?x=1",
            "https://ns/topics/t%2F/eventsubscriptions/s",
            "not a url",
        ] {
            assert!(SubscriptionUrl::parse(wrong).is_err(), "{wrong}");
        }
    }
}
