//! The checked-in CRD is exactly what the types generate.

#[test]
fn checked_in_crd_matches_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/keyvaultsecrets.kvsync.io.yaml"
    );
    let checked_in = std::fs::read_to_string(path).expect("crds/keyvaultsecrets.kvsync.io.yaml");
    assert!(
        checked_in == kvsync::api::crd_yaml(),
        "crds/ is stale: run `cargo run -- crd > crds/keyvaultsecrets.kvsync.io.yaml`"
    );
}

/// What `kubectl explain keyvaultsecret[.FIELD]` shows: the top-level
/// description is written for users, and every field of spec and status
/// (down to the leaves) has a description.
#[test]
fn every_field_reads_well_in_kubectl_explain() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(kvsync::api::KeyVaultSecret::crd()).unwrap();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let top = root["description"].as_str().unwrap_or_default();
    assert!(
        top.starts_with("A KeyVaultSecret keeps one Kubernetes Secret"),
        "top-level description: {top:?}"
    );
    let mut missing = Vec::new();
    undescribed(root, "keyvaultsecret", &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// Collects the paths of properties without a description (a property's
/// items and map values are described by the property itself).
fn undescribed(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else {
        for nested in [&schema["items"], &schema["additionalProperties"]] {
            if nested.is_object() {
                undescribed(nested, path, missing);
            }
        }
        return;
    };
    for (name, property) in properties {
        let path = format!("{path}.{name}");
        if ["apiVersion", "kind", "metadata"].contains(&name.as_str()) {
            continue;
        }
        if property["description"].as_str().is_none_or(str::is_empty) {
            missing.push(path.clone());
        }
        undescribed(property, &path, missing);
    }
}
