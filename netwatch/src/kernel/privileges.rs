//! Checks, before anything is loaded, that the process may load and attach BPF programs, so
//! that a missing privilege gives one clear sentence naming the capabilities instead of an
//! EPERM from deep inside the loader.
use std::fs;

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
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
