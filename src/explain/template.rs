//! Which fetched values a `target.template` key is made from: the variables
//! its MiniJinja template looks up ([`minijinja::Template::undeclared_variables`],
//! a static analysis — every lookup the text contains, whatever branch runs),
//! each traced to the spec entry that fetches a key of that name.
//!
//! ```text
//!  template text ──parse──▶ variables { pw, values, … }
//!       pw     ──▶ data[secretKey=pw] ──▶ vault secret db-password
//!       values ──▶ every fetched value (values["…"])
//!       user   ──▶ a field of dataFrom.extract app-config / a secret dataFrom.find read
//! ```
//!
//! The template text is parsed, never rendered, and never put in a report.

use std::collections::BTreeSet;

use super::report::{KeySource, TemplateVariable};

/// One template as the sync stage applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct TemplateText {
    /// The Secret key it writes.
    pub key: String,
    /// `target.template.data`, or `templateFrom ConfigMap/NAME` (…`Secret/NAME`).
    pub origin: String,
    /// The text, or why it could not be read.
    pub text: Result<String, TemplateProblem>,
}

/// Why a template's variables are unknown: its text could not be had, or
/// does not parse.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TemplateProblem {
    /// The `templateFrom` ConfigMap or Secret does not exist.
    #[error("{origin} does not exist")]
    SourceMissing { origin: String },
    /// The `templateFrom` ConfigMap or Secret could not be read (the refusal
    /// itself is among the report's limits).
    #[error("{origin} cannot be read")]
    SourceUnreadable { origin: String },
    /// The `templateFrom` ConfigMap or Secret has no such key.
    #[error("{origin} has no key {key:?}")]
    NoKey { origin: String, key: String },
    /// The text is not a MiniJinja template.
    #[error("the template does not parse ({0})")]
    Syntax(minijinja::ErrorKind),
}

/// The variables `text` looks up, or why it does not parse.
pub fn variables(text: &str) -> Result<BTreeSet<String>, TemplateProblem> {
    let env = minijinja::Environment::new();
    let template = env
        .template_from_str(text)
        .map_err(|error| TemplateProblem::Syntax(error.kind()))?;
    Ok(template.undeclared_variables(false).into_iter().collect())
}

/// Where the fetched key `variable` comes from, given the spec's `sources`.
pub fn trace(variable: &str, sources: &[KeySource]) -> TemplateVariable {
    let traced = |from: String, vault_secret: Option<&str>| TemplateVariable {
        variable: variable.to_owned(),
        from,
        vault_secret: vault_secret.map(str::to_owned),
    };
    if let Some(data) = sources
        .iter()
        .find(|s| s.from == "data" && s.key == variable)
    {
        return traced(
            format!("data[secretKey={variable}]"),
            Some(&data.vault_secret),
        );
    }
    if variable == "values" {
        return traced("every fetched value (values[\"…\"])".to_owned(), None);
    }
    if let Some(find) = sources
        .iter()
        .find(|s| s.from == "dataFrom.find" && s.synced.contains_key(variable))
    {
        return traced(
            format!("dataFrom.find ({})", find.vault_secret),
            Some(variable),
        );
    }
    let extracts: Vec<&str> = sources
        .iter()
        .filter(|s| s.from == "dataFrom.extract")
        .map(|s| s.vault_secret.as_str())
        .collect();
    if extracts.is_empty() {
        traced(
            "no spec entry fetches a key of this name (a Jinja global, or rendering fails)"
                .to_owned(),
            None,
        )
    } else {
        let only = (extracts.len() == 1).then(|| extracts[0]);
        traced(
            format!("a field of dataFrom.extract {}", extracts.join(" or ")),
            only,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_are_the_lookups_not_what_the_template_sets() {
        let found =
            variables("{% set x = pw | b64enc %}{{ x }}:{{ user }}{{ values[\"a-b\"] }}").unwrap();
        assert_eq!(found, ["pw", "user", "values"].map(String::from).into());
        assert!(variables("{{ unclosed").is_err());
    }
}
