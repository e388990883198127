//! Recordings older versions wrote still replay to what those versions printed; no root needed.
//!
//! `tests/fixtures/recordings/report-0.1.jsonl` is a `netwatch report --record` file in the
//! JSON-lines format of netwatch 0.1.0 (before the binary format), and `report-0.1.*.json`
//! what that netwatch's `analyze` printed from it (see `tests/fixtures/README.md`).
//! `report-0.1.nwr` is the same recording in the first binary format version.
//! `leaks-v2.nwr` is a `netwatch leaks --json --record` file in the second, and
//! `leaks-v2.leaks.json` what that live run printed. `trace-v3.nwr` is a `trace --stacks`
//! recording in the third, the last before same-socket records.

use std::{path::PathBuf, process::Command};

use netwatch_tests::{netwatch_bin, output_with_timeout, workspace_root};

fn fixture(name: &str) -> PathBuf {
    workspace_root()
        .join("tests/fixtures/recordings")
        .join(name)
}

fn analyze(file: &str, args: &[&str]) -> String {
    crate::support::analyze(&fixture(file), args)
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn a_json_lines_recording_of_0_1_replays_to_what_0_1_printed() {
    for file in ["report-0.1.jsonl", "report-0.1.nwr"] {
        assert_eq!(
            analyze(file, &["--report", "--json"]),
            expected("report-0.1.report.json"),
            "{file}: report"
        );
        assert_eq!(
            analyze(file, &["--life", "--json"]),
            expected("report-0.1.life.json"),
            "{file}: life"
        );
        assert_eq!(
            analyze(file, &["--json"]),
            expected("report-0.1.trace.json"),
            "{file}: events as JSON lines"
        );
    }
}

#[test]
fn a_leaks_recording_of_format_2_replays_to_what_its_live_run_printed() {
    assert_eq!(
        analyze("leaks-v2.nwr", &["--leaks", "--json"]),
        expected("leaks-v2.leaks.json")
    );
}

#[test]
fn a_recording_without_leaks_snapshots_says_which_command_records_them() {
    for file in ["report-0.1.jsonl", "report-0.1.nwr"] {
        let mut cmd = Command::new(netwatch_bin());
        cmd.arg("analyze").arg(fixture(file)).arg("--leaks");
        let out = output_with_timeout(cmd, 60);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: exited 0:\n{stderr}");
        assert!(
            stderr.contains("holds no leaks snapshots")
                && stderr.contains("netwatch leaks --record FILE"),
            "{file}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{file}: printed a snapshot");
    }
}

/// `analyze --top` on recordings of other commands (a leaks recording holds snapshots, not
/// ticks) fails, naming the command that records ticks, and prints no summary.
#[test]
fn a_recording_without_top_ticks_says_which_command_records_them() {
    for file in ["report-0.1.jsonl", "report-0.1.nwr", "leaks-v2.nwr"] {
        let mut cmd = Command::new(netwatch_bin());
        cmd.arg("analyze").arg(fixture(file)).arg("--top");
        let out = output_with_timeout(cmd, 60);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: exited 0:\n{stderr}");
        assert!(
            stderr.contains("holds no top ticks") && stderr.contains("netwatch top --record FILE"),
            "{file}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{file}: printed a summary");
    }
}

/// `trace-v3.nwr`, written before same-socket records (format version 3), and its rewrite by
/// this netwatch (`analyze trace-v3.nwr --record new.nwr`, version 4) replay to the same, in
/// every mode: the rewrite's shorter records name the same sockets, owners and stacks.
#[test]
fn a_format_3_recording_and_its_format_4_rewrite_replay_the_same() {
    let scratch = crate::support::Scratch::new("v3-rewrite");
    let rewrite = scratch.path("trace-v4.nwr");
    let mut cmd = Command::new(netwatch_bin());
    cmd.arg("analyze")
        .arg(fixture("trace-v3.nwr"))
        .arg("--record")
        .arg(&rewrite);
    let out = output_with_timeout(cmd, 60);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (old, new) = (
        std::fs::read(fixture("trace-v3.nwr")).unwrap(),
        std::fs::read(&rewrite).unwrap(),
    );
    assert_eq!(
        old[8..12],
        3u32.to_le_bytes(),
        "the fixture is of version 3"
    );
    assert_eq!(
        new[8..12],
        4u32.to_le_bytes(),
        "the rewrite is of version 4"
    );
    for mode in [
        &[][..],
        &["--json"],
        &["-w"],
        &["--report"],
        &["--report", "--json"],
        &["--life"],
        &["--life", "--json"],
    ] {
        let before = analyze("trace-v3.nwr", mode);
        assert!(!before.is_empty(), "{mode:?}: nothing printed");
        assert_eq!(before, crate::support::analyze(&rewrite, mode), "{mode:?}");
    }
}
