//! Boots one kernel with qemu and brings vmcheck's lines back over the serial console.
//!
//! TCG by default: on these machines KVM is present but `-cpu host` hangs before the kernel
//! starts, and `-cpu qemu64` hangs at boot, while TCG boots 6.1 in about 2 s.
//! `NETWATCH_VM_ACCEL=kvm` asks for KVM where it works.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use super::initramfs::LINE_PREFIX;
use crate::sys::command;

/// What one boot produced.
pub struct Boot {
    /// vmcheck's lines, escape sequences before them cut off.
    pub lines: Vec<String>,
    /// vmcheck's exit status, from its `EXIT` line; `None` if it never got there.
    pub exit: Option<i32>,
    /// The last lines of the whole console, for a boot that went wrong.
    pub tail: Vec<String>,
    pub took: Duration,
}

/// Boots `vmlinuz` with `initrd`, echoing vmcheck's lines as they arrive, for at most `bound`.
pub fn boot(vmlinuz: &Path, initrd: &Path, bound: Duration) -> Result<Boot> {
    let accel = std::env::var("NETWATCH_VM_ACCEL").unwrap_or_else(|_| "tcg".to_string());
    let cpu = if accel == "kvm" { "host" } else { "max" };
    // Multi-threaded TCG runs each vCPU on a host thread of its own, and a guest that patches
    // its own code on one vCPU (the static keys flipped when netwatch enables the syscall
    // tracepoints) can then execute a half-patched instruction on the other: 6.12 panicked
    // in syscall_exit_to_user_mode_prepare one boot in a few. One thread for both vCPUs keeps
    // two CPUs in the guest and makes code patching safe.
    let accel_arg = if accel == "tcg" {
        "tcg,thread=single".to_string()
    } else {
        accel
    };
    let mut cmd = command("qemu-system-x86_64");
    cmd.args(["-accel", &accel_arg, "-cpu", cpu, "-smp", "2", "-m", "1536"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 rdinit=/init quiet loglevel=3",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        anyhow!("cannot start qemu-system-x86_64: {e}; `cargo xtask setup` installs it")
    })?;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut boot = Boot {
        lines: Vec::new(),
        exit: None,
        tail: Vec::new(),
        took: Duration::ZERO,
    };
    let deadline = start + bound;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(raw) => {
                let line = raw.replace('\r', "");
                if let Some(at) = line.find(LINE_PREFIX) {
                    let ours = line[at..].to_string();
                    eprintln!("  {ours}");
                    if let Some(code) = exit_code(&ours) {
                        boot.exit = Some(code);
                    }
                    boot.lines.push(ours);
                }
                boot.tail.push(line);
                if boot.tail.len() > 40 {
                    boot.tail.remove(0);
                }
            }
            // Both pipes closed: qemu is gone.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            boot.tail.push(format!("(killed after {bound:?})"));
            break;
        }
    }
    let _ = child.wait();
    boot.took = start.elapsed();
    Ok(boot)
}

/// The status in `vmcheck [KERNEL] EXIT N`.
fn exit_code(line: &str) -> Option<i32> {
    let (_, rest) = line.split_once("] EXIT ")?;
    rest.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_line_gives_the_status() {
        assert_eq!(exit_code("vmcheck [6.1.0-47-cloud-amd64] EXIT 0"), Some(0));
        assert_eq!(exit_code("vmcheck [6.1.0-47-cloud-amd64] EXIT 1"), Some(1));
        assert_eq!(exit_code("vmcheck [6.1.0] PASS life: EXIT 1"), None);
    }
}
