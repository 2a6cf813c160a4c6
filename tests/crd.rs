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
