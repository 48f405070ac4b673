//! Builds the built-in plugins (`plugins/*`) for wasm32-wasip2 so they can be embedded in the binary.

include!("../../build-support/wasm_build.rs");

const BUILTINS: &[&str] = &[
    "redirect",
    "headers",
    "token-auth",
    "ip-allow",
    "basic-auth",
    "require-header",
];

fn main() {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin");
    build_wasm_plugins(BUILTINS, &out);
    println!("cargo:rustc-env=WASMGATE_BUILTIN_DIR={}", out.display());
}
