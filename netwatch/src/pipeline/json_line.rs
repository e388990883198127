//! `--json`'s event lines, written field by field into one reused line. serde's derived
//! writer (two flattened structs, an internally tagged enum, a `String` each for the time and
//! the socket address) cost about 0.6 µs per event: a fifth of a core under the heaviest
//! churn, taken from the traced workload. The bytes are serde's, exactly: the tests hold this
//! writer to the derived one (`EventJson`), which stays as its oracle.
use std::fmt::Write as _;

use crate::model::{
    event::{Event, EventKind, Family, TcpState, UseCall},
    names::Container,
    pad,
};

/// Appends `ev` as one JSON object (no newline): `time` (RFC 3339, written as it is) first
/// when given, the event's fields,
/// then its owner's `cgroup` and container names when known. The order and the omissions
/// are serde's for `JsonLine`/`EventJson`.
pub fn push_event(
    line: &mut String,
    ev: &Event,
    time: Option<&str>,
    cgroup: Option<&str>,
    container: Option<&Container>,
) {
    line.push('{');
    if let Some(time) = time {
        // RFC 3339 digits and separators: nothing to escape.
        line.push_str("\"time\":\"");
        line.push_str(time);
        line.push_str("\",");
    }
    line.push_str("\"ts_ns\":");
    push_u64(line, ev.ts_ns);
    line.push_str(",\"sock\":\"");
    push_hex(line, ev.sock);
    line.push('"');
    line.push_str(",\"pid\":");
    push_opt_u64(line, ev.pid.map(u64::from));
    line.push_str(",\"tid\":");
    push_opt_u64(line, ev.tid.map(u64::from));
    line.push_str(",\"comm\":");
    match &ev.comm {
        Some(comm) => push_str(line, comm.as_str()),
        None => line.push_str("null"),
    }
    line.push_str(",\"owner_seen_here\":");
    line.push_str(if ev.owner_seen_here { "true" } else { "false" });
    if let Some(id) = ev.cgroup_id {
        line.push_str(",\"cgroup_id\":");
        push_u64(line, id);
    }
    if let Some(netns) = ev.netns {
        line.push_str(",\"netns\":");
        push_u64(line, netns.into());
    }
    line.push_str(match ev.family {
        Family::Ipv4 => ",\"family\":\"ipv4\"",
        Family::Ipv6 => ",\"family\":\"ipv6\"",
    });
    line.push_str(",\"saddr\":\"");
    pad::push_ip(line, ev.saddr, 0);
    line.push_str("\",\"sport\":");
    push_u64(line, ev.sport.into());
    line.push_str(",\"daddr\":\"");
    pad::push_ip(line, ev.daddr, 0);
    line.push_str("\",\"dport\":");
    push_u64(line, ev.dport.into());
    if let Some(id) = ev.stack_id {
        line.push_str(",\"stack_id\":");
        push_u64(line, id.into());
    }
    if !ev.stack.is_empty() {
        line.push_str(",\"stack\":[");
        for (i, frame) in ev.stack.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            push_str(line, frame);
        }
        line.push(']');
    }
    push_kind(line, &ev.kind);
    if let Some(cgroup) = cgroup {
        line.push_str(",\"cgroup\":");
        push_str(line, cgroup);
    }
    if let Some(c) = container {
        line.push_str(",\"container_id\":");
        push_str(line, &c.id);
        for (key, value) in [
            ("container", &c.name),
            ("pod", &c.pod),
            ("namespace", &c.namespace),
        ] {
            if let Some(value) = value {
                let _ = write!(line, ",\"{key}\":");
                push_str(line, value);
            }
        }
    }
    line.push('}');
}

/// The `kind` tag and the variant's fields, in declaration order.
fn push_kind(line: &mut String, kind: &EventKind) {
    let state = |line: &mut String, s: &Option<TcpState>| {
        line.push_str(",\"state\":");
        push_state(line, *s);
    };
    match kind {
        EventKind::State {
            old_state,
            new_state,
            ms_in_old,
            bytes_sent,
            bytes_received,
            srtt_ms,
        } => {
            line.push_str(",\"kind\":\"state\",\"old_state\":");
            push_state(line, *old_state);
            line.push_str(",\"new_state\":");
            push_state(line, *new_state);
            line.push_str(",\"ms_in_old\":");
            push_opt_f64(line, *ms_in_old);
            if let Some(b) = bytes_sent {
                line.push_str(",\"bytes_sent\":");
                push_u64(line, *b);
            }
            if let Some(b) = bytes_received {
                line.push_str(",\"bytes_received\":");
                push_u64(line, *b);
            }
            if srtt_ms.is_some() {
                line.push_str(",\"srtt_ms\":");
                push_opt_f64(line, *srtt_ms);
            }
        }
        EventKind::Retransmit { state: s, err } => {
            line.push_str(",\"kind\":\"retransmit\"");
            state(line, s);
            line.push_str(",\"err\":");
            match err {
                Some(e) => line.push_str(itoa::Buffer::new().format(*e)),
                None => line.push_str("null"),
            }
        }
        EventKind::SynackRetransmit { state: s } => {
            line.push_str(",\"kind\":\"synack_retransmit\"");
            state(line, s);
        }
        EventKind::ResetReceived { state: s } => {
            line.push_str(",\"kind\":\"reset_received\"");
            state(line, s);
        }
        EventKind::ResetSent { state: s, reason } => {
            line.push_str(",\"kind\":\"reset_sent\"");
            state(line, s);
            line.push_str(",\"reason\":");
            match reason {
                Some(r) => push_str(line, r),
                None => line.push_str("null"),
            }
        }
        EventKind::Destroy { state: s } => {
            line.push_str(",\"kind\":\"destroy\"");
            state(line, s);
        }
        EventKind::Accept { state: s } => {
            line.push_str(",\"kind\":\"accept\"");
            state(line, s);
        }
        EventKind::FirstUse { state: s, call } => {
            line.push_str(",\"kind\":\"first_use\"");
            state(line, s);
            line.push_str(match call {
                UseCall::Send => ",\"call\":\"send\"",
                UseCall::Recv => ",\"call\":\"recv\"",
            });
        }
    }
}

fn push_state(line: &mut String, s: Option<TcpState>) {
    match s {
        Some(s) => {
            line.push('"');
            line.push_str(s.name());
            line.push('"');
        }
        None => line.push_str("null"),
    }
}

/// A JSON string, escaped as serde_json escapes: `"`, `\` and the control characters below
/// U+0020 (short forms where JSON has them, `\u00XX` otherwise); everything else as is.
pub fn push_str(line: &mut String, s: &str) {
    line.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        line.push_str(s);
        line.push('"');
        return;
    }
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        line.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(line, "\\u{b:04x}");
        } else {
            line.push_str(escape);
        }
        plain = i + 1;
    }
    line.push_str(&s[plain..]);
    line.push('"');
}

fn push_u64(line: &mut String, n: u64) {
    line.push_str(itoa::Buffer::new().format(n));
}

/// `{:#x}`: `0x` and the digits without leading zeros.
fn push_hex(line: &mut String, n: u64) {
    let mut digits = *b"0x0000000000000000";
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[(rest & 0xf) as usize];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    line.push_str("0x");
    line.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

fn push_opt_u64(line: &mut String, n: Option<u64>) {
    match n {
        Some(n) => push_u64(line, n),
        None => line.push_str("null"),
    }
}

/// A float as serde_json writes one: the shortest form that reads back (zmij, as serde_json); `null` when
/// it has no JSON form (NaN, infinities) or is absent.
fn push_opt_f64(line: &mut String, v: Option<f64>) {
    match v {
        Some(v) if v.is_finite() => line.push_str(zmij::Buffer::new().format_finite(v)),
        _ => line.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::comm::Comm, pipeline::sink::EventJson};

    /// What serde's derived writer makes of the same line.
    fn serde_line(
        ev: &Event,
        time: Option<&str>,
        cgroup: Option<&str>,
        container: Option<&Container>,
    ) -> String {
        let json = EventJson {
            event: ev,
            cgroup,
            container,
        };
        match time {
            Some(time) => serde_json::to_string(&crate::pipeline::sink::JsonLine {
                time: time.to_string(),
                event: json,
            }),
            None => serde_json::to_string(&json),
        }
        .unwrap()
    }

    fn every_kind() -> Vec<EventKind> {
        use TcpState::*;
        vec![
            EventKind::state(Close, SynSent),
            EventKind::State {
                old_state: None,
                new_state: Some(Close),
                ms_in_old: Some(1234.5678),
                bytes_sent: Some(u64::MAX),
                bytes_received: Some(0),
                srtt_ms: Some(0.125),
            },
            EventKind::State {
                old_state: Some(FinWait1),
                new_state: None,
                ms_in_old: Some(f64::NAN),
                bytes_sent: None,
                bytes_received: Some(7),
                srtt_ms: Some(f64::INFINITY),
            },
            EventKind::State {
                old_state: Some(Established),
                new_state: Some(CloseWait),
                ms_in_old: Some(1e21),
                bytes_sent: None,
                bytes_received: None,
                srtt_ms: None,
            },
            EventKind::Retransmit {
                state: Some(Established),
                err: Some(-16),
            },
            EventKind::Retransmit {
                state: None,
                err: None,
            },
            EventKind::SynackRetransmit {
                state: Some(Listen),
            },
            EventKind::ResetReceived { state: None },
            EventKind::ResetSent {
                state: Some(Established),
                reason: Some("NOT_SPECIFIED \"q\"\\".into()),
            },
            EventKind::ResetSent {
                state: None,
                reason: None,
            },
            EventKind::Destroy { state: Some(Close) },
            EventKind::Accept {
                state: Some(Established),
            },
            EventKind::FirstUse {
                state: Some(Established),
                call: UseCall::Send,
            },
            EventKind::FirstUse {
                state: None,
                call: UseCall::Recv,
            },
        ]
    }

    /// Every kind, with and without each optional field, IPv4 and IPv6, names that need
    /// escaping or are not ASCII, containers named in part: the bytes serde writes.
    #[test]
    fn lines_are_what_serde_writes() {
        let container = Container {
            id: "ab".repeat(32),
            name: Some("web".into()),
            pod: None,
            namespace: Some("prod\u{1}ns".into()),
        };
        let unnamed = Container::unnamed("cd");
        let mut checked = 0;
        for (i, kind) in every_kind().into_iter().enumerate() {
            let mut ev = Event {
                ts_ns: 18_446_744_073_709_551_615 - i as u64,
                sock: 0xffff_8881_0000_1000 + i as u64,
                kind,
                ..Event::default()
            };
            if i % 2 == 0 {
                ev.pid = Some(u32::MAX);
                ev.tid = Some(7);
                ev.comm = Some(Comm::from(
                    ["tab\there", "\"x\\y\"", "naïve→", "nl\nz\u{7f}"][i % 4],
                ));
                ev.owner_seen_here = true;
                ev.cgroup_id = Some(1 << 40);
                ev.netns = Some(4_026_531_840);
                ev.stack_id = Some(0);
                ev.stack = vec!["main (a.c:1)".into(), "0x7f00 (libc.so.6)".into()];
            }
            if i % 3 == 0 {
                ev.family = Family::Ipv6;
                ev.saddr = "fd00::1".parse().unwrap();
                ev.daddr = "::ffff:10.0.0.1".parse().unwrap();
            } else {
                ev.saddr = "255.255.255.255".parse().unwrap();
                ev.daddr = "0.0.0.0".parse().unwrap();
            }
            ev.sport = 65535;
            for time in [None, Some("2026-12-03T18:00:00.000001Z")] {
                for cgroup in [None, Some("/system.slice/a\\b.service")] {
                    for c in [None, Some(&container), Some(&unnamed)] {
                        let mut line = String::new();
                        push_event(&mut line, &ev, time, cgroup, c);
                        assert_eq!(line, serde_line(&ev, time, cgroup, c), "kind {i}");
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 14 * 12);
    }

    #[test]
    fn hex_is_what_fmt_writes() {
        for n in [0, 1, 0xf, 0x10, 0xffff_8881_0000_1000, u64::MAX] {
            let mut line = String::new();
            push_hex(&mut line, n);
            assert_eq!(line, format!("{n:#x}"));
        }
    }

    #[test]
    fn strings_escape_as_serde_does() {
        for s in ["", "plain", "\u{0}\u{1f} \u{8}\u{c}", "é\"\\/", "\r\n\t"] {
            let mut line = String::new();
            push_str(&mut line, s);
            assert_eq!(line, serde_json::to_string(s).unwrap());
        }
    }
}
