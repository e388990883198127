//! `cargo xtask run`: set up, build, then become netwatch.
//!
//! xtask `exec`s netwatch instead of spawning it (and `cargo run` execs xtask), so netwatch
//! ends up with the very process id that the shell started: Ctrl-C and SIGTERM reach it
//! directly, its exit code is the command's, and no xtask process is left in between to
//! forward signals or hold the terminal.

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result};

use crate::{
    build, setup,
    sys::{self, command, show},
};

/// What netwatch runs when no arguments follow `--`.
pub(crate) const DEFAULT_ARGS: &[&str] = &["top"];

pub fn run(release: bool, args: &[String]) -> Result<()> {
    setup::setup()?;
    let bin = build::build_netwatch(release)?;

    let mut cmd = command(&bin);
    if args.is_empty() {
        cmd.args(DEFAULT_ARGS);
    } else {
        cmd.args(args);
    }
    // Arguments that name files should mean what they mean in the caller's directory.
    if let Ok(dir) = std::env::current_dir() {
        cmd.current_dir(dir);
    }
    if !sys::is_root() {
        eprintln!(
            "run: not running as root (euid {}): netwatch needs root (CAP_BPF, CAP_PERFMON, \
             tracefs) to load its programs and will most likely refuse to start",
            sys::euid().map_or_else(|| "unknown".to_owned(), |id| id.to_string())
        );
    }
    eprintln!("run: {}", show(&cmd));
    // `exec` only returns on failure.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not execute {}", bin.display()))
}
