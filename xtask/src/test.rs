//! `cargo xtask test` (what CI runs) and `cargo xtask lint` (its first steps).
//!
//! Steps run in order from cheapest to dearest and stop at the first failure, with one line
//! naming the failed step and what to do, then a table of every step's wall time, so a slow
//! step is noticed when it creeps up.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::{
    build, setup,
    sys::{self, cargo, command, fmt_duration, show},
    vm,
};

/// The packages that `--workspace` should cover on the host. `--workspace` ignores
/// `default-members`, so the eBPF crate must be excluded by name: built for the host, its
/// `#[panic_handler]` clashes with std (pulled in through netwatch-common's `user` feature).
/// It gets its own clippy step, for its real target.
const EXCLUDE_EBPF: [&str; 2] = ["--exclude", "netwatch-ebpf"];

const LINT_STEPS: &[&str] = &["setup", "fmt", "clippy", "clippy-ebpf"];
const TEST_STEPS: &[&str] = &[
    "setup",
    "fmt",
    "clippy",
    "clippy-ebpf",
    "build",
    "test",
    "vm-test",
];

pub fn lint() -> Result<()> {
    let mut steps = Steps::new("lint", LINT_STEPS);
    lint_steps(&mut steps)?;
    steps.summary();
    Ok(())
}

pub fn test(extra: &[String]) -> Result<()> {
    let mut steps = Steps::new("test", TEST_STEPS);
    lint_steps(&mut steps)?;

    let bin = steps.step(
        "build",
        "cargo build -p netwatch",
        "fix the build errors above",
        || build::build_netwatch(false),
    )?;

    // Integration tests run the real binary as a child: hand them the one just built.
    let mut tests = cargo();
    tests.args(["test", "--workspace"]).args(EXCLUDE_EBPF);
    // One test at a time: the root integration tests count BPF programs and kernel counters.
    tests.args(["--", "--test-threads=1"]).args(extra);
    tests.env("NETWATCH_BIN", &bin);
    if !sys::is_root() {
        eprintln!("test: not root: the integration tests that load BPF programs need root");
    }
    steps.cmd(
        "test",
        &mut tests,
        "a test failed (see above); rerun one with `cargo xtask test -- NAME --nocapture`",
    )?;
    // The kernel matrix needs root (BPF, qemu's initramfs of root-owned files); as a normal
    // user the root tests above were skipped too, loudly.
    if !extra.is_empty() {
        eprintln!("test: arguments for the test binaries given: vm-test not run");
    } else if sys::is_root() {
        steps.step(
            "vm-test",
            "cargo xtask vm-test (host kernel + Debian kernels in qemu)",
            "a kernel of the matrix failed (its FAIL lines name it); rerun with \
             `cargo xtask vm-test --only PACKAGE`",
            || vm::vm_test(&vm::Options { only: None }),
        )?;
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        anyhow::bail!("vm-test needs root, and CI=true: CI must run as root");
    } else {
        eprintln!("test: not root: SKIPPED vm-test (the kernel matrix needs root)");
    }
    steps.summary();
    Ok(())
}

/// setup, fmt, clippy (host), clippy (kernel side): shared by `lint` and `test`.
fn lint_steps(steps: &mut Steps) -> Result<()> {
    steps.step(
        "setup",
        "cargo xtask setup",
        "see the setup error below",
        setup::setup,
    )?;
    steps.cmd(
        "fmt",
        cargo().args(["fmt", "--all", "--check"]),
        "run `cargo fmt --all`, then try again",
    )?;
    steps.cmd(
        "clippy",
        cargo()
            .args(["clippy", "--workspace"])
            .args(EXCLUDE_EBPF)
            .args(["--all-targets", "--", "-D", "warnings"]),
        "fix the clippy findings above",
    )?;
    // The kernel side as it is really built: nightly, bpfel-unknown-none, build-std.
    steps.cmd(
        "clippy-ebpf",
        command("rustup")
            .args(["run", "nightly", "cargo", "clippy", "-p", "netwatch-ebpf"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"]),
        "fix the clippy findings in netwatch-ebpf above",
    )?;
    Ok(())
}

/// Runs steps in order, times them, and prints the summary table.
struct Steps {
    command: &'static str,
    names: &'static [&'static str],
    /// Finished steps: name, wall time, passed.
    done: Vec<(&'static str, Duration, bool)>,
    start: Instant,
}

impl Steps {
    fn new(command: &'static str, names: &'static [&'static str]) -> Self {
        Self {
            command,
            names,
            done: Vec::new(),
            start: Instant::now(),
        }
    }

    /// Runs one step. On failure, prints which step failed and what to do, then the summary,
    /// and returns the error (with the hint) so the command stops here.
    fn step<T>(
        &mut self,
        name: &'static str,
        what: &str,
        hint: &str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        debug_assert!(
            self.names.contains(&name),
            "step {name} is not in the table"
        );
        let number = self.done.len() + 1;
        let total = self.names.len();
        eprintln!("\n{}: [{number}/{total}] {name}: {what}", self.command);
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        self.done.push((name, took, result.is_ok()));
        result.map_err(|err| {
            eprintln!(
                "\n{}: FAILED at step `{name}` ({what}) after {}: {hint}",
                self.command,
                fmt_duration(took)
            );
            self.summary();
            err.context(format!("{} step `{name}` failed: {hint}", self.command))
        })
    }

    /// A step that is one command run with inherited output.
    fn cmd(
        &mut self,
        name: &'static str,
        cmd: &mut std::process::Command,
        hint: &str,
    ) -> Result<()> {
        let what = show(cmd);
        self.step(name, &what, hint, || sys::run(cmd))
    }

    fn summary(&self) {
        eprintln!("\n{}: summary", self.command);
        eprintln!("  {:<12} {:<8} {:>8}", "step", "result", "time");
        for name in self.names {
            match self.done.iter().find(|(done, _, _)| done == name) {
                Some((_, took, ok)) => {
                    let result = if *ok { "ok" } else { "FAILED" };
                    eprintln!("  {name:<12} {result:<8} {:>8}", fmt_duration(*took));
                }
                None => eprintln!("  {name:<12} {:<8} {:>8}", "not run", "-"),
            }
        }
        eprintln!(
            "  {:<12} {:<8} {:>8}",
            "total",
            "",
            fmt_duration(self.start.elapsed())
        );
    }
}
