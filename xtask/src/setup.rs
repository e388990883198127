//! `cargo xtask setup`: makes a fresh Debian 12 machine able to build, run and test netwatch.
//!
//! Every other command runs this first, so it must be idempotent and cheap when nothing is
//! missing: each step is a fast local check (`rustup component list`, one `dpkg-query`,
//! `bpf-linker --version`) and only what is missing gets installed. One progress line per item
//! says `present` or `installing`.

use std::{path::Path, process::Stdio, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::sys::{self, cargo, child_path_with, command, fmt_duration, show};

/// Debian packages netwatch needs, and what uses each (installed with `apt-get`, as root).
const DEB_PACKAGES: &[(&str, &str)] = &[
    // bpf-linker is built against libLLVM 22: nightly rustc emits LLVM 22 bitcode, and an older
    // LLVM (Debian's default is 14) cannot link it.
    (
        "llvm-22-dev",
        "libLLVM 22 and llvm-config, which bpf-linker is built against",
    ),
    // Inspect loaded programs/maps; `prog show` gives run_time_ns/run_cnt with bpf_stats on.
    (
        "bpftool",
        "inspecting loaded BPF programs and their in-kernel cost",
    ),
    // ip netns/veth, tc, ss (TIME_WAIT cross-check via sock_diag), nstat (kernel counters).
    (
        "iproute2",
        "network namespaces, veth, tc, ss and nstat in the integration tests",
    ),
    // netem is not built into the kernel here: tests drop packets with nft rules instead.
    ("nftables", "nft, to drop packets in the integration tests"),
    // tcpstates, tcplife, ...: the C/CO-RE reference tracers for side-by-side checks.
    (
        "libbpf-tools",
        "reference tracers (tcpstates, tcplife) for side-by-side checks",
    ),
    // Ad-hoc tracepoint probes while debugging (its kfunc probes do not work on this kernel).
    ("bpftrace", "ad-hoc tracepoint probes while debugging"),
    // ps and sysctl (kernel.bpf_stats_enabled) in tests and scripts.
    ("procps", "ps and sysctl in the tests"),
    // setpriv: run test peers as an unprivileged user; also nsenter and unshare.
    ("util-linux", "setpriv, nsenter and unshare in the tests"),
    (
        "time",
        "/usr/bin/time: CPU and peak memory of `netwatch analyze` in `cargo xtask bench`",
    ),
    // /usr/bin/prometheus: tests/tests/serve.rs scrapes `netwatch serve` with a real server
    // (started by the test on loopback; the package's own service is not used).
    (
        "prometheus",
        "a real Prometheus server scraping `netwatch serve` in the tests",
    ),
    // The TLS test of `netwatch serve` scrapes with curl, checking the certificate.
    (
        "curl",
        "an HTTPS client that checks certificates, in the serve tests",
    ),
    // systemd-socket-activate: the serve test of --web.systemd-socket (socket activation).
    (
        "systemd",
        "systemd-socket-activate, passing serve its socket in the tests",
    ),
    // The code-path tests of `netwatch leaks` run real runtimes: a Node server and client
    // (--perf-basic-prof), a Java thread pool (jcmd Compiler.perfmap), a Python 3.11 server.
    (
        "nodejs",
        "Node servers and clients whose handlers `leaks` names, in the tests",
    ),
    (
        "openjdk-17-jdk-headless",
        "java, javac and jcmd: a Java pool server whose handler `leaks` names, in the tests",
    ),
    (
        "python3.11",
        "a Python 3.11 server whose frames `leaks` cannot name, in the tests",
    ),
    // The live view's tests drive `netwatch top` in a detached tmux (send-keys, capture-pane).
    ("tmux", "driving `netwatch top` in a terminal in the tests"),
    // `cargo xtask vm-test` boots Debian's kernels: qemu, an initramfs packed with cpio,
    // busybox as its userland, dpkg-deb to unpack the kernel packages.
    (
        "qemu-system-x86",
        "booting other kernels in `cargo xtask vm-test`",
    ),
    (
        "cpio",
        "packing the VM's initramfs in `cargo xtask vm-test`",
    ),
    (
        "busybox-static",
        "the VM's userland in `cargo xtask vm-test`, and the containers' in the tests",
    ),
    // tests/tests/containers.rs starts real containers from a busybox root directory (no
    // image registry) with podman, on runc: crun, podman's default, fails on setrlimit here.
    // Its `podman system service` serves the Docker API netwatch asks for names and labels.
    (
        "podman",
        "real containers with labels in the containers test",
    ),
    (
        "runc",
        "the OCI runtime podman runs the test containers with",
    ),
];

/// bpf-linker version that links the eBPF programs (0.13 supports LLVM 22).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM whose `llvm-config` must be first on PATH while bpf-linker is being built; otherwise
/// its build finds LLVM 14 and fails with `unable to find library -lLLVM`.
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// Runs every step, in dependency order (bpf-linker needs llvm-22-dev).
pub fn setup() -> Result<()> {
    let start = Instant::now();
    let mut installed = 0;
    installed += rust_src()?;
    installed += deb_packages()?;
    installed += bpf_linker()?;
    let took = fmt_duration(start.elapsed());
    match installed {
        0 => eprintln!("setup: done in {took} (everything present)"),
        n => eprintln!("setup: done in {took} ({n} installed)"),
    }
    Ok(())
}

fn progress(item: &str, status: &str) {
    eprintln!("setup: {item} ... {status}");
}

/// The nightly toolchain's `rust-src`: aya-build compiles the kernel side with
/// `rustup run nightly cargo build -Z build-std=core --target bpfel-unknown-none`.
/// Returns how many things were installed.
fn rust_src() -> Result<usize> {
    const ITEM: &str = "rust-src (nightly toolchain)";
    let mut list = command("rustup");
    list.args(["toolchain", "list"]);
    let out = sys::output(&mut list).context(
        "could not run rustup, which manages the stable and nightly toolchains here; if it is \
             missing, install it from https://rustup.rs",
    )?;
    sys::check(&list, out.status)?;
    // aya-build uses the plain `nightly` channel (`nightly-<host>`), not a dated one.
    let has_nightly = String::from_utf8_lossy(&out.stdout).lines().any(|line| {
        line.strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if !has_nightly {
        bail!(
            "the nightly toolchain is not installed; netwatch's eBPF programs are built with \
             it (-Z build-std=core). Install it with \
             `rustup toolchain install nightly --profile minimal --component rust-src`, \
             then run `cargo xtask setup` again"
        );
    }

    let mut list = command("rustup");
    list.args(["component", "list", "--toolchain", "nightly", "--installed"]);
    let out = sys::output(&mut list)?;
    sys::check(&list, out.status)?;
    // Installed components are listed as `rust-src` (no host suffix: it is target-independent).
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.trim() == "rust-src")
    {
        progress(ITEM, "present");
        return Ok(0);
    }
    progress(ITEM, "installing");
    sys::run(command("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("could not add rust-src to the nightly toolchain; check network access")?;
    Ok(1)
}

/// The [`DEB_PACKAGES`] that are not installed, found with one `dpkg-query` call.
fn missing_deb_packages() -> Result<Vec<&'static str>> {
    let names = DEB_PACKAGES.iter().map(|(name, _)| *name);
    let mut query = command("dpkg-query");
    query
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\\n"])
        .args(names.clone());
    // dpkg-query exits 1 and complains on stderr about unknown packages: that is an answer.
    let out = sys::output(query.stderr(Stdio::null())).with_context(|| {
        format!(
            "`cargo xtask setup` supports Debian-like systems only; elsewhere install the \
             equivalents of {} yourself",
            names.clone().collect::<Vec<_>>().join(", ")
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // "ii " = wanted install, currently installed; anything else (e.g. "rc ", "un ") is not.
    let is_installed = |name: &str| {
        stdout.lines().any(|line| {
            let mut words = line.split_whitespace();
            // Multi-arch packages print as `name` here; strip `:arch` anyway to be safe.
            let pkg = words.next().map(|p| p.split(':').next().unwrap_or(p));
            pkg == Some(name) && words.next() == Some("ii")
        })
    };
    Ok(names.filter(|name| !is_installed(name)).collect())
}

/// Installs the missing [`DEB_PACKAGES`] with one `apt-get update` and one `apt-get install`.
fn deb_packages() -> Result<usize> {
    let missing = missing_deb_packages()?;
    for (name, _) in DEB_PACKAGES {
        progress(
            name,
            if missing.contains(name) {
                "installing"
            } else {
                "present"
            },
        );
    }
    if missing.is_empty() {
        return Ok(0);
    }
    if !sys::is_root() {
        let why: Vec<String> = DEB_PACKAGES
            .iter()
            .filter(|(name, _)| missing.contains(name))
            .map(|(name, what)| format!("  {name}: {what}"))
            .collect();
        bail!(
            "missing Debian packages, and installing them needs root:\n{}\n\
             Run `cargo xtask setup` as root, or have root run \
             `apt-get install --no-install-recommends {}`",
            why.join("\n"),
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut cmd = command("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    let mut update = apt(&["update", "-q"]);
    eprintln!("setup: {}", show(&update));
    sys::run(&mut update).context("apt-get update failed; check network access and apt sources")?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    eprintln!("setup: {}", show(&install));
    sys::run(&mut install).with_context(|| {
        format!(
            "could not install {}; see apt's messages above",
            missing.join(", ")
        )
    })?;
    let still = missing_deb_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get succeeded but {} still not installed",
            still.join(", ")
        );
    }
    Ok(missing.len())
}

/// What `bpf-linker --version` says (`bpf-linker 0.13.0`), or `None` if it does not run.
fn bpf_linker_version() -> Option<String> {
    let out = command("bpf-linker").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// bpf-linker, which links the eBPF programs, built against LLVM 22 (from `llvm-22-dev`).
fn bpf_linker() -> Result<usize> {
    let item = format!("bpf-linker {BPF_LINKER_VERSION} (LLVM 22)");
    let found = bpf_linker_version();
    let is_wanted = |version: &str| version.split_whitespace().any(|w| w == BPF_LINKER_VERSION);
    if found.as_deref().is_some_and(is_wanted) {
        progress(&item, "present");
        return Ok(0);
    }
    let why = match &found {
        Some(version) => format!("found `{version}`"),
        None => "not found".to_owned(),
    };
    progress(
        &item,
        &format!("installing ({why}; cargo install takes ~1-2 min)"),
    );
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        bail!(
            "{LLVM_BIN}/llvm-config is missing: install llvm-22-dev (`cargo xtask setup` as root)"
        );
    }
    let mut install = cargo();
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", child_path_with(Path::new(LLVM_BIN)));
    let start = Instant::now();
    sys::run(&mut install).context("could not build bpf-linker; see cargo's messages above")?;
    match bpf_linker_version() {
        Some(version) if is_wanted(&version) => {
            eprintln!(
                "setup: {version} installed in {}",
                fmt_duration(start.elapsed())
            );
            Ok(1)
        }
        other => bail!(
            "bpf-linker was installed but `bpf-linker --version` gives {other:?}; is another \
             bpf-linker earlier on PATH than {}?",
            sys::cargo_bin_dir().unwrap_or_default().display()
        ),
    }
}
