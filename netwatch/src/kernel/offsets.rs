//! Kernel struct offsets for the reads that no classic tracepoint record gives: bytes and RTT
//! from `struct tcp_sock` at close, the fd -> socket walk at accept(), and everything the raw
//! tracepoint programs read from the socket themselves. They come from the running kernel's
//! BTF, never from constants compiled for one kernel; without BTF those features are off and
//! netwatch says so once (the raw programs then give way to the classic ones, which the
//! loader says).
use netwatch_common::{ABSENT32, INET_COPY_BYTES, KernelOffsets, SOCK_HEAD_BYTES};

use crate::kernel::btf::{Btf, BtfError};

/// Offsets, and why each one the raw tracepoint programs need is missing, when it is.
#[derive(Debug, Clone)]
pub struct Offsets {
    pub offsets: KernelOffsets,
    /// `(struct.member, why)` for each member a raw program reads that BTF did not give.
    pub missing: Vec<(&'static str, String)>,
}

impl Offsets {
    /// The first of `members` (`struct.member` names, as [`RAW_MEMBERS`] spells them) that
    /// BTF did not give, with why; `None` when all are known.
    pub fn first_missing(&self, members: &[&str]) -> Option<String> {
        members.iter().find_map(|m| {
            self.missing
                .iter()
                .find(|(name, _)| name == m)
                .map(|(name, why)| format!("{name}: {why}"))
        })
    }
}

/// Where one offset goes in [`KernelOffsets`].
type Slot = fn(&mut KernelOffsets) -> &mut u32;

/// What the raw tracepoint programs read beyond the `sock_common` endpoints: `struct.member`,
/// the size they read it as, and where its offset goes. Each is looked up on its own: a
/// missing one refuses only the raw programs that need it.
pub const RAW_MEMBERS: [(&str, u32, Slot); 9] = [
    ("sock_common.skc_state", 1, |o| &mut o.skc_state),
    ("sock.sk_protocol", 2, |o| &mut o.sk_protocol),
    ("inet_sock.inet_sport", 2, |o| &mut o.inet_sport),
    ("inet_sock.inet_saddr", 4, |o| &mut o.inet_saddr),
    ("inet_sock.pinet6", 8, |o| &mut o.inet_pinet6),
    ("ipv6_pinfo.saddr", 16, |o| &mut o.ipv6_pinfo_saddr),
    ("sk_buff.head", 8, |o| &mut o.skb_head),
    ("sk_buff.data", 8, |o| &mut o.skb_data),
    ("sk_buff.network_header", 2, |o| &mut o.skb_network_header),
];

/// The `sock_common` endpoints (addresses, ports, family), which the accept() walk and every
/// raw program read.
pub const SOCK_COMMON: &str = "sock_common endpoints";

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
    read(Btf::for_netwatch().as_ref(), warnings).offsets
}

/// Offsets from `btf` (or why there is none); one warning per feature that cannot have them.
pub fn read(btf: Result<&Btf, &BtfError>, warnings: &mut Vec<String>) -> Offsets {
    match btf {
        Ok(btf) => from_btf(btf, warnings),
        Err(e) => {
            warnings.push(format!(
                "no kernel BTF ({e}): bytes, RTT and accept() owners are not reported"
            ));
            let why = format!("no kernel BTF ({e})");
            Offsets {
                offsets: KernelOffsets::NONE,
                missing: std::iter::once(SOCK_COMMON)
                    .chain(RAW_MEMBERS.iter().map(|(m, _, _)| *m))
                    .map(|m| (m, why.clone()))
                    .collect(),
            }
        }
    }
}

fn from_btf(btf: &Btf, warnings: &mut Vec<String>) -> Offsets {
    let mut o = KernelOffsets::NONE;
    let mut missing = Vec::new();
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
    let endpoints = (|| -> Result<[u32; 7], String> {
        Ok([
            member(btf, "sock_common", "skc_daddr", 4)?,
            member(btf, "sock_common", "skc_rcv_saddr", 4)?,
            member(btf, "sock_common", "skc_dport", 2)?,
            member(btf, "sock_common", "skc_num", 2)?,
            member(btf, "sock_common", "skc_family", 2)?,
            member(btf, "sock_common", "skc_v6_daddr", 16)?,
            member(btf, "sock_common", "skc_v6_rcv_saddr", 16)?,
        ])
    })();
    let walk = (|| -> Result<[u32; 6], String> {
        Ok([
            member(btf, "task_struct", "files", 8)?,
            member(btf, "files_struct", "fdt", 8)?,
            member(btf, "fdtable", "fd", 8)?,
            member(btf, "fdtable", "max_fds", 4)?,
            member(btf, "file", "private_data", 8)?,
            member(btf, "socket", "sk", 8)?,
        ])
    })();
    if let Ok(v) = endpoints {
        o.skc_daddr = v[0];
        o.skc_rcv_saddr = v[1];
        o.skc_dport = v[2];
        o.skc_num = v[3];
        o.skc_family = v[4];
        o.skc_v6_daddr = v[5];
        o.skc_v6_rcv_saddr = v[6];
    }
    match (&endpoints, &walk) {
        (Ok(_), Ok(v)) => {
            o.task_files = v[0];
            o.files_fdt = v[1];
            o.fdt_fd = v[2];
            o.fdt_max_fds = v[3];
            o.file_private_data = v[4];
            o.socket_sk = v[5];
        }
        (Err(e), _) | (_, Err(e)) => warnings.push(format!(
            "{e}: owners of accepted sockets are not known until close()"
        )),
    }
    if let Err(e) = endpoints {
        missing.push((SOCK_COMMON, e));
    }
    for (path, size, slot) in RAW_MEMBERS {
        let (strukt, field) = path.split_once('.').unwrap_or((path, ""));
        match member(btf, strukt, field, size) {
            Ok(off) => *slot(&mut o) = off,
            Err(e) => missing.push((path, e)),
        }
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
    set_copy_extents(&mut o);
    Offsets {
        offsets: o,
        missing,
    }
}

/// Where the socket's fields the raw programs read lie close together, they copy them in one
/// read and pick them out of the copy ([`KernelOffsets::sk_head_len`], `inet_copy_*`): the
/// `sock_common` fields from the socket's start up to the end of the furthest known one, and
/// `inet_saddr` with `inet_sport`. A field that does not fit in the room the programs have is
/// still read on its own; an absent one leaves the copy out of account.
fn set_copy_extents(o: &mut KernelOffsets) {
    let end = |off: u32, size: u32| (off != ABSENT32).then(|| off.saturating_add(size));
    let head_end = [
        end(o.skc_daddr, 4),
        end(o.skc_rcv_saddr, 4),
        end(o.skc_dport, 2),
        end(o.skc_num, 2),
        end(o.skc_family, 2),
        end(o.skc_state, 1),
        end(o.skc_net, 8),
        end(o.skc_v6_daddr, 16),
        end(o.skc_v6_rcv_saddr, 16),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    o.sk_head_len = head_end.min(SOCK_HEAD_BYTES);
    (o.inet_copy_off, o.inet_copy_len) = (ABSENT32, 0);
    if o.inet_saddr != ABSENT32 && o.inet_sport != ABSENT32 {
        let start = o.inet_saddr.min(o.inet_sport);
        let stop = (o.inet_saddr + 4).max(o.inet_sport + 2);
        if stop - start <= INET_COPY_BYTES {
            (o.inet_copy_off, o.inet_copy_len) = (start, stop - start);
        }
    }
}

/// The kernel that brought `bpf_task_pt_regs` (and, before it, `bpf_get_current_task_btf`
/// in 5.11).
const TASK_PT_REGS_SINCE: (u32, u32) = (5, 15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_gives_every_offset() {
        let Ok(btf) = Btf::from_sys_fs() else {
            crate::host::skip::skip("no /sys/kernel/btf/vmlinux here");
            return;
        };
        let mut warnings = Vec::new();
        let Offsets {
            offsets: o,
            missing,
        } = from_btf(&btf, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(missing.is_empty(), "{missing:?}");
        assert!(o.skc_family != ABSENT32 && o.skc_v6_daddr != ABSENT32);
        // struct sock_common: skc_family (2 bytes) at 16, then skc_state (1 byte) at 18.
        assert_eq!((o.skc_family, o.skc_state), (16, 18));
        // struct inet_sock starts with the struct sock it extends, so its own members follow.
        assert!(o.inet_sport > o.sk_protocol && o.inet_saddr > o.sk_protocol);
        // struct sock_common (include/net/sock.h) starts with the address pair (skc_daddr 0,
        // skc_rcv_saddr 4), then the 4-byte skc_hash union, then the port pair (skc_dport 12,
        // skc_num 14).
        assert_eq!(
            (o.skc_daddr, o.skc_rcv_saddr, o.skc_dport, o.skc_num),
            (0, 4, 12, 14)
        );
        assert!(o.tcp_bytes_acked != ABSENT32 && o.tcp_bytes_received != ABSENT32);
        assert!(o.skc_net != ABSENT32 && o.net_ns_inum != ABSENT32);
        // One read copies all of sock_common the programs use (through the IPv6 source
        // address), and one the source address and port of inet_sock.
        assert_eq!(o.sk_head_len, o.skc_v6_rcv_saddr + 16);
        assert!(o.sk_head_len >= o.skc_net + 8 && o.sk_head_len <= SOCK_HEAD_BYTES);
        assert_eq!(o.inet_copy_off, o.inet_saddr.min(o.inet_sport));
        assert!(o.inet_copy_len >= 6 && o.inet_copy_len <= INET_COPY_BYTES);
    }

    /// Offsets of 6.18's `sock_common` and `inet_sock`, the rest absent.
    fn six_eighteen() -> KernelOffsets {
        KernelOffsets {
            skc_daddr: 0,
            skc_rcv_saddr: 4,
            skc_dport: 12,
            skc_num: 14,
            skc_family: 16,
            skc_state: 18,
            skc_net: 48,
            skc_v6_daddr: 56,
            skc_v6_rcv_saddr: 72,
            inet_saddr: 808,
            inet_sport: 814,
            ..KernelOffsets::NONE
        }
    }

    #[test]
    fn copies_cover_the_fields_read_together() {
        let mut o = six_eighteen();
        set_copy_extents(&mut o);
        assert_eq!(
            (o.sk_head_len, o.inet_copy_off, o.inet_copy_len),
            (88, 808, 8)
        );
    }

    #[test]
    fn fields_too_far_apart_are_read_on_their_own() {
        let mut o = KernelOffsets {
            skc_v6_rcv_saddr: SOCK_HEAD_BYTES,
            inet_sport: 808 + INET_COPY_BYTES,
            ..six_eighteen()
        };
        set_copy_extents(&mut o);
        // The head copy stops at the room the programs have; the IPv6 source address past it
        // is read on its own.
        assert_eq!(o.sk_head_len, SOCK_HEAD_BYTES);
        assert_eq!((o.inet_copy_off, o.inet_copy_len), (ABSENT32, 0));
    }

    #[test]
    fn without_offsets_nothing_is_copied() {
        let mut o = KernelOffsets::NONE;
        set_copy_extents(&mut o);
        assert_eq!(
            (o.sk_head_len, o.inet_copy_off, o.inet_copy_len),
            (0, ABSENT32, 0)
        );
    }
}
