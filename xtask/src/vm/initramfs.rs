//! The VM's whole userland: an initramfs of busybox, the release binaries under test, the
//! shared libraries they link, the kernel's sock_diag modules, and an init that runs vmcheck.
//!
//! The init leaves tracefs unmounted on purpose: netwatch must mount it itself, as it has to
//! on a fresh machine.

use std::{
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::sys::{self, command};

/// busybox applets the init script uses.
const APPLETS: &[&str] = &[
    "sh", "mount", "mkdir", "ifconfig", "insmod", "cat", "echo", "poweroff",
];

/// The line vmcheck's own lines are framed with; `qemu.rs` looks for it.
pub const LINE_PREFIX: &str = "vmcheck [";

/// Busybox, static: Debian's `busybox-static` package installs it here.
const BUSYBOX: &str = "/bin/busybox";

const INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /sys/fs/cgroup /tmp
mount -t cgroup2 none /sys/fs/cgroup
for m in /lib/nwmodules/*.ko; do [ -e "$m" ] && insmod "$m"; done
ifconfig lo 127.0.0.1 up
k=$(cat /proc/sys/kernel/osrelease)
echo "vmcheck [$k] START"
NETWATCH_BIN=/bin/netwatch TCPDRIVE_BIN=/bin/tcpdrive /bin/vmcheck
echo "vmcheck [$k] EXIT $?"
poweroff -f
"#;

/// The binaries to put in `/bin`.
pub struct Binaries {
    pub netwatch: PathBuf,
    pub tcpdrive: PathBuf,
    pub vmcheck: PathBuf,
}

/// Writes `out` (a gzip'd newc cpio) for a kernel whose modules are `modules`.
pub fn build(dir: &Path, bins: &Binaries, modules: &[PathBuf], out: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    for sub in ["bin", "proc", "sys", "dev", "tmp", "lib/nwmodules"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing: `cargo xtask setup` installs busybox-static");
    }
    fs::copy(busybox, dir.join("bin/busybox"))?;
    for applet in APPLETS {
        symlink("busybox", dir.join("bin").join(applet))?;
    }
    for (name, path) in [
        ("netwatch", &bins.netwatch),
        ("tcpdrive", &bins.tcpdrive),
        ("vmcheck", &bins.vmcheck),
    ] {
        fs::copy(path, dir.join("bin").join(name))
            .with_context(|| format!("copying {}", path.display()))?;
        for lib in shared_libraries(path)? {
            let dest = dir.join(lib.strip_prefix("/").unwrap_or(&lib));
            if !dest.exists() {
                fs::create_dir_all(dest.parent().expect("a library has a folder"))?;
                fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
            }
        }
    }
    for module in modules {
        let name = module.file_name().expect("a module file");
        fs::copy(module, dir.join("lib/nwmodules").join(name))?;
    }
    let init = dir.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    pack(dir, out)
}

/// What `ldd` says `bin` loads: absolute paths (the loader included).
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = command("ldd");
    cmd.arg(bin);
    let out = sys::output(&mut cmd)?;
    sys::check(&cmd, out.status)?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2
/// (0x...)`: the absolute paths; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `find . | cpio -o -H newc | gzip -1` in `dir`.
fn pack(dir: &Path, out: &Path) -> Result<()> {
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut sh = Command::new("sh");
    sh.args(["-c", "find . | cpio --quiet -o -H newc | gzip -1"])
        .current_dir(dir)
        .stdout(Stdio::from(file));
    let status = sh.status().map_err(|e| anyhow!("running cpio/gzip: {e}"))?;
    sys::check(&sh, status).context("packing the initramfs (cpio and gzip)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_without_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
