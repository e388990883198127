//! What the binary prints about itself (README, "Filters": `netwatch completions
//! bash|zsh|fish|elvish|powershell` and the man page): scripts a shell can load and a man page,
//! each naming every subcommand. No root needed: nothing is traced.

use std::process::Command;

use crate::support::Scratch;
use netwatch_tests::{netwatch_bin, output_with_timeout};

/// Every subcommand the README documents.
const SUBCOMMANDS: &[&str] = &[
    "trace",
    "life",
    "report",
    "top",
    "serve",
    "leaks",
    "analyze",
    "doctor",
    "completions",
];

/// `netwatch <args>`'s stdout; it must succeed.
fn netwatch(args: &[&str]) -> String {
    let mut cmd = Command::new(netwatch_bin());
    cmd.args(args);
    let out = output_with_timeout(cmd, 30);
    assert!(
        out.status.success(),
        "netwatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn completions_for_every_shell_name_every_subcommand_and_bash_loads_them() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = netwatch(&["completions", shell]);
        assert!(script.contains("netwatch"), "{shell}: {script}");
        for sub in SUBCOMMANDS {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
        if shell == "bash" {
            let scratch = Scratch::new("completions");
            let file = scratch.path("netwatch.bash");
            std::fs::write(&file, &script).expect("write script");
            let mut check = Command::new("bash");
            check.arg("-n").arg(&file);
            let out = output_with_timeout(check, 30);
            assert!(
                out.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Loaded, it registers a completion for netwatch.
            let mut load = Command::new("bash");
            load.arg("-c").arg(format!(
                "source '{}' && complete -p netwatch",
                file.display()
            ));
            let out = output_with_timeout(load, 30);
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.contains("netwatch"),
                "complete -p netwatch: {said}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // A shell it does not know is refused, by name.
    let mut cmd = Command::new(netwatch_bin());
    cmd.args(["completions", "tcsh"]);
    let out = output_with_timeout(cmd, 30);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

/// The page `cargo xtask man` writes to `target/man/netwatch.1` is what `netwatch manpage`
/// prints: roff with a title, a name and every subcommand.
#[test]
fn the_man_page_is_roff_naming_every_subcommand() {
    let page = netwatch(&["manpage"]);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(page.contains(".TH netwatch 1"), "no title:\n{page}");
    assert!(page.contains(".SH NAME"), "no NAME section:\n{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(sub), "the man page lacks {sub}");
    }
}
