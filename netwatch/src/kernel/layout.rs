//! Turns a tracepoint's format file into the [`TpFields`] offsets its kernel program reads,
//! checking each field's size, so that a layout the program cannot read is refused here (and
//! the feature switched off with a warning) instead of producing garbage.
use netwatch_common::{ABSENT, RECORD_COPY_LEN, TpFields};

use crate::kernel::tracefs::EventFormat;

/// Why a tracepoint's layout cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{field}` is {size} bytes, expected {expected}")]
    Size {
        field: &'static str,
        size: u16,
        expected: &'static str,
    },
    #[error("field `{field}` ends at byte {end}, past the {RECORD_COPY_LEN} bytes netwatch copies")]
    TooFar { field: &'static str, end: usize },
}

/// Offset of `name` if present with one of the `sizes`, [`ABSENT`] if missing.
fn offset(fmt: &EventFormat, name: &'static str, sizes: &[u16]) -> Result<u16, LayoutError> {
    let Some(field) = fmt.field(name) else {
        return Ok(ABSENT);
    };
    if !sizes.contains(&field.size) {
        return Err(LayoutError::Size {
            field: name,
            size: field.size,
            expected: match sizes {
                [2] => "2",
                [4] => "4",
                [8] => "8",
                [16] => "16",
                _ => "4 or 28",
            },
        });
    }
    let end = usize::from(field.offset) + usize::from(field.size);
    if end > RECORD_COPY_LEN {
        return Err(LayoutError::TooFar { field: name, end });
    }
    Ok(field.offset)
}

/// Fails when any of `names` is absent.
fn require(f: TpFields, names: &[(&'static str, u16)]) -> Result<TpFields, LayoutError> {
    match names.iter().find(|(_, off)| *off == ABSENT) {
        Some((name, _)) => Err(LayoutError::Missing(name)),
        None => Ok(f),
    }
}

/// The offsets of a `tcp:*` tracepoint: every field it has, and at least `skaddr`.
pub fn socket_fields(fmt: &EventFormat) -> Result<TpFields, LayoutError> {
    let f = fields(fmt)?;
    require(f, &[("skaddr", f.skaddr)])
}

/// The offsets of a `syscalls:sys_exit_*` tracepoint: `ret`.
pub fn syscall_exit_fields(fmt: &EventFormat) -> Result<TpFields, LayoutError> {
    let f = fields(fmt)?;
    require(f, &[("ret", f.ret)])
}

/// The offsets of one tracepoint, for the fields its program reads.
fn fields(fmt: &EventFormat) -> Result<TpFields, LayoutError> {
    let mut f = TpFields {
        skaddr: offset(fmt, "skaddr", &[8])?,
        oldstate: offset(fmt, "oldstate", &[4])?,
        newstate: offset(fmt, "newstate", &[4])?,
        state: offset(fmt, "state", &[4])?,
        sport: offset(fmt, "sport", &[2])?,
        dport: offset(fmt, "dport", &[2])?,
        family: offset(fmt, "family", &[2])?,
        protocol: offset(fmt, "protocol", &[2])?,
        saddr: offset(fmt, "saddr", &[4, 28])?,
        daddr: offset(fmt, "daddr", &[4, 28])?,
        saddr_v6: offset(fmt, "saddr_v6", &[16])?,
        daddr_v6: offset(fmt, "daddr_v6", &[16])?,
        reason: offset(fmt, "reason", &[4])?,
        err: offset(fmt, "err", &[4])?,
        src_sockaddr: ABSENT,
        dst_sockaddr: ABSENT,
        ret: offset(fmt, "ret", &[8])?,
        _pad: 0,
    };
    // Since 6.10 tcp_send_reset stores whole sockaddrs (`__u8 saddr[28]`) holding family, port
    // and address, instead of the separate family/port/address fields.
    if fmt.field("saddr").is_some_and(|s| s.size == 28) {
        f.src_sockaddr = f.saddr;
        f.dst_sockaddr = f.daddr;
        f.saddr = ABSENT;
        f.daddr = ABSENT;
    }
    Ok(f)
}

/// The offsets of `sock:sock_send_length` / `sock_recv_length`: only `sk` (called `sk`, not
/// `skaddr`, there; its `ret` is an `int`, not a syscall's `long`, so [`fields`] does not fit).
pub fn sock_length_fields(fmt: &EventFormat) -> Result<TpFields, LayoutError> {
    let f = TpFields {
        skaddr: offset(fmt, "sk", &[8])?,
        ..TpFields::NONE
    };
    require(f, &[("sk", f.skaddr)])
}

/// `fields`, plus the fields without which a state transition means nothing.
pub fn set_state_fields(fmt: &EventFormat) -> Result<TpFields, LayoutError> {
    let f = fields(fmt)?;
    require(
        f,
        &[
            ("skaddr", f.skaddr),
            ("oldstate", f.oldstate),
            ("newstate", f.newstate),
            ("protocol", f.protocol),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tracefs::parse_format;

    fn fixture(kernel: &str, event: &str) -> EventFormat {
        let path = format!(
            "{}/tests/fixtures/{kernel}/{event}.format",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_format(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn sock_length_layout_takes_sk_and_refuses_a_format_without_it() {
        let text = "name: sock_send_length\nID: 2284\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:__u16 family;\toffset:16;\tsize:2;\tsigned:0;\n\
            \tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;\n\
            \tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;\n\
            \tfield:int flags;\toffset:24;\tsize:4;\tsigned:1;\n\nprint fmt: \"x\"\n";
        let f = sock_length_fields(&parse_format(text).unwrap()).unwrap();
        assert_eq!((f.skaddr, f.ret, f.protocol), (8, ABSENT, ABSENT));
        let without = text.replace("void * sk;", "void * skb;");
        assert_eq!(
            sock_length_fields(&parse_format(&without).unwrap()),
            Err(LayoutError::Missing("sk"))
        );
    }

    #[test]
    fn set_state_layout_on_6_18_matches_its_format_file() {
        let f = set_state_fields(&fixture("6.18", "sock__inet_sock_set_state")).unwrap();
        // Offsets as printed by /sys/kernel/tracing/events/sock/inet_sock_set_state/format.
        assert_eq!(
            (
                f.skaddr, f.oldstate, f.newstate, f.sport, f.dport, f.family, f.protocol
            ),
            (8, 16, 20, 24, 26, 28, 30)
        );
        assert_eq!((f.saddr, f.daddr, f.saddr_v6, f.daddr_v6), (32, 36, 40, 56));
        assert_eq!((f.state, f.reason, f.err), (ABSENT, ABSENT, ABSENT));
    }

    #[test]
    fn send_reset_on_6_18_uses_sockaddrs_and_reason() {
        let f = fields(&fixture("6.18", "tcp__tcp_send_reset")).unwrap();
        assert_eq!((f.skaddr, f.state, f.reason), (16, 24, 28));
        assert_eq!((f.src_sockaddr, f.dst_sockaddr), (32, 60));
        assert_eq!(
            (f.saddr, f.daddr, f.sport, f.family),
            (ABSENT, ABSENT, ABSENT, ABSENT)
        );
    }

    #[test]
    fn send_reset_on_5_15_uses_classic_fields_and_has_no_reason() {
        let f = fields(&fixture("5.15", "tcp__tcp_send_reset")).unwrap();
        assert_eq!(f.reason, ABSENT);
        assert_eq!((f.src_sockaddr, f.dst_sockaddr), (ABSENT, ABSENT));
        assert_ne!(f.saddr, ABSENT);
        assert_ne!(f.saddr_v6, ABSENT);
        assert_ne!(f.sport, ABSENT);
    }

    #[test]
    fn retransmit_err_exists_on_6_18_only() {
        let new = fields(&fixture("6.18", "tcp__tcp_retransmit_skb")).unwrap();
        let old = fields(&fixture("5.15", "tcp__tcp_retransmit_skb")).unwrap();
        assert_eq!(new.err, 76);
        assert_eq!(old.err, ABSENT);
        assert_eq!(new.state, 24);
    }

    #[test]
    fn accept_exit_layout_has_ret() {
        let f = syscall_exit_fields(&fixture("6.18", "syscalls__sys_exit_accept4")).unwrap();
        assert_eq!(f.ret, 16);
        assert_eq!(f.skaddr, ABSENT);
    }

    #[test]
    fn every_fixture_layout_is_usable() {
        for kernel in ["6.18", "5.15"] {
            for event in [
                "tcp__tcp_retransmit_skb",
                "tcp__tcp_retransmit_synack",
                "tcp__tcp_receive_reset",
                "tcp__tcp_send_reset",
                "tcp__tcp_destroy_sock",
            ] {
                let f = socket_fields(&fixture(kernel, event))
                    .unwrap_or_else(|e| panic!("{kernel} {event}: {e}"));
                assert_ne!(f.skaddr, ABSENT, "{kernel} {event}");
            }
            set_state_fields(&fixture(kernel, "sock__inet_sock_set_state")).unwrap();
        }
    }

    #[test]
    fn wrong_sizes_and_missing_fields_are_refused() {
        let text = "name: x\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u32 sport;\toffset:16;\tsize:4;\tsigned:0;\n\nprint fmt: \"\"\n";
        let fmt = parse_format(text).unwrap();
        assert_eq!(
            fields(&fmt),
            Err(LayoutError::Size {
                field: "sport",
                size: 4,
                expected: "2"
            })
        );
        let text = "name: x\nID: 1\nformat:\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\nprint fmt: \"\"\n";
        let fmt = parse_format(text).unwrap();
        assert_eq!(
            set_state_fields(&fmt),
            Err(LayoutError::Missing("oldstate"))
        );
        assert_eq!(syscall_exit_fields(&fmt), Err(LayoutError::Missing("ret")));
        let text = "name: x\nID: 1\nformat:\n\tfield:const void * skaddr;\toffset:200;\tsize:8;\tsigned:0;\n\nprint fmt: \"\"\n";
        let fmt = parse_format(text).unwrap();
        assert_eq!(
            fields(&fmt),
            Err(LayoutError::TooFar {
                field: "skaddr",
                end: 208
            })
        );
    }
}
