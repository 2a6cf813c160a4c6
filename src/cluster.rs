//! How kvsync talks to the API server: the client and every watch.
//!
//! ```text
//!  watch ── timeoutSeconds=WATCH_TIMEOUT ──▶ the server ends it; the watcher resumes
//!           from its last resourceVersion (one cheap request per watch per period)
//!  any connection silent for READ_TIMEOUT ──▶ the client gives up and the watcher retries
//!  a failed watch or list ──▶ retried after 0.8 s, 1.6 s, … at most WATCH_BACKOFF_MAX
//! ```
//!
//! The retry cap is lower than client-go's 30 s: after an API server restart
//! a watcher that failed a few times while the server was away would otherwise
//! sleep up to 30 s more after it is back (on top of a request that can take
//! READ_TIMEOUT); one request per watch every 10 s is no burden to a server.
//!
//! Without a read timeout, a watch request an API server accepted while it
//! was restarting can wait for its answer forever, and the stage that owns
//! it stops seeing changes (seen in `tests/apiserver_restart.rs`: a new
//! KeyVaultSecret unnoticed for over 20 s after a kube-apiserver restart).
//! kube-runtime's own idle timeout covers only a stream that already
//! answered, not a request still waiting for its response.
//!
//! The operator's client counts every request it sends
//! (`kvsync_kubernetes_requests_total{method, watch}`, a layer on kube's
//! tower stack), so that the API-server load of an idle operator can be
//! measured apart from its watches.

use std::time::Duration;

use kube::client::{Body, ClientBuilder};
use kube::runtime::utils::ResetTimerBackoff;
use kube::runtime::watcher::{self, ExponentialBackoff};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tower::util::MapRequestLayer;

/// How long the server keeps one watch open.
pub const WATCH_TIMEOUT_SECS: u32 = 25;
/// How long the client waits on a silent connection: longer than a watch
/// may legitimately stay quiet.
pub const READ_TIMEOUT: Duration = Duration::from_secs(WATCH_TIMEOUT_SECS as u64 + 10);

/// The longest a watcher waits before it retries a failed watch or list.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The configuration from the environment (in-cluster or kubeconfig), with the read timeout.
async fn config() -> Result<kube::Config, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.read_timeout = Some(READ_TIMEOUT);
    Ok(config)
}

/// A client from the environment, with the read timeout.
pub async fn client() -> Result<kube::Client, kube::Error> {
    kube::Client::try_from(config().await?)
}

/// A client from the environment, with the read timeout, counting its requests in `requests`.
pub async fn counted_client(requests: ApiRequests) -> Result<kube::Client, kube::Error> {
    let count = MapRequestLayer::new(move |request: http::Request<Body>| {
        requests.observe(&request);
        request
    });
    Ok(ClientBuilder::try_from(config().await?)?
        .with_layer(&count)
        .build())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiRequestLabels {
    method: String,
    /// `"true"` for a watch (long-running), `"false"` for everything else.
    watch: &'static str,
}

/// API-server requests sent, by HTTP method and whether they are watches.
#[derive(Clone, Debug, Default)]
pub struct ApiRequests(Family<ApiRequestLabels, Counter>);

impl ApiRequests {
    /// Adds the counter to `registry` (name relative to its prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Self::default();
        registry.register(
            "kubernetes_requests",
            "Requests sent to the API server, by HTTP method and whether they are watches",
            requests.0.clone(),
        );
        requests
    }

    fn observe<B>(&self, request: &http::Request<B>) {
        let watch = request
            .uri()
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair == "watch=true"));
        self.0
            .get_or_create(&ApiRequestLabels {
                method: request.method().as_str().to_owned(),
                watch: if watch { "true" } else { "false" },
            })
            .inc();
    }
}

/// kubectl's copy of the last applied manifest (`kubectl apply`): a tool's
/// annotation, never the user's data, often as large as the object.
pub const KUBECTL_LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The configuration every watch of kvsync starts from.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// The retry schedule of every watch of kvsync (see the module docs): jittered
/// doubling from 0.8 s up to [`WATCH_BACKOFF_MAX`], reset after two quiet minutes.
pub fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
    let schedule = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(schedule.into(), Duration::from_secs(120))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_apart_from_watches() {
        let mut registry = Registry::default();
        let requests = ApiRequests::register(&mut registry);
        for uri in [
            "/api/v1/namespaces/a/secrets?labelSelector=x&watch=true&timeoutSeconds=25",
            "/api/v1/namespaces/a/secrets?labelSelector=x",
            "/api/v1/namespaces/a/secrets/s",
        ] {
            requests.observe(&http::Request::get(uri).body(()).unwrap());
        }
        requests.observe(&http::Request::patch("/apis/apps/v1/x").body(()).unwrap());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"kubernetes_requests_total{method="GET",watch="true"} 1"#,
            r#"kubernetes_requests_total{method="GET",watch="false"} 2"#,
            r#"kubernetes_requests_total{method="PATCH",watch="false"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
