//! The operator's settings explain needs, read from where the chart puts
//! them: the `--min-reload-interval=…` argument (or `KVSYNC_MIN_RELOAD_INTERVAL`)
//! of the operator's Deployment (label `app.kubernetes.io/name: kvsync`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;

const FLAG: &str = "--min-reload-interval";
const ENV: &str = "KVSYNC_MIN_RELOAD_INTERVAL";

/// The `--min-reload-interval` the Deployment runs `kvsync run` with, if it
/// sets one (the flag wins over the environment, as clap reads them).
pub fn min_reload_interval(deployment: &Deployment) -> Option<Duration> {
    let containers = &deployment.spec.as_ref()?.template.spec.as_ref()?.containers;
    containers.iter().find_map(|container| {
        let args = container.args.as_deref().unwrap_or_default();
        if args.first().map(String::as_str) != Some("run") {
            return None;
        }
        let from_args =
            args.iter()
                .enumerate()
                .find_map(|(i, arg)| match arg.strip_prefix(FLAG)? {
                    "" => args.get(i + 1).map(String::as_str),
                    value => value.strip_prefix('='),
                });
        let from_env = || {
            let env = container.env.as_deref().unwrap_or_default();
            env.iter().find(|e| e.name == ENV)?.value.as_deref()
        };
        humantime::parse_duration(from_args.or_else(from_env)?).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(args: serde_json::Value, env: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "kvsync"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "sidecar", "args": ["--min-reload-interval=9h"]},
                {"name": "kvsync", "args": args, "env": env}
            ]}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_interval_is_read_from_the_operators_arguments_or_environment() {
        let minutes = |m: u64| Some(Duration::from_secs(60 * m));
        let env = json!([{"name": ENV, "value": "5m"}]);
        assert_eq!(
            min_reload_interval(&deployment(
                json!(["run", "--min-reload-interval=10m"]),
                env.clone()
            )),
            minutes(10)
        );
        assert_eq!(
            min_reload_interval(&deployment(
                json!(["run", "--min-reload-interval", "2m"]),
                json!([])
            )),
            minutes(2)
        );
        assert_eq!(
            min_reload_interval(&deployment(json!(["run"]), env)),
            minutes(5)
        );
        assert_eq!(
            min_reload_interval(&deployment(json!(["run"]), json!([]))),
            None,
            "not the sidecar's"
        );
    }
}
