//! The one fixture of the integration tests: a namespace, a Key Vault
//! emulator seeded with the `shop` vault, a service account federated to
//! `SA_APP`, and `kvsync run` scoped to the namespace — started at once
//! ([`Fixture::new`], the sync tests) or when the test says
//! ([`Fixture::idle`] + [`Fixture::start_operator`], the reload tests, once
//! their workloads exist). The reload side (Secrets, ConfigMaps, workloads
//! and how they roll) is in `reload.rs`.

use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use kvsync::api::KeyVaultSecret;
use reqwest::Method;
use serde_json::{Value, json};

use super::*;

/// Namespace + emulator + operator, with a service account federated to `SA_APP`.
/// When the test ends (unless it failed), the fixture runs the [`LeakScan`]
/// over the logs of every operator it ran, with every value it wrote.
pub struct Fixture {
    pub client: kube::Client,
    pub ns: TestNamespace,
    pub emulator: Emulator,
    /// The running operator, if any.
    pub operator: Option<Process>,
    /// What the operators stopped earlier printed.
    pub earlier_logs: String,
    /// The cluster's service-account token issuer (federated by `SA_APP`).
    pub issuer: String,
    _issuer_dir: tempfile::TempDir,
    /// Key + certificate registered for `CERT_APP`.
    pub app_certificate: String,
    /// The private keys of the seed's certificates (for the leak scan).
    private_keys: Vec<String>,
    /// Every Secret value the test wrote (as written).
    pub secret_values: std::sync::Mutex<Vec<String>>,
    /// More values to look for whatever their length.
    pub named: Vec<String>,
}

/// Values seeded into the vault (scanned for in logs, events and statuses).
pub const SEED_VALUES: &[&str] = &[
    "s3cr3t-db-value",
    "nested-pw",
    "aGVsbG8td29ybGQ=",
    "alpha-val",
    "beta-val",
    "gamma-val",
    "not-for-you",
];

pub const CERT_APP: &str = "33333333-3333-3333-3333-333333333333";

pub fn seed(
    issuer: &str,
    jwks: &std::path::Path,
    namespace: &str,
    certificate_pem: &str,
    app_certificate: &str,
) -> Value {
    json!({
        "vaults": [{
            "name": "shop",
            "secrets": [
                {"name": "db-password", "value": "s3cr3t-db-value"},
                {"name": "app-config", "value": "{\"user\":\"app\",\"port\":5432}"},
                {"name": "json-blob", "value": "{\"db\":{\"password\":\"nested-pw\"}}"},
                {"name": "b64-value", "value": "aGVsbG8td29ybGQ="},
                {"name": "app-alpha", "value": "alpha-val", "tags": {"env": "prod"}},
                {"name": "app-beta", "value": "beta-val", "tags": {"env": "dev"}},
                {"name": "app-gamma", "value": "gamma-val", "tags": {"env": "prod"}, "enabled": false},
                {"name": "web-cert", "value": certificate_pem, "contentType": "application/x-pem-file"},
                {"name": "restricted", "value": "not-for-you"}
            ]
        }],
        "apps": [
            sa_app_registration(issuer, namespace, true),
            {
                "tenantId": TENANT, "clientId": SECRET_APP, "clientSecret": SECRET_APP_PASSWORD,
                "access": [{"vault": "shop", "secrets": ["*"]}]
            },
            {
                "tenantId": TENANT, "clientId": CERT_APP, "certificate": app_certificate,
                "access": [{"vault": "shop", "secrets": ["db-password"]}]
            }
        ],
        "issuers": [{"issuer": issuer, "jwksFile": jwks}]
    })
}

/// The app registration of `SA_APP` (control API / seed shape), federated
/// with the `shop-api` service account of `namespace` unless `federated` is false.
pub fn sa_app_registration(issuer: &str, namespace: &str, federated: bool) -> Value {
    let credentials = if federated {
        json!([{
            "issuer": issuer,
            "subject": format!("system:serviceaccount:{namespace}:shop-api"),
            "audience": "api://AzureADTokenExchange"
        }])
    } else {
        json!([])
    };
    json!({
        "tenantId": TENANT, "clientId": SA_APP,
        "federatedCredentials": credentials,
        "access": [{"vault": "shop", "secrets": ["db-password", "app-config", "json-blob", "b64-value", "app-alpha", "app-beta", "app-gamma", "web-cert"]}]
    })
}

/// A self-signed RSA certificate: (certificate PEM, private key PEM).
pub fn test_certificate(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

impl Fixture {
    /// The fixture with its operator started (default flags).
    pub async fn new(test: &str) -> Self {
        Self::with_operator_args(test, &[]).await
    }

    /// Like [`Fixture::new`], with extra `kvsync run` flags (they override the defaults).
    pub async fn with_operator_args(test: &str, operator_args: &[&str]) -> Self {
        let mut f = Self::idle(test).await;
        f.operator = Some(Process::start(&run_args(
            &f.emulator,
            &f.ns.name,
            &[],
            operator_args,
        )));
        f
    }

    /// The fixture without an operator yet (see [`Fixture::start_operator`]).
    pub async fn idle(test: &str) -> Self {
        let client = client().await;
        let ns = TestNamespace::new(&client, test).await;
        let dir = tempfile::tempdir().unwrap();
        let (issuer, jwks) = cluster_issuer(&client, dir.path()).await;
        let (web_cert, web_key) = test_certificate("web.shop.example");
        let (app_cert, app_key) = test_certificate("kvsync-client");
        let emulator = Emulator::start(seed(
            &issuer,
            &jwks,
            &ns.name,
            &format!("{web_key}{web_cert}"),
            &app_cert,
        ))
        .await;
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": "shop-api", "annotations": {
                "azure.workload.identity/client-id": SA_APP,
                "azure.workload.identity/tenant-id": TENANT}}
        }))
        .unwrap();
        Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        Fixture {
            client,
            ns,
            emulator,
            operator: None,
            earlier_logs: String::new(),
            issuer,
            _issuer_dir: dir,
            app_certificate: format!("{app_key}{app_cert}"),
            private_keys: vec![web_key, app_key],
            secret_values: Default::default(),
            named: Vec::new(),
        }
    }

    /// Starts `kvsync run` with a short debounce and minimum reload interval
    /// unless `extra` overrides them, and waits until its reload stage has
    /// listed everything: every window after this one watches an operator
    /// that is looking.
    pub async fn start_operator(&mut self, extra: &[&str]) {
        let defaults = [
            ("--reload-debounce", "300ms"),
            ("--min-reload-interval", "1s"),
        ];
        self.start_operator_with(&defaults, extra).await;
    }

    /// [`Fixture::start_operator`] with the operator's own `--reload-debounce`
    /// (the tests' short one left out), for tests of what the default folds.
    pub async fn start_operator_with_default_debounce(&mut self, extra: &[&str]) {
        self.start_operator_with(&[("--min-reload-interval", "1s")], extra)
            .await;
    }

    async fn start_operator_with(&mut self, defaults: &[(&str, &str)], extra: &[&str]) {
        let operator = Process::start(&run_args(&self.emulator, &self.ns.name, defaults, extra));
        reload_listed(&operator).await;
        self.operator = Some(operator);
    }

    /// SIGTERM and wait: the operator stops cleanly (once it has started:
    /// a process killed before its first line had no handler yet).
    pub async fn stop_operator(&mut self) {
        eventually("the operator started", WAIT, || async {
            metrics_url(&self.process().output())
        })
        .await;
        let operator = self.operator.take().expect("an operator is running");
        let (status, output) = operator.terminate_with_output();
        self.earlier_logs.push_str(&output);
        assert!(
            status.success(),
            "the operator exits cleanly on SIGTERM: {status:?}\n{output}"
        );
    }

    /// SIGKILLs the operator (a crash: no graceful shutdown) and, once it is
    /// gone, starts a new one with these flags.
    pub fn crash_and_restart_operator(&mut self, extra: &[&str]) {
        let operator = self.operator.take().expect("an operator is running");
        let output = operator.output();
        operator.kill();
        self.earlier_logs.push_str(&output);
        self.operator = Some(Process::start(&run_args(
            &self.emulator,
            &self.ns.name,
            &[],
            extra,
        )));
    }

    /// The running operator.
    pub fn process(&self) -> &Process {
        self.operator.as_ref().expect("an operator is running")
    }

    pub fn process_mut(&mut self) -> &mut Process {
        self.operator.as_mut().expect("an operator is running")
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    pub fn kvs_api(&self) -> Api<KeyVaultSecret> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Applies KeyVaultSecret `db` (key `pw` from vault secret `db-password`,
    /// refreshed every `interval`), waits until it is synced and returns the
    /// Secret as first written.
    pub async fn synced_db(&self, interval: &str) -> Secret {
        self.apply(
            "db",
            serde_json::json!({"refreshInterval": interval, "data": [{"secretKey": "pw", "remoteRef": {"name": "db-password"}}]}),
        )
        .await;
        self.wait_reason("db", "Synced").await;
        self.secrets().get("db").await.unwrap()
    }

    /// Sets `kvsync.io/force-sync: <token>` on a KeyVaultSecret (a new token syncs at once).
    pub async fn force_sync(&self, name: &str, token: &str) {
        let patch =
            serde_json::json!({"metadata": {"annotations": {"kvsync.io/force-sync": token}}});
        self.kvs_api()
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .unwrap();
    }

    /// The resourceVersions of Secret `name` and of KeyVaultSecret `name`.
    pub async fn versions(&self, name: &str) -> (Option<String>, Option<String>) {
        let secret = self.secrets().get(name).await.unwrap().resource_version();
        let kvs = self.kvs_api().get(name).await.unwrap().resource_version();
        (secret, kvs)
    }

    /// Asserts that for `window` neither Secret `name` nor its
    /// KeyVaultSecret's status is written again after `since` (from
    /// [`Fixture::versions`], taken once the precondition held).
    pub async fn assert_idle(
        &self,
        name: &str,
        since: (Option<String>, Option<String>),
        window: std::time::Duration,
        what: &str,
    ) {
        always(what, window, || async {
            self.versions(name).await == since
        })
        .await;
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    /// Applies a KeyVaultSecret with the emulator's vault URL and the federated service account.
    pub async fn apply(&self, name: &str, mut spec: Value) -> KeyVaultSecret {
        spec["vaultUrl"] = json!(self.emulator.vault_url("shop"));
        if spec.get("auth").is_none() {
            spec["auth"] = json!({"workloadIdentity": {"serviceAccountName": "shop-api"}});
        }
        let body = json!({"apiVersion": "kvsync.io/v1alpha1", "kind": "KeyVaultSecret", "metadata": {"name": name}, "spec": spec});
        self.kvs_api()
            .patch(
                name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&body),
            )
            .await
            .unwrap()
    }

    /// Waits for the Ready condition to have `reason`; returns the object.
    pub async fn wait_reason(&self, name: &str, reason: &str) -> KeyVaultSecret {
        let api = self.kvs_api();
        eventually(&format!("{name} to be {reason}"), WAIT, || {
            let api = api.clone();
            async move {
                let kvs = api.get(name).await.ok()?;
                (ready(&kvs).map(|c| c.reason.as_str()) == Some(reason)).then_some(kvs)
            }
        })
        .await
    }

    /// Waits until the object's Secret is Synced and its rollout counted
    /// (`RolledOut` reported, not `Pending`): after a write the status
    /// changes once more when the reload stage has counted the workloads,
    /// so a "nothing rewritten" window starts only then.
    pub async fn settled(&self, name: &str) -> KeyVaultSecret {
        let api = self.kvs_api();
        eventually(
            &format!("{name} synced and its rollout counted"),
            WAIT,
            || {
                let api = api.clone();
                async move {
                    let kvs = api.get(name).await.ok()?;
                    let status = kvs.status.as_ref()?;
                    let counted = status
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "RolledOut" && c.reason != "Pending");
                    (ready(&kvs).map(|c| c.reason.as_str()) == Some("Synced") && counted)
                        .then_some(kvs)
                }
            },
        )
        .await
    }

    /// Secret hygiene, asked for explicitly with extra values `also` (the
    /// same scan runs anyway when the fixture is dropped): tokens were issued,
    /// and no secret shows in any form (see [`LeakScan`]).
    pub async fn assert_nothing_leaked(&self, also: &[&str]) {
        let issued = self.emulator.control(Method::GET, "issued", None).await;
        assert!(
            !issued["accessTokens"].as_array().unwrap().is_empty(),
            "the emulator issued tokens during the test"
        );
        self.leak_scan(also).run().await;
    }

    /// The scan of this fixture's namespace, operators and emulator.
    pub fn leak_scan(&self, also: &[&str]) -> LeakScan {
        let running = self.operator.as_ref().map(Process::output);
        let mut handled = self.secret_values.lock().unwrap().clone();
        handled.extend(self.emulator.values_set());
        LeakScan {
            namespace: self.ns.name.clone(),
            operator_log: self.earlier_logs.clone() + &running.unwrap_or_default(),
            control_url: Some(self.emulator.endpoints.control_url.clone()),
            named: SEED_VALUES
                .iter()
                .chain(also)
                .chain(&[SECRET_APP_PASSWORD])
                .map(|v| v.to_string())
                .chain(self.named.iter().cloned())
                .collect(),
            handled,
            private_keys: self.private_keys.clone(),
        }
    }

    /// The operator's `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_of(self.process()).await
    }

    /// `kvsync_syncs_total` for one outcome (0 before the first).
    pub async fn sync_count(&self, outcome: &str) -> u64 {
        let series = format!("kvsync_syncs_total{{outcome=\"{outcome}\"}} ");
        self.metrics()
            .await
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |count| count.trim().parse().unwrap())
    }

    /// How many times a Warning event with this reason was recorded in the namespace.
    pub async fn warning_events(&self, reason: &str) -> i32 {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|e| {
                e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason)
            })
            .map(|e| e.count.unwrap_or(1))
            .sum()
    }

    pub async fn secret_data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self.secrets().get_opt(name).await.unwrap()?;
        Some(decoded(&secret))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        scan_when_dropped(|| self.leak_scan(&[]));
    }
}

/// The `/metrics` text of a running operator (its address read from its log).
pub async fn metrics_of(operator: &Process) -> String {
    let base = eventually("the metrics address in the log", WAIT, || async {
        metrics_url(&operator.output())
    })
    .await;
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The metrics address the operator logged at start.
pub fn metrics_url(output: &str) -> Option<String> {
    let line = output.lines().find(|l| l.contains("serving /healthz"))?;
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    Some(format!("http://{addr}"))
}

pub fn ready(
    kvs: &KeyVaultSecret,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    kvs.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
}

pub fn decoded(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}
