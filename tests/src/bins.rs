//! Locating the binaries the tests run: the tracer under test and the traffic driver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::child::output_with_timeout;

/// Bound on one `cargo build` (the netwatch build compiles the eBPF crate with nightly).
const CARGO_BUILD_TIMEOUT_SECS: u64 = 900;

/// The workspace root: the parent of this crate's manifest directory (resolved at compile time,
/// so it does not depend on the current directory of the test process).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent: the workspace root")
        .to_path_buf()
}

/// The `netwatch` binary under test. Env `NETWATCH_BIN` if set (a release build, an installed
/// copy); otherwise `cargo build -p netwatch --message-format=json` from the workspace root,
/// once per process, taking the `executable` of the `compiler-artifact` message of the
/// `netwatch` bin target. Why: `cargo test` does not build other packages' binaries, and a
/// hard-coded `target/debug` path breaks with `CARGO_TARGET_DIR` or a stale build.
/// Panics with cargo's stderr when the build fails.
pub fn netwatch_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| from_env_or_build("NETWATCH_BIN", "netwatch", "netwatch"))
        .clone()
}

/// The `tcpdrive` traffic driver. Env `TCPDRIVE_BIN` if set; otherwise built like
/// [`netwatch_bin`] (`cargo build -p netwatch-tests --bin tcpdrive`, once per process).
///
/// The integration tests (`tests/tests.rs`) may instead use
/// `PathBuf::from(env!("CARGO_BIN_EXE_tcpdrive"))`: cargo builds the bin before them and sets
/// that variable. It is NOT set for this crate's own unit tests (`--lib`), hence this function.
pub fn tcpdrive() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| from_env_or_build("TCPDRIVE_BIN", "netwatch-tests", "tcpdrive"))
        .clone()
}

fn from_env_or_build(var: &str, package: &str, bin: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return path;
    }
    cargo_build_bin(package, bin)
}

/// `cargo build -p <package> --bin <bin> --message-format=json` in the workspace root, returning
/// the bin's `executable`. Builds are serialised within the process (cargo would only block on
/// its own lock anyway).
pub fn cargo_build_bin(package: &str, bin: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<(String, String), PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(&(package.to_string(), bin.to_string())) {
        return p.clone();
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args([
        "build",
        "-p",
        package,
        "--bin",
        bin,
        "--message-format=json",
    ]);
    let out = output_with_timeout(cmd, CARGO_BUILD_TIMEOUT_SECS);
    if !out.status.success() {
        panic!(
            "cargo build -p {package} --bin {bin} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| {
            panic!(
                "cargo build -p {package} --bin {bin} reported no executable; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    built.insert((package.to_string(), bin.to_string()), exe.clone());
    exe
}
