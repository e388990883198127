//! Kernel struct offsets for the few reads that no tracepoint gives: bytes and RTT from
//! `struct tcp_sock` at close, and the fd -> socket walk at accept(). They come from the
//! running kernel's BTF, never from constants compiled for one kernel; without BTF those
//! features are off and netwatch says so once.
use netwatch_common::KernelOffsets;

use crate::kernel::btf::{Btf, BtfError};

/// `struct.member` with the byte size the kernel programs read it as.
fn member(btf: &Btf, strukt: &str, member: &str, size: u32) -> Result<u32, String> {
    let m = btf
        .member_offset(strukt, member)
        .map_err(|e: BtfError| e.to_string())?;
    if m.size != size {
        return Err(format!(
            "{strukt}.{member} is {} bytes, expected {size}",
            m.size
        ));
    }
    Ok(m.offset)
}

/// Offsets from `/sys/kernel/btf/vmlinux`; one warning per feature that cannot have them.
pub fn kernel_offsets(warnings: &mut Vec<String>) -> KernelOffsets {
    match Btf::from_sys_fs() {
        Ok(btf) => from_btf(&btf, warnings),
        Err(e) => {
            warnings.push(format!(
                "no kernel BTF ({e}): bytes, RTT and accept() owners are not reported"
            ));
            KernelOffsets::NONE
        }
    }
}

fn from_btf(btf: &Btf, warnings: &mut Vec<String>) -> KernelOffsets {
    let mut o = KernelOffsets::NONE;
    let tcp = (|| -> Result<[u32; 3], String> {
        Ok([
            member(btf, "tcp_sock", "bytes_acked", 8)?,
            member(btf, "tcp_sock", "bytes_received", 8)?,
            member(btf, "tcp_sock", "srtt_us", 4)?,
        ])
    })();
    match tcp {
        Ok([a, r, s]) => (o.tcp_bytes_acked, o.tcp_bytes_received, o.tcp_srtt_us) = (a, r, s),
        Err(e) => warnings.push(format!("{e}: bytes and RTT at close are not reported")),
    }
    let accept = (|| -> Result<[u32; 13], String> {
        Ok([
            member(btf, "task_struct", "files", 8)?,
            member(btf, "files_struct", "fdt", 8)?,
            member(btf, "fdtable", "fd", 8)?,
            member(btf, "fdtable", "max_fds", 4)?,
            member(btf, "file", "private_data", 8)?,
            member(btf, "socket", "sk", 8)?,
            member(btf, "sock_common", "skc_daddr", 4)?,
            member(btf, "sock_common", "skc_rcv_saddr", 4)?,
            member(btf, "sock_common", "skc_dport", 2)?,
            member(btf, "sock_common", "skc_num", 2)?,
            member(btf, "sock_common", "skc_family", 2)?,
            member(btf, "sock_common", "skc_v6_daddr", 16)?,
            member(btf, "sock_common", "skc_v6_rcv_saddr", 16)?,
        ])
    })();
    match accept {
        Ok(v) => {
            o.task_files = v[0];
            o.files_fdt = v[1];
            o.fdt_fd = v[2];
            o.fdt_max_fds = v[3];
            o.file_private_data = v[4];
            o.socket_sk = v[5];
            o.skc_daddr = v[6];
            o.skc_rcv_saddr = v[7];
            o.skc_dport = v[8];
            o.skc_num = v[9];
            o.skc_family = v[10];
            o.skc_v6_daddr = v[11];
            o.skc_v6_rcv_saddr = v[12];
        }
        Err(e) => warnings.push(format!(
            "{e}: owners of accepted sockets are not known until close()"
        )),
    }
    let netns = (|| -> Result<[u32; 2], String> {
        Ok([
            member(btf, "sock_common", "skc_net.net", 8)?,
            member(btf, "net", "ns.inum", 4)?,
        ])
    })();
    match netns {
        Ok([net, inum]) => (o.skc_net, o.net_ns_inum) = (net, inum),
        Err(e) => warnings.push(format!("{e}: sockets' network namespaces are not reported")),
    }
    // The kernel programs read the user stack pointer through bpf_task_pt_regs (5.15) and
    // only when this offset is known: leaving it absent is also their feature check, since
    // the verifier then never sees the helper call.
    let version = crate::kernel::release::running()
        .ok()
        .and_then(|r| crate::kernel::release::version(&r));
    match member(btf, "pt_regs", "sp", 8) {
        Ok(_) if version.is_some_and(|v| v < TASK_PT_REGS_SINCE) => warnings.push(
            "bpf_task_pt_regs needs Linux 5.15: code paths at accept() and connect() may miss \
             the function that called them"
                .to_owned(),
        ),
        Ok(sp) => o.pt_regs_sp = sp,
        Err(e) => warnings.push(format!(
            "{e}: code paths at accept() may miss the function that called accept()"
        )),
    }
    o
}

/// The kernel that brought `bpf_task_pt_regs` (and, before it, `bpf_get_current_task_btf`
/// in 5.11).
const TASK_PT_REGS_SINCE: (u32, u32) = (5, 15);

#[cfg(test)]
mod tests {
    use netwatch_common::ABSENT32;

    use super::*;

    #[test]
    fn this_kernel_gives_every_offset() {
        let Ok(btf) = Btf::from_sys_fs() else {
            crate::host::skip::skip("no /sys/kernel/btf/vmlinux here");
            return;
        };
        let mut warnings = Vec::new();
        let o = from_btf(&btf, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        // struct sock_common (include/net/sock.h) starts with the address pair (skc_daddr 0,
        // skc_rcv_saddr 4), then the 4-byte skc_hash union, then the port pair (skc_dport 12,
        // skc_num 14).
        assert_eq!(
            (o.skc_daddr, o.skc_rcv_saddr, o.skc_dport, o.skc_num),
            (0, 4, 12, 14)
        );
        assert!(o.tcp_bytes_acked != ABSENT32 && o.tcp_bytes_received != ABSENT32);
        assert!(o.skc_net != ABSENT32 && o.net_ns_inum != ABSENT32);
    }
}
