//! `cargo xtask <command>`: the one entry point for setting up a machine, building, running and
//! testing netwatch, so that a fresh Debian 12 machine and CI do exactly what a developer does.
//!
//! Why a Rust xtask and not a Makefile or shell script: the steps need real logic (idempotent
//! install checks, parsing cargo's JSON to find the binary, timing each test step), and
//! everybody who builds netwatch already has cargo.
//!
//! Progress goes to stderr, so stdout stays clean for what a command produces: the binary's
//! path for `build`, and netwatch's own output for `run` (`cargo xtask run -- trace --json | jq`).
//!
//! Modules:
//! - [`setup`]: installs the nightly `rust-src`, the Debian packages and bpf-linker;
//! - [`build`]: builds netwatch and finds its binary through cargo's JSON messages;
//! - [`run`]: builds, then replaces itself with netwatch (exit code and Ctrl-C just work);
//! - [`test`]: fmt, clippy, build, tests, each timed, failing fast;
//! - [`bench`]: netwatch's cost side by side with tcpstates, tcplife and bpftrace;
//! - [`vm`]: the checks that matter most on every kernel we can boot (qemu) and the host's;
//! - [`sys`]: process plumbing (PATH for children, showing and checking commands, root);

mod bench;
mod build;
mod run;
mod setup;
mod sys;
mod test;
mod vm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, run and test netwatch",
    after_help = "Examples:\n  \
        cargo xtask setup                    # install what is missing (needs root for apt)\n  \
        cargo xtask build --release          # prints the binary's path on stdout\n  \
        cargo xtask run                      # netwatch top, the live view (needs root)\n  \
        cargo xtask run -- trace --json -T   # arguments after `--` go to netwatch\n  \
        cargo xtask lint                     # rustfmt + clippy only\n  \
        cargo xtask test                     # what CI runs (.ci/run)\n  \
        cargo xtask test -- close_wait       # only tests whose name contains close_wait\n  \
        cargo xtask bench --quick            # cost vs tcpstates/tcplife/bpftrace (root)\n  \
        cargo xtask bench --only held        # only the 200,000 live sockets row (root)\n  \
        cargo xtask bench --only tax         # only the syscall tax rows, ~3 min (root)\n  \
        cargo xtask vm-test                  # the checks on 6.1 and 6.12 in qemu, both paths (root)\n\n\
        Every command except `setup` runs `setup` first; it takes a second when nothing is\n\
        missing."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install what building and testing netwatch needs; idempotent, quick when all is present
    #[command(after_help = "Checks, and installs only what is missing:\n  \
        1. the nightly toolchain's rust-src component (the eBPF programs use -Z build-std=core)\n  \
        2. Debian packages: LLVM 22, bpftool, iproute2, nftables, libbpf-tools, bpftrace, ...\n     \
        (apt-get; needs root)\n  \
        3. bpf-linker 0.13.0 built against LLVM 22 (cargo install; ~1-2 min the first time)\n\n\
        Example:\n  \
        cargo xtask setup")]
    Setup,
    /// Set up, then build netwatch and its eBPF programs; prints the binary's path on stdout
    #[command(after_help = "Examples:\n  \
        cargo xtask build\n  \
        BIN=$(cargo xtask build --release) && $BIN trace")]
    Build {
        /// Build with the release profile
        #[arg(long)]
        release: bool,
    },
    /// Set up, build, then run netwatch with ARGS (default: `top`); netwatch needs root
    #[command(
        after_help = "xtask replaces itself with netwatch: Ctrl-C reaches netwatch, and\n\
        netwatch's exit code is the command's exit code.\n\n\
        Examples:\n  \
        cargo xtask run                               # netwatch top (the live view)\n  \
        cargo xtask run --release -- trace -T -w\n  \
        cargo xtask run -- trace --json --duration 10s > events.jsonl\n  \
        cargo xtask run -- --help                     # netwatch's own help"
    )]
    Run {
        /// Build and run the release binary
        #[arg(long)]
        release: bool,
        /// Arguments for netwatch, after `--`
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Set up, then rustfmt check, clippy, build, and the whole test suite (what CI runs)
    #[command(after_help = "Steps, in order, stopping at the first that fails:\n  \
        setup        cargo xtask setup (installs what is missing)\n  \
        fmt          cargo fmt --all --check\n  \
        clippy       cargo clippy --workspace --exclude netwatch-ebpf --all-targets -- -D warnings\n  \
        clippy-ebpf  clippy on the kernel side, for bpfel-unknown-none with nightly\n  \
        build        cargo build -p netwatch (its path goes to the tests as NETWATCH_BIN)\n  \
        test         cargo test --workspace --exclude netwatch-ebpf -- --test-threads=1 [ARGS]\n  \
        vm-test      cargo xtask vm-test: the host's kernel and Debian's kernels in qemu\n               \
        (root; not run when ARGS are given)\n\n\
        Tests run one at a time: the root integration tests count BPF programs and kernel\n\
        counters, which parallel tests would disturb.\n\n\
        Examples:\n  \
        cargo xtask test\n  \
        cargo xtask test -- time_wait --nocapture   # filter and options for the test binaries")]
    Test {
        /// Extra arguments for the test binaries (a name filter, --nocapture, ...), after `--`
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Set up, then rustfmt check and clippy only (the first steps of `test`)
    #[command(after_help = "Example:\n  \
        cargo xtask lint\n\n\
        To fix formatting: cargo fmt --all")]
    Lint,
    /// Measure netwatch's cost next to tcpstates, tcplife and bpftrace; writes BENCHMARKS.md
    #[command(
        after_help = "Needs root. Builds netwatch and tcpdrive (release), then, in network\n\
        namespaces of its own, runs a connection-churn workload (loopback client/server closing\n\
        first, veth client closing first) with no tracer and with each tracer, interleaved\n\
        (`report` twice: with raw tracepoints, and with NETWATCH_TRACEPOINTS=classic);\n\
        measures connections/s, in-kernel ns per program run (kernel.bpf_stats_enabled),\n\
        user CPU per event, peak RSS and lost events, then the highest event rate netwatch\n\
        keeps without loss. Prints a markdown report and writes it to BENCHMARKS.md.\n\
        Takes about 7 minutes (--quick: about 2.5). Ctrl-C stops cleanly.\n\n\
        Examples:\n  \
        cargo xtask bench --quick              # one short run per cell, for development\n  \
        cargo xtask bench                      # 3 runs per cell, ~2 s each\n  \
        cargo xtask bench --runs 5 --seconds 4"
    )]
    Bench {
        /// One short run per cell, fewer load steps and syscall-tax rounds (about 2.5 min)
        #[arg(long)]
        quick: bool,
        /// Runs per workload and tracer (median reported); default 3, --quick 1
        #[arg(long, value_name = "N")]
        runs: Option<u32>,
        /// Seconds of churn per run without a tracer; default 2, --quick 1
        #[arg(long, value_name = "S")]
        seconds: Option<f64>,
        /// Run only this row and print its section instead of writing BENCHMARKS.md: `held`
        /// (200,000 live sockets held with `netwatch serve`), `tax` (the syscall tax of every
        /// mode, `dd` untraced and traced)
        #[arg(long, value_name = "ROW")]
        only: Option<String>,
    },
    /// Run the checks that matter most on the host's kernel and on Debian's kernels, in qemu
    #[command(
        after_help = "Needs root. Builds the release binaries, then runs tests/src/bin/vmcheck.rs\n\
        (trace, life, report, leaks and a kernel-side filter against one known workload, counts\n\
        compared with /proc/net/snmp, owners with the workload's pids), twice: with the raw\n\
        tracepoint programs (NETWATCH_TRACEPOINTS=raw), then with the classic ones:\n  \
        1. on this machine's kernel, in a network namespace of its own;\n  \
        2. in a qemu VM (TCG; NETWATCH_VM_ACCEL=kvm where KVM works) for every kernel of the\n     \
        matrix: each Debian 12 6.1 flavour apt offers (cloud, standard, rt) and bookworm's\n     \
        6.12. Kernel packages are fetched with `apt-get download` and cached in\n     \
        /var/cache/netwatch-vm (NETWATCH_VM_CACHE overrides).\n\
        Every output line names its kernel. `cargo xtask test` runs this as its last step.\n\n\
        Examples:\n  \
        cargo xtask vm-test\n  \
        cargo xtask vm-test --only 6.1.0        # only kernels whose package contains 6.1.0\n  \
        cargo xtask vm-test --only host         # only the host's kernel"
    )]
    VmTest {
        /// Only kernels whose package name contains this (`host` for the host's kernel)
        #[arg(long, value_name = "PATTERN")]
        only: Option<String>,
    },
    /// Build netwatch and write its man page (from the clap definitions) to target/man/netwatch.1
    #[command(after_help = "Example:\n  \
        cargo xtask man && man -l target/man/netwatch.1")]
    Man,
}

/// Prints errors as `error: ...` plus their causes, without the backtrace that anyhow's own
/// `main` report adds when RUST_BACKTRACE is set (it says nothing about what to do).
fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Setup => setup::setup(),
        Command::Build { release } => {
            setup::setup()?;
            let bin = build::build_netwatch(release)?;
            println!("{}", bin.display());
            Ok(())
        }
        Command::Run { release, args } => run::run(release, &args),
        Command::Test { args } => test::test(&args),
        Command::Lint => test::lint(),
        Command::Bench {
            quick,
            runs,
            seconds,
            only,
        } => bench::bench(bench::Options {
            quick,
            runs,
            seconds,
            only,
        }),
        Command::VmTest { only } => {
            setup::setup()?;
            vm::vm_test(&vm::Options { only })
        }
        Command::Man => man(),
    }
}

/// `netwatch manpage` into target/man/netwatch.1: the page comes from the same clap
/// definitions as `--help`, so it cannot drift from the binary.
fn man() -> Result<()> {
    setup::setup()?;
    let bin = build::build_netwatch(false)?;
    let out = std::process::Command::new(&bin)
        .arg("manpage")
        .output()
        .map_err(|e| anyhow::anyhow!("running {} manpage: {e}", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} manpage failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = sys::workspace_root().join("target/man");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("netwatch.1");
    std::fs::write(&path, &out.stdout)?;
    println!("{}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn the_run_example_names_what_run_runs_without_arguments() {
        let help = Cli::command().get_after_help().unwrap().to_string();
        let line = help
            .lines()
            .find(|l| {
                l.trim_start()
                    .strip_prefix("cargo xtask run")
                    .is_some_and(|rest| rest.trim_start().starts_with('#'))
            })
            .expect("an example of `cargo xtask run` without arguments");
        let default = format!("netwatch {}", crate::run::DEFAULT_ARGS.join(" "));
        assert!(line.contains(&default), "{line:?} should name {default:?}");
    }
}
