//! Checks, before anything is loaded, that the process may load and attach BPF programs, so
//! that a missing privilege gives one clear sentence naming the capabilities instead of an
//! EPERM from deep inside the loader; and, once the programs are attached, gives up every
//! capability the run no longer needs ([`keep_only`]).
use std::{fs, io};

pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from `/proc/self/status`.
fn effective_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1u64 << cap) != 0
}

/// What is missing to trace, or `None` when the process may go ahead.
pub fn missing_tracing_caps() -> Option<String> {
    let caps = effective_caps()?;
    missing_from(caps)
}

fn missing_from(caps: u64) -> Option<String> {
    // CAP_SYS_ADMIN covers both on kernels before 5.8 and still works after.
    if has(caps, CAP_SYS_ADMIN) || (has(caps, CAP_BPF) && has(caps, CAP_PERFMON)) {
        return None;
    }
    let mut lacking = Vec::new();
    if !has(caps, CAP_BPF) {
        lacking.push("CAP_BPF");
    }
    if !has(caps, CAP_PERFMON) {
        lacking.push("CAP_PERFMON");
    }
    Some(format!(
        "netwatch needs CAP_BPF and CAP_PERFMON to load and attach its eBPF programs \
         (this process lacks {}). Run it as root (sudo netwatch ...), or grant them: \
         setcap cap_bpf,cap_perfmon,cap_sys_admin+ep $(which netwatch) \
         (CAP_SYS_ADMIN is needed to mount tracefs when it is not mounted)",
        lacking.join(" and ")
    ))
}

/// What this process lacks for `netwatch doctor`'s BPF checks, named for a sentence ("CAP_BPF
/// and CAP_PERFMON (or CAP_SYS_ADMIN)"); `None` where it has what the check needs (or the
/// capabilities cannot be read: the kernel then has the last word).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BpfCapGaps {
    /// To create maps: CAP_BPF.
    pub maps: Option<String>,
    /// To load tracepoint programs: CAP_BPF and CAP_PERFMON.
    pub programs: Option<String>,
}

/// [`BpfCapGaps`] of this process.
pub fn bpf_cap_gaps() -> BpfCapGaps {
    effective_caps().map(gaps_from).unwrap_or_default()
}

fn gaps_from(caps: u64) -> BpfCapGaps {
    let lacking = |needed: &[(u32, &str)]| -> Option<String> {
        if has(caps, CAP_SYS_ADMIN) {
            return None;
        }
        let names: Vec<&str> = needed
            .iter()
            .filter(|(cap, _)| !has(caps, *cap))
            .map(|(_, name)| *name)
            .collect();
        (!names.is_empty()).then(|| format!("{} (or CAP_SYS_ADMIN)", names.join(" and ")))
    };
    BpfCapGaps {
        maps: lacking(&[(CAP_BPF, "CAP_BPF")]),
        programs: lacking(&[(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]),
    }
}

/// What `netwatch leaks` cannot see without more privilege, as a warning; `None` when it can
/// see every socket's holders in every network namespace.
pub fn missing_inspection_caps() -> Option<String> {
    inspection_gaps(effective_caps()?)
}

fn inspection_gaps(caps: u64) -> Option<String> {
    let mut gaps = Vec::new();
    if !has(caps, CAP_SYS_PTRACE) {
        gaps.push("without CAP_SYS_PTRACE only this user's processes' fds can be read");
    }
    if !has(caps, CAP_SYS_ADMIN) {
        gaps.push("without CAP_SYS_ADMIN other network namespaces (containers) cannot be entered");
    }
    (!gaps.is_empty()).then(|| format!("{}; run as root to see every socket", gaps.join("; ")))
}

/// What a live run keeps once its programs are attached: nothing, unless it looks into other
/// processes and network namespaces.
/// - `CAP_SYS_PTRACE`: to read other processes' `/proc/<pid>/fd`, `ns/net` and memory maps
///   (leaks' fd holders; every namespace's inode for TIME_WAIT reconciliation; user stacks).
/// - `CAP_SYS_ADMIN`: to setns() into another network namespace (leaks' and the TIME_WAIT
///   reconciliation's sock_diag dumps) and to read `/proc/<pid>/map_files` (user stacks).
pub const INSPECTS_OTHERS: &[u32] = &[CAP_SYS_PTRACE, CAP_SYS_ADMIN];

/// Highest capability number the bounding set is walked up to (the kernel says past its own
/// last one with EINVAL).
const CAP_LAST_POSSIBLE: u32 = 63;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two (bits 0-31, then 32-63).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Gives up every capability but `keep` (those it has of them), for good: the effective,
/// permitted and inheritable sets, the ambient set, and the bounding set (so that no exec
/// gets them back), and sets no_new_privs. The calling thread's sets are the ones changed, so
/// this runs before the run starts its other threads (which inherit them).
pub fn keep_only(keep: &[u32]) -> io::Result<u64> {
    let keep_mask = keep.iter().fold(0u64, |m, &c| m | (1u64 << c));
    // SAFETY: prctl with these options takes integer arguments only and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
    }
    for cap in 0..=CAP_LAST_POSSIBLE {
        if keep_mask & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: as above; EINVAL past the kernel's last capability ends the walk, EPERM
        // (no CAP_SETPCAP) leaves the bounding set as it was: the sets below still drop.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if ret != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            log::debug!("bounding set: dropping capability {cap}: {err}");
        }
    }
    let held = current_sets()?;
    let permitted = held & keep_mask;
    let data = [
        CapData {
            effective: permitted as u32,
            permitted: permitted as u32,
            inheritable: 0,
        },
        CapData {
            effective: (permitted >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: 0,
        },
    ];
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset(2) reads the header and two data structs of the version-3 layout, which
    // both live across the call; pid 0 is the calling thread.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    let threads = fs::read_dir("/proc/self/task").map_or(1, Iterator::count);
    if threads > 1 {
        log::warn!(
            "capabilities dropped on one thread of {threads}: the others keep theirs until they end"
        );
    }
    Ok(permitted)
}

/// The permitted set of this thread, from `/proc/thread-self/status`.
fn current_sets() -> io::Result<u64> {
    let status = fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapPrm line"))
}

/// Capability names for a log line (`CAP_SYS_PTRACE,CAP_SYS_ADMIN`; `none`).
pub fn names(mask: u64) -> String {
    let known = [
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ];
    let mut out: Vec<String> = Vec::new();
    for cap in 0..64u32 {
        if mask & (1 << cap) != 0 {
            out.push(
                known
                    .iter()
                    .find(|(c, _)| *c == cap)
                    .map_or_else(|| format!("cap{cap}"), |(_, n)| (*n).to_string()),
            );
        }
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out.join(",")
    }
}

/// Tries to lift RLIMIT_MEMLOCK. Kernels since 5.11 charge BPF memory to the cgroup and ignore
/// it, and a container without CAP_SYS_RESOURCE cannot raise it: log, never fail.
pub fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass by reference and has no other effect on memory.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if ret != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); not needed on kernels >= 5.11",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doctor_names_what_each_bpf_check_lacks() {
        assert_eq!(gaps_from(!0), BpfCapGaps::default());
        assert_eq!(gaps_from(1 << CAP_SYS_ADMIN), BpfCapGaps::default());
        let g = gaps_from(1 << CAP_BPF);
        assert_eq!(g.maps, None);
        assert_eq!(
            g.programs.as_deref(),
            Some("CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
        let g = gaps_from(0);
        assert_eq!(g.maps.as_deref(), Some("CAP_BPF (or CAP_SYS_ADMIN)"));
        assert_eq!(
            g.programs.as_deref(),
            Some("CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)")
        );
    }

    #[test]
    fn inspection_gaps_name_the_capability() {
        assert_eq!(inspection_gaps(!0), None);
        let w = inspection_gaps(1 << CAP_SYS_ADMIN).unwrap();
        assert!(
            w.contains("CAP_SYS_PTRACE") && !w.contains("CAP_SYS_ADMIN"),
            "{w}"
        );
        let w = inspection_gaps(0).unwrap();
        assert!(
            w.contains("CAP_SYS_PTRACE") && w.contains("CAP_SYS_ADMIN"),
            "{w}"
        );
    }

    #[test]
    fn names_what_is_kept() {
        assert_eq!(names(0), "none");
        assert_eq!(
            names((1 << CAP_SYS_PTRACE) | (1 << CAP_SYS_ADMIN)),
            "CAP_SYS_PTRACE,CAP_SYS_ADMIN"
        );
    }

    /// In a thread of its own (capabilities are per thread), so the other tests keep theirs.
    #[test]
    fn keeps_only_what_it_is_told_in_proc_status() {
        let (eff, prm, bnd, kept) = std::thread::spawn(|| {
            let kept = keep_only(&[CAP_SYS_PTRACE]).unwrap();
            let status = fs::read_to_string("/proc/thread-self/status").unwrap();
            let field = |name: &str| {
                let hex = status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap()
                    .trim();
                u64::from_str_radix(hex, 16).unwrap()
            };
            (field("CapEff:"), field("CapPrm:"), field("CapBnd:"), kept)
        })
        .join()
        .unwrap();
        // Whatever this process had, what is left is at most CAP_SYS_PTRACE.
        assert_eq!(eff & !(1 << CAP_SYS_PTRACE), 0, "CapEff {eff:x}");
        assert_eq!(prm & !(1 << CAP_SYS_PTRACE), 0, "CapPrm {prm:x}");
        assert_eq!((eff, prm), (kept, kept));
        if parse_cap_eff(&fs::read_to_string("/proc/self/status").unwrap()).unwrap()
            & (1 << CAP_SYS_PTRACE)
            != 0
        {
            assert_eq!(kept, 1 << CAP_SYS_PTRACE);
            // With CAP_SETPCAP to start with, the bounding set went too.
            assert_eq!(bnd & !(1 << CAP_SYS_PTRACE), 0, "CapBnd {bnd:x}");
        }
    }

    #[test]
    fn reads_cap_eff_from_proc_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
    }

    #[test]
    fn root_and_bpf_plus_perfmon_may_trace() {
        assert_eq!(missing_from(0x1ff_ffff_ffff), None);
        assert_eq!(missing_from((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
        assert_eq!(missing_from(1 << CAP_SYS_ADMIN), None);
    }

    #[test]
    fn an_unprivileged_process_is_told_which_capabilities() {
        let msg = missing_from(0).unwrap();
        assert!(msg.contains("CAP_BPF and CAP_PERFMON"), "{msg}");
        let msg = missing_from(1 << CAP_BPF).unwrap();
        assert!(msg.contains("lacks CAP_PERFMON)"), "{msg}");
    }
}
