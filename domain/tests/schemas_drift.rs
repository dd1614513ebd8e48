//! The checked-in `schemas/` must equal what the Rust types generate. Regenerate with
//! `cargo xtask schemas` after changing a wire type.

use std::path::PathBuf;

#[test]
fn checked_in_schemas_match_the_code() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let mut stale = Vec::new();
    for file in domain::schema::all() {
        let on_disk = std::fs::read_to_string(root.join(&file.path)).unwrap_or_default();
        if on_disk != file.contents {
            stale.push(file.path);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas differ from the code, run `cargo xtask schemas`: {stale:?}"
    );
}
