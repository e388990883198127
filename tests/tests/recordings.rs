//! Recordings older versions wrote still replay to what those versions printed; no root needed.
//!
//! `tests/fixtures/recordings/report-0.1.jsonl` is a `netwatch report --record` file in the
//! JSON-lines format of netwatch 0.1.0 (before the binary format), and `report-0.1.*.json`
//! what that netwatch's `analyze` printed from it (see `tests/fixtures/README.md`).
//! `report-0.1.nwr` is the same recording in the first binary format version.
//! `leaks-v2.nwr` is a `netwatch leaks --json --record` file in the second, and
//! `leaks-v2.leaks.json` what that live run printed.

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
