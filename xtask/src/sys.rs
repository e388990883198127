//! Process plumbing shared by every command.
//!
//! Children get `~/.cargo/bin` on PATH even when the caller's shell lacks it (a non-login CI
//! shell, `sudo`): netwatch's build script builds the eBPF programs with `bpf-linker`, and
//! `cargo install` puts it there. Every child runs from the workspace root, so `cargo xtask`
//! behaves the same from any directory.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs, io,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output},
    time::Duration,
};

use anyhow::{Result, bail};

/// The workspace root: xtask's own manifest directory's parent.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Where `cargo install` puts binaries: `$CARGO_HOME/bin`, else `~/.cargo/bin`.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    match env::var_os("CARGO_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home).join("bin")),
        _ => env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo").join("bin")),
    }
}

/// PATH for children: the caller's PATH, with the cargo bin directory in front if missing.
pub fn child_path() -> OsString {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin_dir()
        && !dirs.contains(&bin)
    {
        dirs.insert(0, bin);
    }
    env::join_paths(dirs).unwrap_or(current)
}

/// PATH for children with `dir` in front (e.g. `/usr/lib/llvm-22/bin` for `cargo install`).
pub fn child_path_with(dir: &Path) -> OsString {
    let path = child_path();
    let dirs = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path));
    env::join_paths(dirs).unwrap_or(path)
}

/// A command that runs from the workspace root with [`child_path`] as its PATH (which is also
/// where a bare program name is looked up).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", child_path()).current_dir(workspace_root());
    cmd
}

/// `cargo`, preferably the very binary that runs xtask (`$CARGO`), so that nested builds use
/// the same toolchain as `cargo xtask` itself.
pub fn cargo() -> Command {
    command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A command line as a user would type it, for progress and error messages.
pub fn show(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    // `$CARGO` is an absolute path into the toolchain; `cargo` reads better.
    let program = match program.file_name() {
        Some(name) if program.is_absolute() && name == "cargo" => "cargo".into(),
        _ => program.to_string_lossy(),
    };
    let mut line = program.into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio; an error names the command and its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|err| not_started(cmd, err))?;
    check(cmd, status)
}

/// Runs `cmd` and captures its output; an error only if it could not be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|err| not_started(cmd, err))
}

/// Turns a non-zero exit status into an error naming the command.
pub fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    match status.code() {
        Some(code) => bail!("`{}` exited with status {code}", show(cmd)),
        None => bail!("`{}` was killed ({status})", show(cmd)),
    }
}

/// The error for a command that could not even be started.
pub fn not_started(cmd: &Command, err: io::Error) -> anyhow::Error {
    let program = cmd.get_program().to_string_lossy();
    let hint = match err.kind() {
        io::ErrorKind::NotFound => format!(" (`{program}` is not installed or not on PATH)"),
        _ => String::new(),
    };
    anyhow::Error::new(err).context(format!("could not start `{}`{hint}", show(cmd)))
}

/// The effective user id, from `/proc/self/status` (std has no `geteuid`, and this saves a
/// libc dependency).
pub fn euid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn is_root() -> bool {
    euid() == Some(0)
}

/// `1.23s` / `1m05s`: short enough for a progress line and a summary table.
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.2}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "0.25s");
        assert_eq!(fmt_duration(Duration::from_secs(65)), "1m05s");
    }

    #[test]
    fn show_prints_a_command_line() {
        let mut cmd = Command::new("/opt/rust/bin/cargo");
        cmd.args(["fmt", "--all", "--check"]);
        assert_eq!(show(&cmd), "cargo fmt --all --check");
    }

    #[test]
    fn child_path_contains_cargo_bin() {
        if let Some(bin) = cargo_bin_dir() {
            assert!(env::split_paths(&child_path()).any(|dir| dir == bin));
        }
    }
}
