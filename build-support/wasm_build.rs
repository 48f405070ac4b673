// Shared by `crates/plugins/build.rs` (built-in plugins) and `tests/build.rs` (test fixtures), via `include!`:
// build guest crates of this workspace for `wasm32-wasip2` with a nested cargo, into `target/wasm`.
//
// A separate target dir keeps the nested cargo off the outer build's lock; the outer jobserver
// (`CARGO_MAKEFLAGS`) is inherited, so the two together stay within the machine's cores.

/// Build `packages` (workspace package names) with the `plugin` profile for wasm32-wasip2 and copy each
/// `<crate>.wasm` into `out_dir`. Returns the copied paths in `packages` order.
#[allow(dead_code)]
fn build_wasm_plugins(packages: &[&str], out_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::path::PathBuf;
    use std::process::Command;

    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    // The workspace root: the nearest directory up with the lock file (crates/plugins, tests).
    let root = manifest_dir
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file() && d.join("wit").is_dir())
        .expect("the workspace root, with Cargo.lock and wit/")
        .to_path_buf();
    for dir in ["plugin-sdk", "wit", "plugins", "tests/plugins"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());

    ensure_wasm_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target").join("wasm");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--profile", "plugin", "--locked", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(&target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    // Flags meant for the host build must not leak into the guest build.
    for var in ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER"] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the wasm plugins");
    assert!(status.success(), "building the wasm plugins failed: {status}");

    std::fs::create_dir_all(out_dir).unwrap();
    packages
        .iter()
        .map(|p| {
            let file = format!("{}.wasm", p.replace('-', "_"));
            let built = target_dir.join("wasm32-wasip2").join("plugin").join(&file);
            let dest = out_dir.join(&file);
            std::fs::copy(&built, &dest).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
            dest
        })
        .collect()
}

/// Install the wasm32-wasip2 target through rustup when the toolchain lacks it, so a fresh machine
/// needs no manual step.
fn ensure_wasm_target() {
    use std::process::Command;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let installed = sysroot
        .map(|s| std::path::Path::new(&s).join("lib/rustlib/wasm32-wasip2").is_dir())
        .unwrap_or(false);
    if !installed {
        let status = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "the wasm32-wasip2 target is missing and `rustup target add wasm32-wasip2` failed"
        );
    }
}
