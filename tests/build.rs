//! Builds the fixture plugins (`tests/plugins/*`) for wasm32-wasip2; tests find them with
//! `wasmgate_tests::fixture("name")`.

include!("../build-support/wasm_build.rs");

const FIXTURES: &[&str] = &[
    "fixture-add-header",
    "fixture-deny",
    "fixture-trap",
    "fixture-spin",
    "fixture-hog",
    "fixture-recurse",
    "fixture-init-fail",
    "fixture-chatty",
];

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("fixtures");
    build_wasm_plugins(FIXTURES, &out);
    println!("cargo:rustc-env=WASMGATE_FIXTURE_DIR={}", out.display());
}
