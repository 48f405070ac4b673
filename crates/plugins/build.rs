//! Builds the built-in plugins (`plugins/*`) for wasm32-wasip2 and writes the table that embeds them
//! in the binary (`$OUT_DIR/embedded.rs`, included by `src/builtin.rs`). Which built-ins exist is
//! the config's list (`wasmgate_config::builtins::NAMES`), read from its source.

include!("../../build-support/wasm_build.rs");

#[allow(dead_code)]
mod names {
    include!("../config/src/builtins.rs");
}

fn main() {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=../config/src/builtins.rs");
    let built = build_wasm_plugins(names::NAMES, &out_dir.join("builtin"));
    let mut table = String::from(
        "/// The component bytes of a built-in plugin.\npub fn bytes(name: &str) -> Option<&'static [u8]> {\n    match name {\n",
    );
    for (name, file) in names::NAMES.iter().zip(&built) {
        table.push_str(&format!(
            "        {name:?} => Some(include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    table.push_str("        _ => None,\n    }\n}\n");
    std::fs::write(out_dir.join("embedded.rs"), table).unwrap();
}
