//! Test ground shared by the integration tests: one real control plane per test
//! run, a fresh namespace per test, the Key Vault + Entra ID emulator in-process
//! (the `kvsync-emulator` library, on a thread and runtime of its own) and the
//! operator as a real subprocess of the `kvsync` binary.
//!
//! ```text
//!  test (its own tokio runtime)            emulator thread (its own runtime)
//!   Emulator::start(seed) ──options──▶ kvsync_emulator::start ─▶ Running
//!            ◀──────────── Endpoints ──────────┘                    │
//!   Operator::start(&emulator) ─▶ `kvsync run` subprocess ─HTTPS─▶ listeners
//!   drop(Emulator) ──stop──▶ Running dropped, thread joined
//! ```
//!
//! The control plane is `scripts/control-plane.sh up` (idempotent: it reuses a
//! running one), or whatever cluster `KVSYNC_TEST_KUBECONFIG` points at.
#![allow(dead_code)] // each test binary uses a different part of the harness

/// The one upper bound of the suite for anything that should happen: generous,
/// because on a loaded machine kube-controller-manager can take many seconds
/// to make a ReplicaSet (only a failing test waits this long).
pub const WAIT: Duration = Duration::from_secs(60);

/// Event-driven refresh: the emulator's namespace and the operator's own identity (used as `support::events::*`).
pub mod events;
mod fixture;
/// A kubelet simulated at the API (pods marked running and ready), so the
/// controllers report rollout progress (used as `support::kubelet::*`).
pub mod kubelet;
mod leaks;
/// The fixture's reload side: Secrets, ConfigMaps and workloads, and how they roll (used as `support::reload::*`).
pub mod reload;
mod wait;
mod workload;
#[allow(unused_imports)] // not every test binary uses the fixture
pub use fixture::*;
#[allow(unused_imports)]
pub use leaks::*;
#[allow(unused_imports)] // not every test binary waits for every precondition
pub use wait::*;
#[allow(unused_imports)]
pub use workload::*;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};

/// A control plane of this test binary's own (see [`PrivatePlane`]), if it made one.
static PRIVATE_KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();

/// Path of the kubeconfig of the cluster every test in this run shares.
pub fn kubeconfig_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = PRIVATE_KUBECONFIG.get() {
            return path.clone();
        }
        if let Ok(path) = std::env::var("KVSYNC_TEST_KUBECONFIG") {
            return PathBuf::from(path);
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg("up")
            .status()
            .expect("run scripts/control-plane.sh up");
        assert!(status.success(), "scripts/control-plane.sh up failed");
        let out = Command::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .unwrap();
        let line = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(line.trim().trim_start_matches("export KUBECONFIG="))
    })
}

/// A control plane (etcd, kube-apiserver, kube-controller-manager) for tests
/// that disrupt it, started with `scripts/control-plane.sh up` in a directory
/// of its own and stopped (`down`) when dropped, also when the test fails.
/// Every client and process of the test binary then uses it, so a test binary
/// that makes one must run nothing else.
pub struct PrivatePlane {
    dir: tempfile::TempDir,
}

impl PrivatePlane {
    pub fn up() -> Self {
        Self::with_admission_plugins("")
    }

    /// Like [`PrivatePlane::up`], with kube-apiserver's `plugins` (comma
    /// separated) enabled besides its default admission plugins.
    pub fn with_admission_plugins(plugins: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plane = PrivatePlane { dir };
        assert!(
            plane.script_with("up", plugins),
            "scripts/control-plane.sh up failed"
        );
        PRIVATE_KUBECONFIG
            .set(plane.dir.path().join("kubeconfig"))
            .expect("one private plane per test binary, made before any client");
        assert_eq!(kubeconfig_path(), plane.dir.path().join("kubeconfig"));
        plane
    }

    /// Stops kube-apiserver and starts it again with the same flags and port.
    pub fn restart_apiserver(&self) {
        assert!(
            self.script("restart-apiserver"),
            "scripts/control-plane.sh restart-apiserver failed"
        );
    }

    fn script(&self, command: &str) -> bool {
        self.script_with(command, "")
    }

    /// `scripts/control-plane.sh command`; `plugins`: for `up`, see
    /// [`PrivatePlane::with_admission_plugins`].
    fn script_with(&self, command: &str, plugins: &str) -> bool {
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane.sh"))
            .arg(command)
            .env("KVSYNC_PLANE_DIR", self.dir.path())
            .env("KVSYNC_PLANE_ADMISSION_PLUGINS", plugins)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for PrivatePlane {
    fn drop(&mut self) {
        self.script("down");
    }
}

/// A client for the shared cluster (one per test: a client is bound to the
/// runtime it was made on, and every `#[tokio::test]` has its own runtime).
pub async fn client() -> kube::Client {
    ensure_crds_installed();
    client_from(kubeconfig_path()).await
}

/// A client from another kubeconfig (e.g. [`token_kubeconfig`]'s).
pub async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
}

/// Writes `dir/kubeconfig`: the shared cluster (same server and CA) with a
/// TokenRequest token of ServiceAccount `namespace/name` as its only user.
/// The token has the API server's default audience, as a pod's would.
pub async fn token_kubeconfig(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    dir: &Path,
) -> PathBuf {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 3600}})).unwrap();
    let answer = api
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            name,
            &PostParams::default(),
            &request,
        )
        .await
        .expect("TokenRequest");
    let token = answer.status.expect("a token").token;
    let admin = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let user = format!("{namespace}-{name}");
    let mut config = serde_json::to_value(&admin).unwrap();
    config["users"] = json!([{"name": user, "user": {"token": token}}]);
    for context in config["contexts"].as_array_mut().into_iter().flatten() {
        context["context"]["user"] = json!(user);
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    path
}

/// Installs the CRDs once per test binary, with the operator's own `crd` output
/// applied through `kvsync install-crds` so the test uses the shipped path.
fn ensure_crds_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let status = Command::new(env!("CARGO_BIN_EXE_kvsync"))
            .args(["crd", "--apply", "--wait"])
            .env("KUBECONFIG", kubeconfig_path())
            .status()
            .expect("run kvsync crd --apply");
        assert!(status.success(), "kvsync crd --apply failed");
    });
}

/// A namespace made for one test and deleted when the test ends.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &kube::Client, test: &str) -> Self {
        let name = format!(
            "t-{}-{:06x}",
            test.replace('_', "-"),
            rand::random::<u32>() & 0xffffff
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"kvsync-test": "true"}}}),
        )
        .unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        TestNamespace { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let name = self.name.clone();
        cleanup_in_drop(async move {
            let api: Api<Namespace> = Api::all(client().await);
            let _ = api.delete(&name, &DeleteParams::background()).await;
        });
    }
}

/// Runs async clean-up from a `Drop`: Drop cannot await and the test's
/// runtime may be shutting down, so it runs to completion on a short-lived
/// runtime of its own on another thread.
pub fn cleanup_in_drop(cleanup: impl Future<Output = ()> + Send + 'static) {
    let _ = on_own_runtime(cleanup);
}

/// Runs `work` to completion on a runtime of its own on another thread (see
/// [`cleanup_in_drop`]); `Err` if it panicked.
pub fn on_own_runtime<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> std::thread::Result<T> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work)
    })
    .join()
}

/// Polls `check` until it yields `Some`, failing the test with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts that `check` holds for the whole of `period` (for "nothing happens" claims).
pub async fn always<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert!(check().await, "{what} stopped holding");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A running `kvsync` subprocess (the operator), killed on drop.
pub struct Process {
    child: Child,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Process {
    /// Starts `kvsync` with these arguments (its log in a fresh temporary directory).
    pub fn start(args: &[String]) -> Self {
        Self::spawn(args, tempfile::tempdir().unwrap())
    }

    /// Starts `kvsync` as someone else: with `kubeconfig` (e.g. one holding a
    /// ServiceAccount's token) and extra environment variables (which may
    /// override the harness's `RUST_LOG`).
    pub fn start_as(args: &[String], kubeconfig: &Path, env: &[(String, String)]) -> Self {
        Self::spawn_with(args, tempfile::tempdir().unwrap(), kubeconfig, env)
    }

    fn spawn(args: &[String], dir: tempfile::TempDir) -> Self {
        Self::spawn_with(args, dir, kubeconfig_path(), &[])
    }

    fn spawn_with(
        args: &[String],
        dir: tempfile::TempDir,
        kubeconfig: &Path,
        env: &[(String, String)],
    ) -> Self {
        let log = dir.path().join("output.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kvsync"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("KVSYNC_TEST_LOG").unwrap_or_else(|_| "trace".into()),
            )
            // Tests refresh every second to stay short; the default minimum
            // (10 s) is tested on its own by passing it in `env`.
            .env(
                "KVSYNC_MIN_REFRESH_INTERVAL",
                format!("{}s", MIN_REFRESH_INTERVAL.as_secs()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn kvsync");
        Process { child, log, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.stop()
    }

    /// SIGTERM, wait for the exit, and return everything the process printed.
    pub fn terminate_with_output(mut self) -> (std::process::ExitStatus, String) {
        (self.stop(), self.output())
    }

    /// SIGTERM and wait for the exit, keeping the output readable.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child.wait().unwrap()
    }

    /// SIGKILL: a crash, as far as the operator can tell.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use kvsync_emulator::Endpoints;

/// A running Key Vault + Entra ID emulator, stopped when dropped.
pub struct Emulator {
    pub endpoints: Endpoints,
    http: reqwest::Client,
    /// Every secret value set through the control API (for the leak scan).
    values_set: std::sync::Mutex<Vec<String>>,
    _server: EmulatorThread,
    /// The seed and the state directory (the CA file the operator trusts).
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// Starts an emulator with this seed (the YAML seed format, as JSON).
    pub async fn start(seed: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let seed_path = dir.path().join("seed.json");
        std::fs::write(&seed_path, serde_json::to_vec_pretty(&seed).unwrap()).unwrap();
        let options = kvsync_emulator::Options::new(seed_path, dir.path().join("state"));
        let (server, started) = EmulatorThread::spawn(options);
        let endpoints = started
            .await
            .expect("the emulator thread reports its start")
            .unwrap_or_else(|error| panic!("the emulator did not start: {error}"));
        Emulator {
            endpoints,
            http: reqwest::Client::new(),
            values_set: Default::default(),
            _server: server,
            _dir: dir,
        }
    }

    pub fn vault_url(&self, vault: &str) -> String {
        self.endpoints.vaults[vault].clone()
    }

    /// Calls the control API; panics on a non-2xx answer.
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!(
            "{}{}",
            self.endpoints.control_url,
            path.trim_start_matches('/')
        );
        let mut request = self.http.request(method, &url);
        if let Some(value) = body.as_ref().and_then(|b| b["value"].as_str()) {
            self.values_set.lock().unwrap().push(value.to_owned());
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("control API");
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "control API {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates a new version of a secret (rotation).
    pub async fn set_secret(&self, vault: &str, name: &str, value: &str) -> Value {
        self.control(
            reqwest::Method::PUT,
            &format!("vaults/{vault}/secrets/{name}"),
            Some(json!({"value": value})),
        )
        .await
    }

    /// Every secret value set through the control API so far.
    pub fn values_set(&self) -> Vec<String> {
        self.values_set.lock().unwrap().clone()
    }

    pub async fn counters(&self) -> Value {
        self.control(reqwest::Method::GET, "counters", None).await
    }
}

/// The emulator serving on a thread and multi-threaded runtime of its own, as
/// its own process did: a test that blocks its runtime (waiting for the
/// operator's exit, say) cannot stall it, and it outlives no test.
struct EmulatorThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Started = tokio::sync::oneshot::Receiver<Result<Endpoints, kvsync_emulator::EmulatorError>>;

impl EmulatorThread {
    /// Starts the emulator; the receiver yields its endpoints once every listener is bound.
    fn spawn(options: kvsync_emulator::Options) -> (Self, Started) {
        let (started, started_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("emulator".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the emulator's runtime");
                runtime.block_on(async move {
                    match kvsync_emulator::start(options).await {
                        Ok(running) => {
                            let _ = started.send(Ok(running.endpoints.clone()));
                            // Until the test drops its Emulator (or panics).
                            let _ = stopped.await;
                            drop(running);
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                        }
                    }
                });
            })
            .expect("spawn the emulator thread");
        let server = EmulatorThread {
            stop: Some(stop),
            thread: Some(thread),
        };
        (server, started_rx)
    }
}

impl Drop for EmulatorThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The cluster's service-account token issuer and its JWKS, written to a file,
/// so the emulator can verify TokenRequest tokens as Entra verifies AKS ones.
pub async fn cluster_issuer(client: &kube::Client, dir: &Path) -> (String, PathBuf) {
    let discovery: Value = client
        .request(
            http::Request::get("/.well-known/openid-configuration")
                .body(vec![])
                .unwrap(),
        )
        .await
        .expect("issuer discovery");
    let jwks: Value = client
        .request(http::Request::get("/openid/v1/jwks").body(vec![]).unwrap())
        .await
        .expect("issuer jwks");
    let path = dir.join("cluster-jwks.json");
    std::fs::write(&path, serde_json::to_vec(&jwks).unwrap()).unwrap();
    (discovery["issuer"].as_str().unwrap().to_owned(), path)
}

/// Tenant and app ids used by the test seeds.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const SA_APP: &str = "11111111-1111-1111-1111-111111111111";
pub const SECRET_APP: &str = "22222222-2222-2222-2222-222222222222";
pub const SECRET_APP_PASSWORD: &str = "app-client-secret-value-9f8e7d";

/// The operators' `--min-refresh-interval` in tests (unless a test sets it):
/// also the longest a force-sync waits after the object's last read as of now.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// A running operator (`kvsync run`) scoped to one namespace.
pub struct Operator {
    pub process: Process,
}

impl Operator {
    /// Starts `kvsync run` for `namespace`, trusting and allowing `emulator`.
    /// Flags in `extra` replace the defaults of the same name (short backoff
    /// and request timeout).
    pub fn start(emulator: &Emulator, namespace: &str, extra: &[&str]) -> Self {
        Operator {
            process: Process::start(&run_args(emulator, namespace, &[], extra)),
        }
    }

    /// Like [`Operator::start`], acting with `kubeconfig`'s identity.
    pub fn start_as(
        emulator: &Emulator,
        namespace: &str,
        extra: &[&str],
        kubeconfig: &Path,
    ) -> Self {
        Operator {
            process: Process::start_as(&run_args(emulator, namespace, &[], extra), kubeconfig, &[]),
        }
    }

    /// Like [`Operator::start`], with extra environment variables.
    pub fn start_with_env(
        emulator: &Emulator,
        namespace: &str,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        Operator {
            process: Process::start_as(
                &run_args(emulator, namespace, &[], extra),
                kubeconfig_path(),
                env,
            ),
        }
    }
}

/// The one builder of `kvsync run` arguments: the operator scoped to
/// `namespace` (the digest key lives there too), trusting and allowing
/// `emulator`, with a short backoff and request timeout, then `defaults`, then
/// `extra`, whose flags replace the defaults of the same name.
pub fn run_args(
    emulator: &Emulator,
    namespace: &str,
    defaults: &[(&str, &str)],
    extra: &[&str],
) -> Vec<String> {
    let ca_file = emulator.endpoints.ca_file.display().to_string();
    let common = [
        ("--namespaces", namespace),
        ("--operator-namespace", namespace),
        ("--authority-host", &emulator.endpoints.authority_host),
        ("--allow-vault-host", "localhost"),
        ("--extra-ca-file", &ca_file),
        ("--metrics-addr", "127.0.0.1:0"),
        ("--max-backoff", "4s"),
        ("--request-timeout", "3s"),
    ];
    let mut args = vec!["run".to_string()];
    for (flag, value) in common.iter().chain(defaults) {
        if !extra.contains(flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The documents of a multi-document YAML text (empty documents dropped).
pub fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Server-side applies a manifest of any kind (found by discovery), with the
/// admin client. Namespaced objects go to `namespace` (replacing their own
/// `metadata.namespace`) unless `keep_namespace` is set and they name one.
/// With `dry_run` the API server validates everything but persists nothing.
pub async fn apply_manifest(
    client: &kube::Client,
    mut doc: Value,
    namespace: &str,
    keep_namespace: bool,
    dry_run: bool,
) -> Result<(), String> {
    use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
    use kube::discovery::{Scope, pinned_kind};
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (resource, caps) = pinned_kind(client, &gvk)
        .await
        .map_err(|e| format!("{kind} {name}: discovery of {api_version}: {e}"))?;
    let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
        if !keep_namespace || doc["metadata"]["namespace"].is_null() {
            doc["metadata"]["namespace"] = json!(namespace);
        }
        let ns = doc["metadata"]["namespace"].as_str().unwrap().to_owned();
        Api::namespaced_with(client.clone(), &ns, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    };
    let mut params = PatchParams::apply("kvsync-tests").force();
    params.dry_run = dry_run;
    api.patch(&name, &params, &Patch::Apply(&doc))
        .await
        .map(|_| ())
        .map_err(|e| format!("{kind} {name}: {e}"))
}

/// What `scripts/render-chart.sh` (the real Helm engine) made of the chart.
pub enum Rendered {
    Manifests(String),
    /// The template refused the values (a `fail`): its message.
    Refused(String),
    /// The Helm engine cannot be installed on this machine.
    Unavailable,
}

/// Renders the chart with these values as release `release` in `namespace`.
pub fn render_chart(
    values: &Value,
    release: &str,
    namespace: &str,
    kube_version: Option<&str>,
) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let values_file = dir.path().join("values.yaml");
    std::fs::write(&values_file, serde_norway::to_string(values).unwrap()).unwrap();
    let mut command = Command::new("bash");
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/render-chart.sh"))
        .arg("-f")
        .arg(&values_file)
        .args([
            "--name",
            release,
            "--namespace",
            namespace,
            "--include-crds",
        ]);
    if let Some(version) = kube_version {
        command.args(["--kube-version", version]);
    }
    let out = command.output().expect("run scripts/render-chart.sh");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Rendered::Manifests(String::from_utf8(out.stdout).unwrap()),
        Some(3) => {
            eprintln!(
                "SKIPPED: the Helm engine is not installable here, chart not verified:\n{stderr}"
            );
            Rendered::Unavailable
        }
        _ => Rendered::Refused(stderr),
    }
}
