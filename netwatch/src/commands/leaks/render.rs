//! The text form of a snapshot: one block per group, what an engineer pastes into a ticket.
use std::fmt::Write as _;

use super::group::{Group, Snapshot};
use super::{Opener, StuckKind};
use crate::model::event::UseCall;

/// Peers and fds listed in full up to this many; then the first ones and the count.
const LIST_MAX: usize = 8;

/// The snapshot as text: a header line, then one block per group.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let total: usize = s.groups.iter().map(|g| g.sockets).sum();
    let _ = writeln!(
        out,
        "{}  {total} stuck socket{} in {} group{} (min age {})",
        s.at,
        plural(total),
        s.groups.len(),
        plural(s.groups.len()),
        age(s.min_age_ms),
    );
    for w in &s.warnings {
        let _ = writeln!(out, "  warning: {w}");
    }
    for g in &s.groups {
        out.push('\n');
        block(&mut out, g);
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn block(out: &mut String, g: &Group) {
    match (g.pid, &g.comm) {
        (Some(pid), comm) => {
            let _ = write!(out, "PID {pid} {}", comm.as_deref().unwrap_or("-"));
        }
        (None, _) if g.kind == StuckKind::OrphanFinWait2 => {
            out.push_str("no process (orphaned by close())");
        }
        (None, _) => out.push_str("PID - (owner not known)"),
    }
    if let Some(c) = &g.container {
        let _ = write!(out, " (container: {})", c.label());
    }
    if let Some(cg) = &g.cgroup {
        let _ = write!(out, " (cgroup: {cg})");
    }
    if let Some(ns) = g.netns {
        let _ = write!(out, " netns {ns}");
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "  {} {} {}, oldest {}{}, peers {}",
        g.sockets,
        if g.sockets == 1 { "socket" } else { "sockets" },
        kind_text(g.kind),
        if g.oldest_at_least { "at least " } else { "" },
        age(g.oldest_ms),
        list(
            g.peers
                .iter()
                .map(|p| format!("{} ({})", p.peer, p.sockets))
        ),
    );
    match (&g.leaked_by, &g.leaked_by_unknown) {
        (Some(h), _) => {
            let _ = writeln!(out, "  leaked by {h}");
        }
        (None, Some(why)) => {
            let _ = writeln!(out, "  leaked by: not shown: {why}");
        }
        (None, None) => {}
    }
    if g.code_path_seen {
        let call = match g.opened_by {
            Some(Opener::Accept) => "accept()",
            Some(Opener::Connect) => "connect()",
            None => "a call netwatch saw",
        };
        let _ = writeln!(out, "  opened by {call} at:");
        for frame in &g.stack {
            let _ = writeln!(out, "    {frame}");
        }
    } else if g.kind != StuckKind::OrphanFinWait2 {
        // An orphan's process already closed it: its code path is not what needs fixing.
        let _ = writeln!(
            out,
            "  code path not seen (opened before netwatch started, or stack capture was off)"
        );
    }
    if g.first_use_seen {
        let call = match g.first_used_by {
            Some(UseCall::Recv) => "a receive",
            _ => "a send",
        };
        let _ = writeln!(out, "  first used by {call} at:");
        for frame in &g.first_used_at {
            let _ = writeln!(out, "    {frame}");
        }
    } else if g.code_path_seen && g.kind != StuckKind::OrphanFinWait2 {
        let _ = writeln!(
            out,
            "  first use not seen (no send or receive since netwatch started, or a kernel \
             before 6.3)"
        );
    }
    if !g.fds.is_empty() {
        let _ = writeln!(out, "  fds: {}", list(g.fds.iter().map(u32::to_string)));
    }
}

fn kind_text(k: StuckKind) -> &'static str {
    match k {
        StuckKind::CloseWait => "in CLOSE_WAIT (the peer closed, this process never did)",
        StuckKind::FinWait2 => "in FIN_WAIT2 (this process shut down, the peer never closed)",
        StuckKind::OrphanFinWait2 => {
            "in FIN_WAIT2, orphaned (closed here, the peer never closed; dropped after tcp_fin_timeout)"
        }
    }
}

/// `a, b, c` or `a, b, ..., (37)` past [`LIST_MAX`].
fn list(items: impl ExactSizeIterator<Item = String>) -> String {
    let n = items.len();
    let shown: Vec<String> = items.take(LIST_MAX).collect();
    if n > LIST_MAX {
        format!("{}, ... ({n})", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// `14m02s`, `2h03m`, `3.4s`: an age as people read it.
pub fn age(ms: f64) -> String {
    let s = (ms / 1000.0).max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86_400.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else {
        format!(
            "{}d{:02}h",
            (s / 86_400.0) as u64,
            ((s % 86_400.0) / 3600.0) as u64
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::leaks::group::{Detail, Peer};

    #[test]
    fn ages() {
        assert_eq!(age(3400.0), "3.4s");
        assert_eq!(age(842_000.0), "14m02s");
        assert_eq!(age(7_380_000.0), "2h03m");
        assert_eq!(age(90_000_000.0), "1d01h");
    }

    fn group(stack: Vec<String>, fds: Vec<u32>) -> Group {
        Group {
            kind: StuckKind::CloseWait,
            pid: Some(4242),
            comm: Some("leaky-server".into()),
            cgroup: Some("/system.slice/shop.service".into()),
            container: None,
            netns: None,
            opened_by: Some(Opener::Accept),
            code_path_seen: !stack.is_empty(),
            stack,
            leaked_by: None,
            leaked_by_unknown: None,
            first_use_seen: false,
            first_used_by: None,
            first_used_at: vec![],
            sockets: fds.len(),
            oldest_ms: 842_000.0,
            oldest_at_least: false,
            peers: vec![Peer {
                peer: "10.0.3.0/24:443".into(),
                sockets: fds.len(),
            }],
            detail: vec![Detail {
                local: "a".into(),
                remote: "b".into(),
                age_ms: 1.0,
                at_least: false,
                fds: vec![],
            }],
            fds,
        }
    }

    #[test]
    fn a_group_reads_like_the_issue_example() {
        let s = Snapshot {
            at: "2026-11-23T19:00:00.000000Z".into(),
            watched_ms: 1.0,
            min_age_ms: 30_000.0,
            groups: vec![group(
                vec!["handle_conn_forgets_close (src/server.c:88)".into()],
                (0..37).map(|i| 7 + 2 * i).collect(),
            )],
            warnings: vec![],
        };
        let text = render(&s);
        let want = "2026-11-23T19:00:00.000000Z  37 stuck sockets in 1 group (min age 30.0s)\n\n\
             PID 4242 leaky-server (cgroup: /system.slice/shop.service)\n  \
             37 sockets in CLOSE_WAIT (the peer closed, this process never did), oldest 14m02s, peers 10.0.3.0/24:443 (37)\n  \
             opened by accept() at:\n    \
             handle_conn_forgets_close (src/server.c:88)\n  \
             first use not seen (no send or receive since netwatch started, or a kernel before 6.3)\n  \
             fds: 7, 9, 11, 13, 15, 17, 19, 21, ... (37)\n";
        assert_eq!(text, want);

        // With the handler and the first use: the headline first, then both paths.
        let mut g = s.groups[0].clone();
        g.leaked_by = Some(crate::model::frames::Headline {
            function: "handleConnectionForgetsEnd".into(),
            location: Some("server.js:12".into()),
        });
        g.first_use_seen = true;
        g.first_used_by = Some(UseCall::Send);
        g.first_used_at = vec![
            "__GI___write (libc.so.6)".into(),
            "JS:~handleConnectionForgetsEnd /srv/server.js:12:36 (perf map)".into(),
        ];
        let mut out = String::new();
        block(&mut out, &g);
        assert!(
            out.contains(
                "  leaked by `handleConnectionForgetsEnd` (server.js:12)\n  opened by accept() at:\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("  first used by a send at:\n    __GI___write (libc.so.6)\n    JS:~"),
            "{out}"
        );
        // No application frame: says why, and shows what there is.
        g.leaked_by = None;
        g.leaked_by_unknown = Some("no application frame in this code path; Python: ...".into());
        let mut out = String::new();
        block(&mut out, &g);
        assert!(
            out.contains("  leaked by: not shown: no application frame in this code path; Python"),
            "{out}"
        );
        assert!(out.contains("first used by a send at:"), "{out}");
    }

    #[test]
    fn a_group_in_a_container_names_it_before_the_cgroup() {
        let mut g = group(vec![], vec![5]);
        g.container = Some(crate::model::names::Container {
            name: Some("web".into()),
            pod: Some("shop-7f".into()),
            namespace: Some("prod".into()),
            ..crate::model::names::Container::unnamed(&"ab".repeat(32))
        });
        let s = Snapshot {
            at: "t".into(),
            watched_ms: 0.0,
            min_age_ms: 0.0,
            groups: vec![g],
            warnings: vec![],
        };
        let text = render(&s);
        assert!(
            text.contains(
                "PID 4242 leaky-server (container: prod/shop-7f/web) (cgroup: /system.slice/shop.service)\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&s.groups[0]).unwrap();
        assert_eq!(
            (&json["pod"], &json["container"]),
            (&"shop-7f".into(), &"web".into())
        );
    }

    #[test]
    fn an_unseen_code_path_says_so() {
        let s = Snapshot {
            at: "t".into(),
            watched_ms: 0.0,
            min_age_ms: 0.0,
            groups: vec![group(vec![], vec![5])],
            warnings: vec!["netns 4026532: permission denied".into()],
        };
        let text = render(&s);
        assert!(text.contains("code path not seen"), "{text}");
        assert!(text.contains("warning: netns 4026532"), "{text}");
        assert!(text.contains("fds: 5\n"), "{text}");
    }
}
