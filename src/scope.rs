//! Which namespaces the operator acts in.
//!
//! Both stages (sync and reload) honour the same scope, so it is one set of flags.
//! A namespace is in scope when it is listed in `--namespaces` (or that list is
//! empty), is not in `--ignore-namespaces`, and — if `--namespace-selector` is
//! set — its labels match the selector. The first two are decided here from
//! values alone; the label selector needs the Namespace object, so callers
//! pass its labels in. Which namespaces the stages watch follows from the
//! same flags, in one place: [`ScopeArgs::watched_namespaces`].
//!
//! The cluster's own namespaces ([`SYSTEM_NAMESPACES`]) and the operator's
//! own are out of scope unless `--namespaces` names them: they hold the
//! credentials of the cluster and of kvsync itself, and no tenant's
//! KeyVaultSecret or reload annotation belongs there.

use std::collections::BTreeMap;

/// Namespaces of the cluster itself: out of scope unless named.
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Namespace scoping flags shared by every stage.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ScopeArgs {
    /// Only act in these namespaces (comma separated). Empty: every namespace.
    #[arg(long, env = "KVSYNC_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Never act in these namespaces (comma separated).
    #[arg(long, env = "KVSYNC_IGNORE_NAMESPACES", value_delimiter = ',')]
    pub ignore_namespaces: Vec<String>,

    /// Only act in namespaces whose labels match this equality selector
    /// (e.g. `team=shop,env=prod`).
    #[arg(long, env = "KVSYNC_NAMESPACE_SELECTOR", value_parser = parse_selector)]
    pub namespace_selector: Option<LabelSelector>,

    /// The operator's own namespace (`--operator-namespace`): out of scope
    /// unless named, like [`SYSTEM_NAMESPACES`].
    #[arg(skip)]
    pub operator_namespace: Option<String>,
}

/// An equality-based label selector (`k=v,k2=v2`, or `k` for "label present").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(BTreeMap<String, Option<String>>);

impl LabelSelector {
    /// Whether `labels` satisfy every requirement of the selector.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0
            .iter()
            .all(|(key, want)| match (want, labels.get(key)) {
                (None, found) => found.is_some(),
                (Some(want), Some(found)) => want == found,
                (Some(_), None) => false,
            })
    }
}

/// The selector in the API's syntax (`k=v,k2`), for server-side filtering.
impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut separator = "";
        for (key, value) in &self.0 {
            match value {
                Some(value) => write!(f, "{separator}{key}={value}")?,
                None => write!(f, "{separator}{key}")?,
            }
            separator = ",";
        }
        Ok(())
    }
}

/// A selector requirement that is not `key=value` or `key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector requirement `{0}` is not of the form key=value or key")]
pub struct SelectorError(String);

/// Parses `k=v,k2,k3=v3`. Set-based selectors (`in`, `notin`, `!k`) are rejected
/// with a clear message rather than misread.
pub fn parse_selector(text: &str) -> Result<LabelSelector, SelectorError> {
    let mut requirements = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = match part.split_once('=') {
            Some((k, v)) => (
                k.trim_end_matches('='),
                Some(v.trim_start_matches('=').to_owned()),
            ),
            None => (part, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        if !valid(key) || value.as_deref().is_some_and(|v| !v.is_empty() && !valid(v)) {
            return Err(SelectorError(part.to_owned()));
        }
        requirements.insert(key.to_owned(), value);
    }
    Ok(LabelSelector(requirements))
}

impl ScopeArgs {
    /// What each stage watches: `None` (every namespace, one cluster-wide
    /// watch) when `--namespaces` is empty, else every listed namespace that is
    /// in scope by name (so namespaced RBAC suffices, and an ignored one is not
    /// watched at all).
    pub fn watched_namespaces(&self) -> Vec<Option<String>> {
        if self.namespaces.is_empty() {
            return vec![None];
        }
        self.namespaces
            .iter()
            .filter(|ns| self.name_in_scope(ns))
            .map(|ns| Some(ns.clone()))
            .collect()
    }

    /// Whether a namespace is in scope by name (the label selector is checked
    /// separately by [`ScopeArgs::labels_in_scope`]).
    pub fn name_in_scope(&self, namespace: &str) -> bool {
        let named = self.namespaces.iter().any(|n| n == namespace);
        let protected = SYSTEM_NAMESPACES.contains(&namespace)
            || self.operator_namespace.as_deref() == Some(namespace);
        (named || (self.namespaces.is_empty() && !protected))
            && !self.ignore_namespaces.iter().any(|n| n == namespace)
    }

    /// Whether a namespace with these labels passes `--namespace-selector`.
    pub fn labels_in_scope(&self, labels: &BTreeMap<String, String>) -> bool {
        self.namespace_selector
            .as_ref()
            .is_none_or(|selector| selector.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_listed_and_ignored() {
        let scope = ScopeArgs {
            namespaces: vec!["a".into(), "b".into()],
            ignore_namespaces: vec!["b".into()],
            namespace_selector: None,
            operator_namespace: None,
        };
        assert!(scope.name_in_scope("a"));
        assert!(!scope.name_in_scope("b"), "ignore wins over the allow list");
        assert!(!scope.name_in_scope("c"));
        assert!(ScopeArgs::default().name_in_scope("anything"));
    }

    #[test]
    fn system_and_operator_namespaces_only_when_named() {
        let everywhere = ScopeArgs {
            operator_namespace: Some("kvsync-system".into()),
            ..ScopeArgs::default()
        };
        for protected in [
            "kube-system",
            "kube-public",
            "kube-node-lease",
            "kvsync-system",
        ] {
            assert!(!everywhere.name_in_scope(protected), "{protected}");
        }
        assert!(everywhere.name_in_scope("shop"));
        let named = ScopeArgs {
            namespaces: vec!["kube-system".into(), "kvsync-system".into()],
            ..everywhere
        };
        assert!(named.name_in_scope("kube-system"));
        assert!(named.name_in_scope("kvsync-system"));
    }

    #[test]
    fn watched_namespaces_are_the_listed_ones_in_scope_or_all() {
        let scope = ScopeArgs {
            namespaces: vec!["a".into(), "b".into()],
            ignore_namespaces: vec!["b".into()],
            namespace_selector: None,
            operator_namespace: None,
        };
        assert_eq!(scope.watched_namespaces(), [Some("a".to_owned())]);
        let everywhere = ScopeArgs {
            ignore_namespaces: vec!["b".into()],
            ..ScopeArgs::default()
        };
        assert_eq!(everywhere.watched_namespaces(), [None]);
    }

    #[test]
    fn selector_requires_every_label() {
        let selector = parse_selector("team=shop, env").unwrap();
        assert!(selector.matches(&labels(&[("team", "shop"), ("env", "x")])));
        assert!(!selector.matches(&labels(&[("team", "shop")])));
        assert!(!selector.matches(&labels(&[("team", "web"), ("env", "x")])));
        assert_eq!(selector.to_string(), "env,team=shop");
        assert!(parse_selector("team in (a,b)").is_err());
        assert!(parse_selector("!team").is_err());
    }

    proptest! {
        #[test]
        fn selector_parsing_never_panics(text in any::<String>()) {
            let _ = parse_selector(&text);
        }

        /// A selector written from a label set matches that set, and stops
        /// matching when one of its labels changes value.
        #[test]
        fn selectors_written_from_labels_match_them(
            labels in proptest::collection::btree_map("[a-z0-9][-a-z0-9_./]{0,20}", "[A-Za-z0-9][-A-Za-z0-9_.]{0,20}", 1..5),
        ) {
            let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let selector = parse_selector(&text.join(",")).unwrap();
            prop_assert!(selector.matches(&labels));
            let mut changed = labels.clone();
            changed.values_mut().next().unwrap().push('x');
            prop_assert!(!selector.matches(&changed));
        }
    }
}
