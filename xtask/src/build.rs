//! Building netwatch and finding its binary.
//!
//! netwatch's own build script compiles the eBPF programs (aya-build, nightly, bpf-linker from
//! `~/.cargo/bin`, which [`crate::sys::command`] puts on PATH), so one `cargo build -p netwatch`
//! builds both sides.
//!
//! The binary's path comes from cargo itself (`--message-format=json`, the artifact's
//! `executable`), not from a guessed `target/debug/netwatch`: that honours `CARGO_TARGET_DIR`,
//! `build.target-dir`, `--release` and a configured `build.target` alike.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, anyhow};

use crate::sys::{self, cargo, show, workspace_root};

/// The package, and its binary target, that is the tool.
const PACKAGE: &str = "netwatch";

/// `cargo build -p netwatch [--release]`; returns the path of the netwatch executable.
pub fn build_netwatch(release: bool) -> Result<PathBuf> {
    build_bin(PACKAGE, PACKAGE, release)
}

/// `cargo build -p <package> --bin <bin> [--release]`; returns the path of the executable.
///
/// Compiler diagnostics are still printed for humans on stderr
/// (`json-render-diagnostics`); only the JSON messages on stdout are read here.
pub fn build_bin(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "-p", package, "--bin", bin])
        .arg("--message-format=json-render-diagnostics");
    if release {
        cmd.arg("--release");
    }
    eprintln!("build: {}", show(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| sys::not_started(&cmd, err))?;
    let stdout = child.stdout.take().expect("stdout is piped");

    let manifest = workspace_root()
        .join(package_dir(package))
        .join("Cargo.toml");
    let mut executable = None;
    // Read while cargo runs, so a full pipe never stalls the build.
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON messages")?;
        if let Some(path) = bin_executable(&line, &manifest, bin) {
            executable = Some(path);
        }
    }
    let status = child.wait().context("waiting for cargo build")?;
    sys::check(&cmd, status)
        .with_context(|| format!("building {bin} failed; the compiler's messages are above"))?;

    executable.ok_or_else(|| {
        anyhow!(
            "`{}` succeeded but reported no `{bin}` executable; does {} still have a \
             `[[bin]]` named `{bin}`?",
            show(&cmd),
            manifest.display()
        )
    })
}

/// The workspace folder of a package: `netwatch-tests` lives in `tests/`.
fn package_dir(package: &str) -> &str {
    match package {
        "netwatch-tests" => "tests",
        other => other,
    }
}

/// The `executable` of a `compiler-artifact` message for the binary `name` of the package at
/// `manifest`, if `line` is one. Matching on the manifest path as well as the name matters:
/// netwatch-ebpf's binary is also called `netwatch`.
fn bin_executable(line: &str, manifest: &Path, name: &str) -> Option<PathBuf> {
    // Cargo only writes JSON objects here; a build script's stray output would not parse.
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    if Path::new(msg.get("manifest_path")?.as_str()?) != manifest {
        return None;
    }
    let target = msg.get("target")?;
    let is_bin = target
        .get("kind")?
        .as_array()?
        .iter()
        .any(|kind| kind.as_str() == Some("bin"));
    if !is_bin || target.get("name")?.as_str()? != name {
        return None;
    }
    msg.get("executable")?.as_str().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "/w/netwatch/Cargo.toml";

    fn artifact(manifest: &str, kind: &str, name: &str, exe: &str) -> String {
        format!(
            r#"{{"reason":"compiler-artifact","manifest_path":"{manifest}","target":{{"kind":["{kind}"],"name":"{name}"}},"executable":{exe}}}"#
        )
    }

    #[test]
    fn finds_the_netwatch_binary_only() {
        let m = Path::new(MANIFEST);
        let exe = r#""/w/target/debug/netwatch""#;
        assert_eq!(
            bin_executable(&artifact(MANIFEST, "bin", "netwatch", exe), m, PACKAGE),
            Some(PathBuf::from("/w/target/debug/netwatch"))
        );
        // The eBPF crate's binary has the same name but another manifest.
        let ebpf = artifact("/w/netwatch-ebpf/Cargo.toml", "bin", "netwatch", exe);
        assert_eq!(bin_executable(&ebpf, m, PACKAGE), None);
        // Libraries and build scripts have no executable.
        assert_eq!(
            bin_executable(&artifact(MANIFEST, "lib", "netwatch", "null"), m, PACKAGE),
            None
        );
        assert_eq!(
            bin_executable(r#"{"reason":"build-finished","success":true}"#, m, PACKAGE),
            None
        );
        assert_eq!(bin_executable("not json", m, PACKAGE), None);
    }

    #[test]
    fn finds_a_binary_of_another_package_by_name() {
        let m = Path::new("/w/tests/Cargo.toml");
        let line = artifact(
            "/w/tests/Cargo.toml",
            "bin",
            "tcpdrive",
            r#""/w/t/tcpdrive""#,
        );
        assert_eq!(
            bin_executable(&line, m, "tcpdrive"),
            Some(PathBuf::from("/w/t/tcpdrive"))
        );
        assert_eq!(bin_executable(&line, m, "vmcheck"), None);
        assert_eq!(package_dir("netwatch-tests"), "tests");
    }
}
