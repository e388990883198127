//! What the raw tracepoint programs read from the kernel's own structs, where a classic
//! tracepoint's record has it already: the socket's protocol, state and endpoints, and the
//! endpoints of the segment a reset answers.
//!
//! Each read mirrors the `TP_fast_assign` of the classic tracepoint it replaces
//! (`include/trace/events/{sock,tcp}.h`), so that both paths give the same event: the source
//! port and IPv4 address come from `inet_sock` (`inet_sport`, `inet_saddr`), not from
//! `sock_common` (`skc_num`, `skc_rcv_saddr`), because that is what the classic records hold;
//! an IPv6 socket's addresses come from `sk_v6_rcv_saddr` and `sk_v6_daddr`.
//!
//! Offsets come from the running kernel's BTF ([`KERNEL_OFFSETS`]); user space attaches a raw
//! program only when every offset it needs is known.

use netwatch_common::{AF_INET, AF_INET6, RawEvent, tcp_state};

use crate::{
    KERNEL_OFFSETS,
    helpers::{global, kread},
};

/// `sk->sk_protocol`.
#[inline(always)]
pub(crate) fn protocol(sk: u64) -> Option<u16> {
    kread::<u16>(sk, global(&KERNEL_OFFSETS.sk_protocol))
}

/// `sk->sk_state` (`sock_common`, so also right for timewait and request sockets).
#[inline(always)]
pub(crate) fn state(sk: u64) -> Option<u8> {
    kread::<u8>(sk, global(&KERNEL_OFFSETS.skc_state))
}

/// `sk_fullsock()`: neither a timewait nor a request socket, whose structs end after
/// `sock_common`.
#[inline(always)]
pub(crate) fn is_full(state: u8) -> bool {
    state != tcp_state::TIME_WAIT && state != tcp_state::NEW_SYN_RECV
}

/// Family, ports and addresses of a full socket, as `tcp_event_sk`, `tcp_event_sk_skb` and
/// `inet_sock_set_state` store them (`TP_STORE_ADDRS`). With `np_saddr`, an IPv6 source
/// address comes from `inet6_sk(sk)->saddr` instead of `sk_v6_rcv_saddr`, as
/// `tcp_send_reset` stores it since 6.10 (`TP_STORE_ADDR_PORTS`). `None` when a read fails.
#[inline(always)]
pub(crate) fn tuple(sk: u64, ev: &mut RawEvent, np_saddr: bool) -> Option<()> {
    let o = &KERNEL_OFFSETS;
    let family = kread::<u16>(sk, global(&o.skc_family))?;
    ev.family = family;
    ev.sport = u16::from_be(kread::<u16>(sk, global(&o.inet_sport))?);
    ev.dport = u16::from_be(kread::<u16>(sk, global(&o.skc_dport))?);
    if family == AF_INET6 {
        ev.saddr = if np_saddr {
            let np = kread::<u64>(sk, global(&o.inet_pinet6))?;
            kread::<[u8; 16]>(np, global(&o.ipv6_pinfo_saddr))?
        } else {
            kread::<[u8; 16]>(sk, global(&o.skc_v6_rcv_saddr))?
        };
        ev.daddr = kread::<[u8; 16]>(sk, global(&o.skc_v6_daddr))?;
    } else {
        let saddr = kread::<[u8; 4]>(sk, global(&o.inet_saddr))?;
        let daddr = kread::<[u8; 4]>(sk, global(&o.skc_daddr))?;
        ev.saddr[..4].copy_from_slice(&saddr);
        ev.daddr[..4].copy_from_slice(&daddr);
    }
    Some(())
}

/// The endpoints `tcp_retransmit_synack` stores: the request socket's (`ir_num` as the
/// source port, already in host order; `ir_rmt_port`; `ir_loc_addr`/`ir_rmt_addr`, or the
/// IPv6 pair), under the listener's family. A request socket starts with a `sock_common`,
/// so the `skc_*` offsets apply.
#[inline(always)]
pub(crate) fn request_tuple(listener: u64, req: u64, ev: &mut RawEvent) -> Option<()> {
    let o = &KERNEL_OFFSETS;
    let family = kread::<u16>(listener, global(&o.skc_family))?;
    ev.family = family;
    ev.sport = kread::<u16>(req, global(&o.skc_num))?;
    ev.dport = u16::from_be(kread::<u16>(req, global(&o.skc_dport))?);
    if family == AF_INET6 {
        ev.saddr = kread::<[u8; 16]>(req, global(&o.skc_v6_rcv_saddr))?;
        ev.daddr = kread::<[u8; 16]>(req, global(&o.skc_v6_daddr))?;
    } else {
        let saddr = kread::<[u8; 4]>(req, global(&o.skc_rcv_saddr))?;
        let daddr = kread::<[u8; 4]>(req, global(&o.skc_daddr))?;
        ev.saddr[..4].copy_from_slice(&saddr);
        ev.daddr[..4].copy_from_slice(&daddr);
    }
    Some(())
}

/// The endpoints of the segment `skb` a reset answers, reversed (the reset goes back to its
/// sender), as `tcp_send_reset` stores them since 6.10 when there is no full socket
/// (`TP_STORE_ADDR_PORTS_SKB`): the IP header at `head + network_header` (version 6: source
/// at byte 8, destination at 24; else IPv4: 12 and 16), the TCP header at `data` (source port
/// at 0, destination at 2).
#[inline(always)]
pub(crate) fn segment_tuple(skb: u64, ev: &mut RawEvent) -> Option<()> {
    let o = &KERNEL_OFFSETS;
    let head = kread::<u64>(skb, global(&o.skb_head))?;
    let network = kread::<u16>(skb, global(&o.skb_network_header))?;
    let th = kread::<u64>(skb, global(&o.skb_data))?;
    let ip = head + u64::from(network);
    let ports = kread::<[u8; 4]>(th, 0)?;
    ev.sport = u16::from_be_bytes([ports[2], ports[3]]);
    ev.dport = u16::from_be_bytes([ports[0], ports[1]]);
    if kread::<u8>(ip, 0)? >> 4 == 6 {
        ev.family = AF_INET6;
        ev.saddr = kread::<[u8; 16]>(ip, 24)?;
        ev.daddr = kread::<[u8; 16]>(ip, 8)?;
    } else {
        ev.family = AF_INET;
        let addrs = kread::<[u8; 8]>(ip, 12)?;
        ev.saddr[..4].copy_from_slice(&addrs[4..]);
        ev.daddr[..4].copy_from_slice(&addrs[..4]);
    }
    Some(())
}
