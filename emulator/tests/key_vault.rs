//! The Key Vault data plane through the official SDK (azure_security_keyvault_secrets):
//! versions and rotations, paging, the errors it surfaces, and writes.

mod support;

use azure_core::http::StatusCode;
use azure_security_keyvault_secrets::ResourceExt;
use azure_security_keyvault_secrets::models::{
    SecretAttributes, SecretClientListSecretPropertiesVersionsOptions, SetSecretParameters,
    UpdateSecretPropertiesParameters,
};
use futures::TryStreamExt;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn sdk_reads_latest_and_older_versions_and_sees_rotations() {
    let emulator = Emulator::start_standard().await;
    let client = emulator.reader_client();

    let first = get_secret(&client, "db-password", None).await.unwrap();
    assert_eq!(first.value.as_deref(), Some("s3cr3t"));
    assert_eq!(first.content_type.as_deref(), Some("text/plain"));
    assert_eq!(first.tags.as_ref().unwrap()["env"], "prod");
    assert_eq!(first.attributes.as_ref().unwrap().enabled, Some(true));
    let first_version = version_of(&first);

    let rotated: Value = emulator
        .control_ok(
            reqwest::Method::PUT,
            "vaults/shop/secrets/db-password",
            Some(json!({"value": "n3w"})),
        )
        .await
        .json()
        .await
        .unwrap();
    let latest = get_secret(&client, "db-password", None).await.unwrap();
    assert_eq!(latest.value.as_deref(), Some("n3w"));
    assert_eq!(latest.id.as_deref(), rotated["id"].as_str());
    assert_ne!(version_of(&latest), first_version);

    let old = get_secret(&client, "db-password", Some(&first_version))
        .await
        .unwrap();
    assert_eq!(old.value.as_deref(), Some("s3cr3t"));
}

#[tokio::test]
async fn sdk_pages_through_more_than_25_secrets_and_all_versions() {
    let extra: String = (0..30)
        .map(|i| format!("  - {{name: bulk-{i:02}, value: v{i}}}\n"))
        .collect();
    let emulator = Emulator::start(|dir| standard_seed(dir, &extra)).await;
    let client = emulator.reader_client();

    let pages: Vec<_> = client
        .list_secret_properties(None)
        .unwrap()
        .into_pages()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(pages.len(), 2, "32 secrets make a page of 25 and one of 7");
    let names: Vec<String> = client
        .list_secret_properties(None)
        .unwrap()
        .map_ok(|item| item.resource_id().unwrap().name)
        .try_collect()
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..30).map(|i| format!("bulk-{i:02}")).collect();
    expected.extend(["api-key".to_owned(), "db-password".to_owned()]);
    expected.sort();
    assert_eq!(names, expected);

    for value in ["two", "three"] {
        emulator
            .control_ok(
                reqwest::Method::PUT,
                "vaults/shop/secrets/db-password",
                Some(json!({"value": value})),
            )
            .await;
    }
    let options = SecretClientListSecretPropertiesVersionsOptions {
        maxresults: Some(2),
        ..SecretClientListSecretPropertiesVersionsOptions::default()
    };
    let versions: Vec<String> = client
        .list_secret_properties_versions("db-password", Some(options))
        .unwrap()
        .map_ok(|item| item.resource_id().unwrap().version.unwrap())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(versions.len(), 3);
    let latest = get_secret(&client, "db-password", None).await.unwrap();
    assert_eq!(versions.last(), Some(&version_of(&latest)));
}

#[tokio::test]
async fn sdk_surfaces_disabled_forbidden_and_missing_secrets_as_key_vault_errors() {
    let emulator = Emulator::start_standard().await;
    let reader = emulator.reader_client();

    let missing = get_secret(&reader, "no-such-secret", None)
        .await
        .unwrap_err();
    assert_eq!(
        service_error(&missing),
        (StatusCode::NotFound, "SecretNotFound".to_owned())
    );

    emulator
        .control_ok(
            reqwest::Method::PATCH,
            "vaults/shop/secrets/db-password",
            Some(json!({"enabled": false})),
        )
        .await;
    let disabled = get_secret(&reader, "db-password", None).await.unwrap_err();
    assert_eq!(
        service_error(&disabled),
        (StatusCode::Forbidden, "Forbidden".to_owned())
    );
    assert_eq!(inner_error_code(disabled), "SecretDisabled");

    let limited =
        emulator.secret_client("shop", emulator.secret_credential(LIMITED, LIMITED_SECRET));
    assert_eq!(
        get_secret(&limited, "api-key", None)
            .await
            .unwrap()
            .value
            .as_deref(),
        Some("k3y")
    );
    // A real RBAC message spans lines (`\r\n`), which azure_core cannot borrow while
    // parsing, so its `error_code` falls back to "403"; the inner code still reads.
    let denied = get_secret(&limited, "db-password", None).await.unwrap_err();
    assert_eq!(service_error(&denied).0, StatusCode::Forbidden);
    assert_eq!(inner_error_code(denied), "ForbiddenByRbac");

    // No grant on the vault `other` at all: listing it is refused too.
    let elsewhere =
        emulator.secret_client("other", emulator.secret_credential(READER, READER_SECRET));
    let listing = elsewhere
        .list_secret_properties(None)
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert_eq!(inner_error_code(listing), "ForbiddenByRbac");

    // Revoking access at runtime takes effect on the next call.
    emulator
        .control_ok(
            reqwest::Method::PUT,
            &format!("apps/{LIMITED}"),
            Some(json!({"tenantId": TENANT, "clientId": LIMITED, "clientSecret": LIMITED_SECRET, "access": []})),
        )
        .await;
    let revoked = get_secret(&limited, "api-key", None).await.unwrap_err();
    assert_eq!(inner_error_code(revoked), "ForbiddenByRbac");
}

#[tokio::test]
async fn sdk_writes_through_the_data_plane() {
    let emulator = Emulator::start_standard().await;
    let client = emulator.reader_client();

    let parameters = SetSecretParameters {
        value: Some("from-sdk".to_owned()),
        content_type: Some("text/plain".to_owned()),
        ..SetSecretParameters::default()
    };
    let created = client
        .set_secret("new-secret", parameters.try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(created.value.as_deref(), Some("from-sdk"));

    let disable = UpdateSecretPropertiesParameters {
        secret_attributes: Some(SecretAttributes {
            enabled: Some(false),
            ..SecretAttributes::default()
        }),
        ..UpdateSecretPropertiesParameters::default()
    };
    let updated = client
        .update_secret_properties("new-secret", disable.try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(updated.value, None, "updates do not echo the value");
    assert_eq!(updated.attributes.unwrap().enabled, Some(false));
    let disabled = get_secret(&client, "new-secret", None).await.unwrap_err();
    assert_eq!(inner_error_code(disabled), "SecretDisabled");

    client.delete_secret("new-secret", None).await.unwrap();
    let gone = get_secret(&client, "new-secret", None).await.unwrap_err();
    assert_eq!(service_error(&gone).1, "SecretNotFound");

    // The limited app may not write where it may not read.
    let limited =
        emulator.secret_client("shop", emulator.secret_credential(LIMITED, LIMITED_SECRET));
    let parameters = SetSecretParameters {
        value: Some("nope".to_owned()),
        ..SetSecretParameters::default()
    };
    let refused = limited
        .set_secret("db-password", parameters.try_into().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(inner_error_code(refused), "ForbiddenByRbac");
}

#[tokio::test]
async fn nbf_and_exp_are_kept_per_version_and_shown_by_get_list_and_versions() {
    let emulator = Emulator::start_standard().await;
    let client = emulator.reader_client();
    let unix = |t: Option<time::OffsetDateTime>| t.map(|t| t.unix_timestamp());
    // Two versions with their own validity window; the newest is not yet valid.
    let (old_nbf, old_exp, new_nbf, new_exp) =
        (1_700_000_000, 1_800_000_000, 1_900_000_000, 2_000_000_000);
    let mut versions = Vec::new();
    for (nbf, exp) in [(old_nbf, old_exp), (new_nbf, new_exp)] {
        let bundle: Value = emulator
            .control_ok(
                reqwest::Method::PUT,
                "vaults/shop/secrets/scheduled",
                Some(json!({"value": format!("v{nbf}"), "nbf": nbf, "exp": exp})),
            )
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            (
                bundle["attributes"]["nbf"].as_i64(),
                bundle["attributes"]["exp"].as_i64()
            ),
            (Some(nbf), Some(exp))
        );
        versions.push(
            bundle["id"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned(),
        );
    }

    // GET serves both, not-yet-valid included (nbf/exp are informational).
    let latest = get_secret(&client, "scheduled", None).await.unwrap();
    let attributes = latest.attributes.unwrap();
    assert_eq!(latest.value.as_deref(), Some("v1900000000"));
    assert_eq!(
        (unix(attributes.not_before), unix(attributes.expires)),
        (Some(new_nbf), Some(new_exp))
    );
    let old = get_secret(&client, "scheduled", Some(&versions[0]))
        .await
        .unwrap();
    let attributes = old.attributes.unwrap();
    assert_eq!(
        (unix(attributes.not_before), unix(attributes.expires)),
        (Some(old_nbf), Some(old_exp))
    );

    // The listing shows the latest version's attributes.
    let listed: Vec<_> = client
        .list_secret_properties(None)
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let item = listed
        .iter()
        .find(|item| item.resource_id().unwrap().name == "scheduled")
        .unwrap();
    let attributes = item.attributes.clone().unwrap();
    assert_eq!(
        (unix(attributes.not_before), unix(attributes.expires)),
        (Some(new_nbf), Some(new_exp))
    );
    // A secret without them shows neither.
    let plain = listed
        .iter()
        .find(|item| item.resource_id().unwrap().name == "api-key")
        .unwrap();
    let attributes = plain.attributes.clone().unwrap();
    assert_eq!((attributes.not_before, attributes.expires), (None, None));

    // The versions listing shows each version's own.
    let by_version: Vec<(String, Option<i64>, Option<i64>)> = client
        .list_secret_properties_versions("scheduled", None)
        .unwrap()
        .map_ok(|item| {
            let attributes = item.attributes.clone().unwrap();
            (
                item.resource_id().unwrap().version.unwrap(),
                unix(attributes.not_before),
                unix(attributes.expires),
            )
        })
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        by_version,
        [
            (versions[0].clone(), Some(old_nbf), Some(old_exp)),
            (versions[1].clone(), Some(new_nbf), Some(new_exp)),
        ]
    );

    // PATCH through the control API changes the latest version's exp only.
    emulator
        .control_ok(
            reqwest::Method::PATCH,
            "vaults/shop/secrets/scheduled",
            Some(json!({"exp": 2_100_000_000})),
        )
        .await;
    let old = get_secret(&client, "scheduled", Some(&versions[0]))
        .await
        .unwrap();
    let latest = get_secret(&client, "scheduled", None).await.unwrap();
    assert_eq!(unix(old.attributes.unwrap().expires), Some(old_exp));
    assert_eq!(
        unix(latest.attributes.unwrap().expires),
        Some(2_100_000_000)
    );
}
