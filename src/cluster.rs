//! How kvsync talks to the API server: the client and every watch.
//!
//! ```text
//!  watch ── timeoutSeconds=WATCH_TIMEOUT ──▶ the server ends it; the watcher resumes
//!           from its last resourceVersion (one cheap request per watch per period)
//!  any connection silent for READ_TIMEOUT ──▶ the client gives up and the watcher retries
//!  a failed watch or list ──▶ retried after 0.8 s, 1.6 s, … at most WATCH_BACKOFF_MAX
//!  410 Gone (resourceVersion too old) ──▶ relisted at once
//! ```
//!
//! The retry cap is lower than client-go's 30 s: after an API server restart
//! a watcher that failed a few times while the server was away would otherwise
//! sleep up to 30 s more after it is back (on top of a request that can take
//! READ_TIMEOUT); one request per watch every 3–6 s (jittered) is no burden
//! to a server that is away.
//!
//! Without a read timeout, a watch request an API server accepted while it
//! was restarting can wait for its answer forever, and the stage that owns
//! it stops seeing changes (seen in `tests/apiserver_restart.rs`: a new
//! KeyVaultSecret unnoticed for over 20 s after a kube-apiserver restart).
//! kube-runtime's own idle timeout covers only a stream that already
//! answered, not a request still waiting for its response.
//!
//! After an API server restart a new KeyVaultSecret still went unseen for
//! 39 s by hand and over 90 s in CI. Three causes, each fixed here:
//! - a watch the restarting server accepted and never answered waited out
//!   READ_TIMEOUT. A watch is answered with its response headers as soon as
//!   the server has registered it (the events follow in the body), so one
//!   whose headers have not come within WATCH_START_TIMEOUT is given up and
//!   retried, while a watch that did start may stay quiet for its whole
//!   WATCH_TIMEOUT;
//! - every resumed watch hears 410 Gone once and relists; the relist waited
//!   out the backoff grown while the server was away ([`retried`] relists at once);
//! - kube-runtime's `Controller` backs off its merged triggers after an error
//!   of any one watch (up to 30 s plus jitter, reset only after two quiet
//!   minutes), holding back every other watch's events ([`errors_logged`]
//!   keeps the errors out; each watch has its own backoff).
//!
//! ```text
//!  watch request ── no response headers within WATCH_START_TIMEOUT ──▶ error; retried after the backoff
//!                └─ headers ──▶ events; silent for READ_TIMEOUT ──▶ error; retried after the backoff
//! ```
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
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(3);

/// How long a watch request may wait for its response headers. An API
/// server that works sends them once the watch is registered (at most ~3 s
/// when the requested resourceVersion is ahead of its cache); one that
/// accepted the request while starting may never send them.
pub const WATCH_START_TIMEOUT: Duration = Duration::from_secs(5);

/// The configuration from the environment (in-cluster or kubeconfig), with the read timeout.
async fn config() -> Result<kube::Config, kube::Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.read_timeout = Some(READ_TIMEOUT);
    Ok(config)
}

/// A client from the environment, with the read and watch-start timeouts.
pub async fn client() -> Result<kube::Client, kube::Error> {
    Ok(ClientBuilder::try_from(config().await?)?
        .with_layer(&WatchStartTimeoutLayer(WATCH_START_TIMEOUT))
        .build())
}

/// A client from the environment, with the read and watch-start timeouts,
/// counting its requests in `requests`.
pub async fn counted_client(requests: ApiRequests) -> Result<kube::Client, kube::Error> {
    let count = MapRequestLayer::new(move |request: http::Request<Body>| {
        requests.observe(&request);
        request
    });
    Ok(ClientBuilder::try_from(config().await?)?
        .with_layer(&WatchStartTimeoutLayer(WATCH_START_TIMEOUT))
        .with_layer(&count)
        .build())
}

/// Whether `request` is a watch (`watch=true` in its query).
fn is_watch<B>(request: &http::Request<B>) -> bool {
    request
        .uri()
        .query()
        .is_some_and(|query| query.split('&').any(|pair| pair == "watch=true"))
}

/// A watch whose response did not begin within [`WATCH_START_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("the API server did not start answering the watch within {0:?}")]
pub struct WatchNotStarted(Duration);

/// Puts [`WatchStartTimeout`] on the client's stack.
///
/// Written here rather than taken from `tower::timeout`: that bounds every
/// request alike, and a list of 60,000 Secrets may rightly take longer than
/// a watch may take to start.
#[derive(Clone, Copy, Debug)]
struct WatchStartTimeoutLayer(Duration);

impl<S> tower::Layer<S> for WatchStartTimeoutLayer {
    type Service = WatchStartTimeout<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WatchStartTimeout {
            inner,
            timeout: self.0,
        }
    }
}

/// Fails a watch request whose response headers have not come within
/// `timeout` ([`WATCH_START_TIMEOUT`]); other requests pass unchanged.
#[derive(Clone, Debug)]
struct WatchStartTimeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> tower::Service<http::Request<B>> for WatchStartTimeout<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, tower::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let watch = is_watch(&request);
        let timeout = self.timeout;
        let response = self.inner.call(request);
        Box::pin(async move {
            if !watch {
                return response.await.map_err(Into::into);
            }
            match tokio::time::timeout(timeout, response).await {
                Ok(answered) => answered.map_err(Into::into),
                Err(_) => Err(WatchNotStarted(timeout).into()),
            }
        })
    }
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
        let watch = is_watch(request);
        self.0
            .get_or_create(&ApiRequestLabels {
                method: request.method().as_str().to_owned(),
                watch: if watch { "true" } else { "false" },
            })
            .inc();
    }
}

/// The configuration every watch of kvsync starts from.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECS)
}

/// Keeps a watch's errors out of a controller that merges it with others,
/// logging them instead.
///
/// Each watch of kvsync retries on its own schedule ([`watch_backoff`]).
/// kube-runtime's `Controller` puts one more backoff on its merged triggers
/// (800 ms doubling to 30 s, jittered, reset only after two quiet minutes), so
/// an error from any one watch held back the events of all of them: after an
/// API server restart each resumed watch answers 410 Gone once, and a new
/// KeyVaultSecret went unseen for 39 s, and over 90 s in CI.
pub fn errors_logged<S, T>(
    stream: S,
    watched: &'static str,
) -> impl futures::Stream<Item = Result<T, watcher::Error>>
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    use futures::StreamExt;
    stream.filter(move |item| {
        if let Err(error) = item {
            tracing::warn!(watched, %error, "watch failed; retrying with backoff");
        }
        std::future::ready(item.is_ok())
    })
}

/// A watch of kvsync, retried: after a failure its next request waits out
/// [`watch_backoff`]; after 410 Gone it relists at once.
///
/// 410 Gone says the watch's resourceVersion is older than the server keeps
/// — what every resumed watch hears once after an API server restart — and
/// kube-runtime's watcher relists on its next poll. It is no failure to
/// back off from: waiting would add a backoff (the one grown while the
/// server was away) to the time a new object goes unseen. Anything that
/// must notice the lost continuity inspects the stream before this.
pub fn retried<S, T>(stream: S) -> impl futures::Stream<Item = Result<T, watcher::Error>>
where
    S: futures::Stream<Item = Result<T, watcher::Error>>,
{
    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    stream
        .filter(|item| {
            let expired =
                matches!(item, Err(watcher::Error::WatchError(status)) if status.code == 410);
            if expired {
                tracing::debug!("watch expired (410 Gone); relisting at once");
            }
            std::future::ready(!expired)
        })
        .backoff(watch_backoff())
}

/// The retry schedule of every watch of kvsync (see the module docs): jittered
/// doubling from 0.8 s up to [`WATCH_BACKOFF_MAX`], reset after two quiet minutes.
fn watch_backoff() -> ResetTimerBackoff<ExponentialBackoff> {
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

    /// A server that accepts every request and never answers.
    fn silent() -> impl tower::Service<
        http::Request<()>,
        Response = (),
        Error = std::convert::Infallible,
        Future = futures::future::BoxFuture<'static, Result<(), std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(|_: http::Request<()>| {
            Box::pin(std::future::pending()) as futures::future::BoxFuture<'static, _>
        })
    }

    #[tokio::test]
    async fn a_watch_that_never_starts_is_given_up_and_other_requests_are_not() {
        use tower::{Layer, Service, ServiceExt};
        let timeout = Duration::from_millis(100);
        let mut service = WatchStartTimeoutLayer(timeout).layer(silent());
        let watch = http::Request::get("/api/v1/secrets?watch=true&timeoutSeconds=25")
            .body(())
            .unwrap();
        let started = std::time::Instant::now();
        let error = service
            .ready()
            .await
            .unwrap()
            .call(watch)
            .await
            .unwrap_err();
        assert!(error.is::<WatchNotStarted>(), "{error}");
        assert!(started.elapsed() >= timeout);

        let list = http::Request::get("/api/v1/secrets").body(()).unwrap();
        let waiting = service.ready().await.unwrap().call(list);
        assert!(
            tokio::time::timeout(timeout * 5, waiting).await.is_err(),
            "a list is left to the read timeout"
        );
    }

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
