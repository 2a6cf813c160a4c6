//! Test ground shared by the integration tests: one real control plane per test
//! run, a fresh namespace per test, and the emulator and operator as real
//! subprocesses of the `kvsync` binary.
//!
//! The control plane is `scripts/control-plane.sh up` (idempotent: it reuses a
//! running one), or whatever cluster `KVSYNC_TEST_KUBECONFIG` points at.
#![allow(dead_code)] // each test binary uses a different part of the harness

mod fixture;
#[allow(unused_imports)] // not every test binary uses the fixture
pub use fixture::*;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
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
        let dir = tempfile::tempdir().unwrap();
        let plane = PrivatePlane { dir };
        assert!(plane.script("up"), "scripts/control-plane.sh up failed");
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
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/control-plane.sh"))
            .arg(command)
            .env("KVSYNC_PLANE_DIR", self.dir.path())
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
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("client")
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
        // Drop cannot await and the test's runtime may be shutting down: use a
        // short-lived runtime of our own on another thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let api: Api<Namespace> = Api::all(client().await);
                let _ = api.delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
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

/// A running `kvsync` subprocess (emulator or operator), killed on drop.
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

    fn spawn(args: &[String], dir: tempfile::TempDir) -> Self {
        let log = dir.path().join("output.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kvsync"))
            .args(args)
            .env("KUBECONFIG", kubeconfig_path())
            .env(
                "RUST_LOG",
                std::env::var("KVSYNC_TEST_LOG").unwrap_or_else(|_| "trace".into()),
            )
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

/// The emulator's published endpoints (`<state-dir>/endpoints.json`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Endpoints {
    pub authority_host: String,
    pub vaults: std::collections::BTreeMap<String, String>,
    pub control_url: String,
    pub ca_file: PathBuf,
}

/// A running Key Vault + Entra ID emulator.
pub struct Emulator {
    pub endpoints: Endpoints,
    pub process: Process,
    http: reqwest::Client,
}

impl Emulator {
    /// Starts an emulator with this seed (the YAML seed format, as JSON).
    pub async fn start(seed: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let seed_path = dir.path().join("seed.json");
        std::fs::write(&seed_path, serde_json::to_vec_pretty(&seed).unwrap()).unwrap();
        let state = dir.path().join("state");
        let args = [
            "emulator".to_string(),
            "--config".into(),
            seed_path.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        let process = Process::spawn(&args, dir);
        let endpoints_file = state.join("endpoints.json");
        let endpoints: Endpoints = eventually(
            "the emulator's endpoints.json",
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(&endpoints_file).ok();
                async move { text.and_then(|t| serde_json::from_str(&t).ok()) }
            },
        )
        .await;
        Emulator {
            endpoints,
            process,
            http: reqwest::Client::new(),
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

    pub async fn counters(&self) -> Value {
        self.control(reqwest::Method::GET, "counters", None).await
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

/// A running operator (`kvsync run`) scoped to one namespace.
pub struct Operator {
    pub process: Process,
}

impl Operator {
    /// Starts `kvsync run` for `namespace`, trusting and allowing `emulator`.
    /// Flags in `extra` replace the defaults of the same name (short backoff
    /// and request timeout).
    pub fn start(emulator: &Emulator, namespace: &str, extra: &[&str]) -> Self {
        let ca_file = emulator.endpoints.ca_file.display().to_string();
        let defaults = [
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
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                args.extend([flag.to_string(), value.to_string()]);
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Operator {
            process: Process::spawn(&args, tempfile::tempdir().unwrap()),
        }
    }
}
