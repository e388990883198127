//! `cargo xtask vm-test`: netwatch's most important checks on every kernel we can boot.
//!
//! The same `vmcheck` binary (tests/src/bin/vmcheck.rs) runs on the host's own kernel, in a
//! network namespace of its own, and as the init workload of a qemu VM for each kernel of the
//! matrix ([`kernels::MATRIX`]: Debian 12's 6.1 flavours and bookworm's 6.12). vmcheck runs
//! its checks twice, with the raw tracepoint programs and with the classic ones, and doctor
//! must say each TCP tracepoint gets the asked kind. Every line it prints names the kernel. A
//! verifier rejection, a count that differs from the kernel's, a wrong owner, a tracepoint on
//! the wrong path or a VM that never reports fails the command.

mod initramfs;
mod kernels;
mod qemu;

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    build,
    sys::{self, command, fmt_duration, workspace_root},
};

/// One boot, checks included (both tracepoint paths), under TCG: 6.1 takes about two minutes;
/// a hung VM is cut off here.
const BOOT_BOUND: Duration = Duration::from_secs(420);

/// What the user asked for.
pub struct Options {
    /// Only kernels whose package name contains this (and the host only if it matches
    /// `host`).
    pub only: Option<String>,
}

/// One row of the summary.
struct Outcome {
    kernel: String,
    passed: bool,
    detail: String,
    took: Duration,
}

pub fn vm_test(opts: &Options) -> Result<()> {
    if !sys::is_root() {
        bail!(
            "vm-test needs root: it loads BPF programs on the host and creates a network namespace"
        );
    }
    let start = Instant::now();
    let bins = initramfs::Binaries {
        netwatch: build::build_netwatch(true)?,
        tcpdrive: build::build_bin("netwatch-tests", "tcpdrive", true)?,
        vmcheck: build::build_bin("netwatch-tests", "vmcheck", true)?,
    };
    let wanted = |name: &str| opts.only.as_deref().is_none_or(|only| name.contains(only));
    let mut outcomes = Vec::new();
    if wanted("host") {
        outcomes.push(on_host(&bins)?);
    }
    let kernels = kernels::fetch_matrix(wanted)?;
    let work = workspace_root().join("target/vm");
    for kernel in &kernels {
        eprintln!("\nvm-test: booting {} (qemu, TCG)", kernel.package);
        let dir = work.join(&kernel.package);
        let initrd = work.join(format!("{}.initrd.gz", kernel.package));
        fs::create_dir_all(&work)?;
        initramfs::build(&dir, &bins, &kernel.modules, &initrd)
            .with_context(|| format!("building the initramfs for {}", kernel.package))?;
        let boot = qemu::boot(&kernel.vmlinuz, &initrd, BOOT_BOUND)?;
        let passed = boot.exit == Some(0);
        let detail = match boot.exit {
            Some(_) => result_line(&boot.lines),
            None => {
                eprintln!(
                    "vm-test: {} never reported; the console's last lines:\n{}",
                    kernel.package,
                    boot.tail.join("\n")
                );
                "no result: the VM died or hung (console tail above)".to_string()
            }
        };
        outcomes.push(Outcome {
            kernel: kernel.package.clone(),
            passed,
            detail,
            took: boot.took,
        });
    }
    eprintln!("\nvm-test: summary");
    for o in &outcomes {
        eprintln!(
            "  {:<48} {:<4} {:>7}  {}",
            o.kernel,
            if o.passed { "ok" } else { "FAIL" },
            fmt_duration(o.took),
            o.detail
        );
    }
    eprintln!("  total {}", fmt_duration(start.elapsed()));
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "vm-test failed on {}: see the FAIL lines above (each names its kernel)",
            failed.join(", ")
        );
    }
    if outcomes.is_empty() {
        bail!("vm-test ran nothing: no kernel matches --only");
    }
    Ok(())
}

/// vmcheck's `RESULT passed=N failed=M` line, without its prefix.
fn result_line(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.split_once("] RESULT ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| "no RESULT line".to_string())
}

/// vmcheck on this machine's kernel, in a fresh network namespace (whose `/proc/net/snmp`
/// counts only its own traffic).
fn on_host(bins: &initramfs::Binaries) -> Result<Outcome> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    eprintln!("\nvm-test: the host's kernel {release} (network namespace)");
    let ns = format!("nw-vmcheck-{}", std::process::id());
    sys::run(command("ip").args(["netns", "add", &ns]))?;
    let start = Instant::now();
    let result = (|| -> Result<std::process::Output> {
        sys::run(command("ip").args(["-n", &ns, "link", "set", "lo", "up"]))?;
        let mut cmd = command("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(&bins.vmcheck)
            .env("NETWATCH_BIN", &bins.netwatch)
            .env("TCPDRIVE_BIN", &bins.tcpdrive);
        sys::output(&mut cmd)
    })();
    let _ = sys::run(command("ip").args(["netns", "delete", &ns]));
    let out = result?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    for line in &lines {
        eprintln!("  {line}");
    }
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Outcome {
        kernel: format!("host {release}"),
        passed: out.status.success(),
        detail: result_line(&lines),
        took: start.elapsed(),
    })
}
