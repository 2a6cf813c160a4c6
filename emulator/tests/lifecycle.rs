//! Starting and stopping: the library's `Running` stops its listeners on
//! shutdown or drop; the `kvsync-emulator` binary publishes endpoints.json,
//! exits cleanly on SIGTERM (removing the file) and refuses a bad seed.

mod support;

use kvsync_emulator::{ENDPOINTS_FILE, Endpoints};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// Whether the control API answers at all (any HTTP status).
async fn answers(http: &reqwest::Client, control_url: &str) -> bool {
    http.get(format!("{control_url}counters"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .is_ok()
}

#[tokio::test]
async fn shutdown_and_drop_stop_every_listener() {
    for graceful in [true, false] {
        let emulator = Emulator::start_standard().await;
        let Emulator {
            running,
            endpoints,
            dir: _dir,
            http,
        } = emulator;
        assert!(answers(&http, &endpoints.control_url).await);
        assert!(
            http.get(&endpoints.authority_host).send().await.is_ok(),
            "Entra answers while running"
        );
        if graceful {
            running.shutdown().await;
        } else {
            drop(running);
        }
        // A fresh client: no pooled connection may hide a closed listener.
        let fresh = reqwest::Client::new();
        assert!(
            !answers(&fresh, &endpoints.control_url).await,
            "the control API still answers after {}",
            if graceful { "shutdown" } else { "drop" }
        );
        let vault = &endpoints.vaults["shop"];
        assert!(
            trusting_client(&endpoints.ca_file)
                .get(format!("{vault}secrets?api-version=2025-07-01"))
                .send()
                .await
                .is_err(),
            "the vault still answers"
        );
    }
}

/// A running `kvsync-emulator` process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_emulator(dir: &Path, seed: &str) -> Process {
    let seed_path = dir.join("seed.yaml");
    std::fs::write(&seed_path, seed).unwrap();
    let log = std::fs::File::create(dir.join("emulator.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kvsync-emulator"))
        .arg("--config")
        .arg(&seed_path)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the kvsync-emulator binary starts");
    Process(child)
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("emulator.log")).unwrap_or_default()
}

/// Waits for the binary's endpoints.json (what scripts wait on).
async fn published_endpoints(process: &mut Process, dir: &Path) -> Endpoints {
    let endpoints_file = dir.join("state").join(ENDPOINTS_FILE);
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&endpoints_file) {
            return serde_json::from_str(&text).expect("endpoints.json parses");
        }
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("the emulator exited with {status}:\n{}", log_of(dir));
        }
        assert!(
            Instant::now() < deadline,
            "no endpoints.json in time:\n{}",
            log_of(dir)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_emulator_exits_cleanly_on_sigterm_and_refuses_a_bad_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut emulator = spawn_emulator(dir.path(), &standard_seed(dir.path(), ""));
    let endpoints = published_endpoints(&mut emulator, dir.path()).await;
    assert_eq!(endpoints.pid, emulator.0.id());
    assert!(
        answers(&reqwest::Client::new(), &endpoints.control_url).await,
        "the published control URL answers"
    );
    let state = dir.path().join("state");
    assert!(
        std::fs::read_to_string(state.join("ca.pem"))
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let terminated = Command::new("kill")
        .arg("-TERM")
        .arg(emulator.0.id().to_string())
        .status()
        .unwrap();
    assert!(terminated.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = emulator.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(status.success(), "{status}");
    assert!(
        !state.join(ENDPOINTS_FILE).exists(),
        "endpoints.json is removed on exit"
    );

    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("seed.yaml");
    std::fs::write(
        &seed_path,
        "vaults: [{name: shop, tenantId: t, secrets: [{name: db, valu: x}]}]",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kvsync-emulator"))
        .arg("--config")
        .arg(&seed_path)
        .arg("--state-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr) + String::from_utf8_lossy(&output.stdout);
    assert!(stderr.contains("unknown field `valu`"), "{stderr}");
}
