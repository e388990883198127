//! The kernel matrix: which Debian kernel packages to boot, fetched with apt and cached.
//!
//! A package is named by series and flavour, and the newest build apt offers is taken
//! (`linux-image-6.1.0-<abi>-<flavour>-unsigned`), so the matrix follows Debian's security
//! updates without a code change. Only the kernel image and the two sock_diag modules that
//! `netwatch leaks` needs (built as modules by Debian) are kept from each package.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};

use crate::sys::{self, command, show};

/// One entry of the matrix: a kernel series and a flavour of it.
#[derive(Clone, Copy, Debug)]
pub struct Flavour {
    /// The package name's version part up to the ABI number: `6.1.0-` (Debian 12's own
    /// kernel) or `6.12.` (bookworm's backported 6.12).
    pub prefix: &'static str,
    /// What follows the ABI number and precedes `-unsigned`: `-cloud-amd64`, `+deb12-amd64`.
    pub suffix: &'static str,
}

/// Every flavour of Debian 12's 6.1 that apt offers, and the 6.12 that bookworm also carries.
pub const MATRIX: &[Flavour] = &[
    Flavour {
        prefix: "6.1.0-",
        suffix: "-cloud-amd64",
    },
    Flavour {
        prefix: "6.1.0-",
        suffix: "-amd64",
    },
    Flavour {
        prefix: "6.1.0-",
        suffix: "-rt-amd64",
    },
    Flavour {
        prefix: "6.12.",
        suffix: "+deb12-cloud-amd64",
    },
];

/// The sock_diag modules `netwatch leaks` needs; Debian builds them as modules.
pub const MODULES: &[&str] = &["inet_diag.ko", "tcp_diag.ko"];

/// A kernel ready to boot: its image and the modules to load first.
#[derive(Clone, Debug)]
pub struct Kernel {
    pub package: String,
    pub vmlinuz: PathBuf,
    pub modules: Vec<PathBuf>,
}

/// Where fetched kernels are kept between runs (`NETWATCH_VM_CACHE` overrides): outside the
/// clone, so a fresh clone does not download them again.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("NETWATCH_VM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/netwatch-vm"))
}

/// The newest package of `flavour` among `names` (`apt-cache pkgnames linux-image-` output).
pub fn newest_package<'a>(
    flavour: &Flavour,
    names: impl Iterator<Item = &'a str>,
) -> Option<String> {
    let head = format!("linux-image-{}", flavour.prefix);
    let tail = format!("{}-unsigned", flavour.suffix);
    names
        .filter_map(|name| {
            let abi = name.strip_prefix(&head)?.strip_suffix(&tail)?;
            let abi: u32 = abi.parse().ok()?;
            Some((abi, name))
        })
        .max()
        .map(|(_, name)| name.to_string())
}

/// Every package name apt knows that starts with `linux-image-`.
fn package_names() -> Result<String> {
    let mut cmd = command("apt-cache");
    cmd.args(["pkgnames", "linux-image-"]);
    let out = sys::output(&mut cmd)?;
    sys::check(&cmd, out.status)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves every flavour of the matrix to a package, and fetches those `wanted` selects
/// that are not cached yet.
pub fn fetch_matrix(wanted: impl Fn(&str) -> bool) -> Result<Vec<Kernel>> {
    let mut names = package_names()?;
    if MATRIX
        .iter()
        .any(|f| newest_package(f, names.lines()).is_none())
    {
        // A fresh machine may never have run `apt-get update`.
        eprintln!("vm-test: apt-get update (kernel packages not listed yet)");
        sys::run(command("apt-get").args(["update", "-q"]))
            .context("apt-get update failed; check network access and apt sources")?;
        names = package_names()?;
    }
    let mut kernels = Vec::new();
    for flavour in MATRIX {
        let package = newest_package(flavour, names.lines()).ok_or_else(|| {
            anyhow!(
                "apt offers no linux-image-{}N{}-unsigned package",
                flavour.prefix,
                flavour.suffix
            )
        })?;
        if wanted(&package) {
            kernels.push(fetch(&package)?);
        }
    }
    Ok(kernels)
}

/// The cached kernel of `package`, downloaded and unpacked first if needed.
fn fetch(package: &str) -> Result<Kernel> {
    let dir = cache_dir().join(package);
    if let Some(kernel) = cached(package, &dir) {
        eprintln!("vm-test: {package} ... cached");
        return Ok(kernel);
    }
    eprintln!("vm-test: {package} ... downloading");
    let work = cache_dir().join(format!(".{package}.partial"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut download = command("apt-get");
    // As root, apt would drop to its `_apt` user, which cannot write here, and warn.
    download
        .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
        .current_dir(&work);
    if sys::run(&mut download).is_err() {
        // The archive moved on since the last `apt-get update`.
        sys::run(command("apt-get").args(["update", "-q"]))?;
        sys::run(&mut download).with_context(|| format!("`{}` failed", show(&download)))?;
    }
    let deb = fs::read_dir(&work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| anyhow!("apt-get download left no .deb in {}", work.display()))?;
    let tree = work.join("tree");
    let mut unpack = command("dpkg-deb");
    unpack.arg("-x").arg(&deb).arg(&tree);
    sys::run(&mut unpack)?;

    let staged = work.join("keep");
    fs::create_dir_all(&staged)?;
    let vmlinuz = find_file(&tree.join("boot"), |name| name.starts_with("vmlinuz-"))
        .ok_or_else(|| anyhow!("{deb:?} holds no boot/vmlinuz-*"))?;
    fs::copy(&vmlinuz, staged.join("vmlinuz"))?;
    for module in MODULES {
        let found = find_file(&tree.join("lib/modules"), |name| name == *module)
            .or_else(|| find_file(&tree.join("usr/lib/modules"), |name| name == *module));
        // Built in (no module): nothing to load.
        if let Some(path) = found {
            fs::copy(&path, staged.join(module))?;
        }
    }
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&staged, &dir).with_context(|| format!("moving the kernel to {}", dir.display()))?;
    let _ = fs::remove_dir_all(&work);
    cached(package, &dir).ok_or_else(|| anyhow!("{} is incomplete", dir.display()))
}

fn cached(package: &str, dir: &Path) -> Option<Kernel> {
    let vmlinuz = dir.join("vmlinuz");
    vmlinuz.is_file().then(|| Kernel {
        package: package.to_string(),
        vmlinuz,
        modules: MODULES
            .iter()
            .map(|m| dir.join(m))
            .filter(|p| p.is_file())
            .collect(),
    })
}

/// The first file under `dir` (recursively) whose name satisfies `want`.
fn find_file(dir: &Path, want: impl Fn(&str) -> bool + Copy) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, want) {
                return Some(found);
            }
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(want) {
            return Some(path);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest package of every flavour, or `None` when one is missing.
    fn resolve_all(names: &str) -> Option<Vec<String>> {
        MATRIX
            .iter()
            .map(|f| newest_package(f, names.lines()))
            .collect()
    }

    const NAMES: &str = "linux-image-6.1.0-47-cloud-amd64-unsigned
linux-image-6.1.0-50-cloud-amd64-unsigned
linux-image-6.1.0-9-cloud-amd64-unsigned
linux-image-6.1.0-50-cloud-amd64
linux-image-6.1.0-50-cloud-amd64-dbg
linux-image-6.1.0-47-amd64-unsigned
linux-image-6.1.0-47-rt-amd64-unsigned
linux-image-6.12.107+deb12-cloud-amd64-unsigned
linux-image-6.12.115+deb12-cloud-amd64-unsigned
linux-image-6.12.115+deb12-rt-amd64-unsigned";

    #[test]
    fn takes_the_newest_abi_of_each_flavour() {
        assert_eq!(
            resolve_all(NAMES).unwrap(),
            [
                "linux-image-6.1.0-50-cloud-amd64-unsigned",
                "linux-image-6.1.0-47-amd64-unsigned",
                "linux-image-6.1.0-47-rt-amd64-unsigned",
                "linux-image-6.12.115+deb12-cloud-amd64-unsigned",
            ]
        );
    }

    #[test]
    fn a_flavour_apt_does_not_offer_is_an_error() {
        let names = "linux-image-6.1.0-47-cloud-amd64-unsigned";
        assert!(resolve_all(names).is_none());
    }
}
