//! What the emulator saw, for tests to assert on: request counters of the Azure
//! surfaces, and every credential it issued or was shown.
//!
//! Counter keys name route templates (`vault:shop GET /secrets/{name}`), not
//! concrete paths, so a test can count "secret reads" whatever the names. A request
//! is counted when it arrives; its status when the response leaves (a request the
//! client abandoned mid-hang has no status). The control API is not counted.
//!
//! The issued list lets a test scan an operator's logs for leaked tokens, and
//! see which resources tokens were asked for.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    total: u64,
    by_endpoint: BTreeMap<String, u64>,
    by_status: BTreeMap<String, u64>,
    with_bearer_token: u64,
}

impl Counters {
    pub fn record_request(&mut self, endpoint: String, with_bearer_token: bool) {
        self.total += 1;
        *self.by_endpoint.entry(endpoint).or_default() += 1;
        if with_bearer_token {
            self.with_bearer_token += 1;
        }
    }

    pub fn record_status(&mut self, status: u16) {
        *self.by_status.entry(status.to_string()).or_default() += 1;
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCredentials {
    /// Access tokens the token endpoint handed out.
    pub access_tokens: Vec<String>,
    /// Client assertions presented to the token endpoint, accepted or not.
    pub client_assertions: Vec<String>,
    /// Every `scope` asked for at the token endpoint, granted or not.
    pub requested_scopes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counters_serialize_in_the_documented_shape() {
        let mut counters = Counters::default();
        counters.record_request("vault:shop GET /secrets/{name}".into(), false);
        counters.record_status(401);
        counters.record_request("vault:shop GET /secrets/{name}".into(), true);
        counters.record_status(200);
        counters.record_request("entra POST /{tenant}/oauth2/v2.0/token".into(), false);
        assert_eq!(
            serde_json::to_value(&counters).unwrap(),
            json!({"total": 3,
                   "byEndpoint": {"vault:shop GET /secrets/{name}": 2,
                                  "entra POST /{tenant}/oauth2/v2.0/token": 1},
                   "byStatus": {"200": 1, "401": 1},
                   "withBearerToken": 1})
        );
    }
}
