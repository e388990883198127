//! What a verifier log says, in one line: the explanation the verifier ends on and its
//! statistics, for `netwatch doctor` and for the warning when a raw tracepoint program is
//! refused and its classic twin runs instead.
use aya::programs::ProgramError;

/// One line for a program the kernel refused to load: the verifier's explanation when there
/// is a log, else the error itself.
pub fn refusal(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => match summarize_verifier_log(&verifier_log.to_string()) {
            Some(summary) => format!("the verifier rejects it: {summary}"),
            None => format!("the kernel refused to load it ({io_error})"),
        },
        e => format!("cannot load it ({e})"),
    }
}

/// A line of the verifier's closing statistics.
fn is_stats_line(line: &str) -> bool {
    (line.starts_with("processed ") && line.contains(" insns"))
        || line.starts_with("verification time")
        || line.starts_with("stack depth")
        || line.starts_with("-- END")
}

/// A line of the verifier's walk through the program (instructions, register states, source
/// lines, branch and precision bookkeeping), as opposed to the sentence saying what is wrong.
fn is_trace_line(line: &str) -> bool {
    let t = line.trim_end();
    if t.is_empty() || t.starts_with([' ', '\t', ';']) {
        return true;
    }
    // "12: (85) call bpf_probe_read_kernel#113", "0: R1=ctx() R10=fp0"
    let digits = t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0 && t[digits..].starts_with(':') {
        return true;
    }
    // "R1_w=scalar()", "R0=0": a register state, not "R1 invalid mem access 'scalar'"
    if let Some(rest) = t.strip_prefix('R') {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if rest.len() < t.len() - 1 && rest.starts_with(['=', '_']) {
            return true;
        }
    }
    (t.starts_with("from ") && t.contains(" to "))
        || [
            "func#",
            "Func#",
            "Live regs",
            "mark_precise",
            "last_idx",
            "regs=",
            "parent ",
            "caller:",
            "callee:",
            "frame",
            "Validating ",
            "returning from callee",
            "to caller at",
        ]
        .iter()
        .any(|p| t.starts_with(p))
}

/// One line out of a verifier log: the first line of the explanation the verifier ends on, and
/// its statistics ("processed N insns (limit M)", and the stack depth when the complaint is
/// about the stack). `None` for an empty log.
pub fn summarize_verifier_log(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    let mut end = lines.len();
    while end > 0 && (lines[end - 1].is_empty() || is_stats_line(lines[end - 1])) {
        end -= 1;
    }
    // The explanation: the block of non-trace lines just before the statistics.
    let mut start = end;
    while start > 0 && !is_trace_line(lines[start - 1]) && !is_stats_line(lines[start - 1]) {
        start -= 1;
    }
    let explanation = (start < end).then(|| lines[start]);
    let processed = lines
        .iter()
        .find(|l| l.starts_with("processed ") && l.contains(" insns"))
        .map(|l| l.split(" max_states_per_insn").next().unwrap_or(l));
    let stack = lines.iter().find(|l| l.starts_with("stack depth"));
    let mut extras: Vec<&str> = Vec::new();
    if let Some(&stack) = stack
        && explanation.is_some_and(|e| e.contains("stack"))
    {
        extras.push(stack);
    }
    extras.extend(processed);
    match (explanation, extras.is_empty()) {
        (Some(e), true) => Some(e.to_owned()),
        (Some(e), false) => Some(format!("{e} ({})", extras.join("; "))),
        (None, false) => Some(extras.join("; ")),
        (None, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_becomes_its_explanation_and_its_counts() {
        // As Linux 6.18 wrote it (log level DEBUG | STATS, aya's default).
        let log = "0: R1=ctx() R10=fp0\n\
            0: (bf) r6 = r1                       ; R1=ctx() R6=ctx()\n\
            1: (b7) r6 = 5                        ; R6=5\n\
            2: (79) r0 = *(u64 *)(r6 +0)\n\
            R6 invalid mem access 'scalar'\n\
            verification time 47 usec\n\
            stack depth 0\n\
            processed 3 insns (limit 1000000) max_states_per_insn 0 total_states 0 \
            peak_states 0 mark_read 0\n";
        assert_eq!(
            summarize_verifier_log(log).unwrap(),
            "R6 invalid mem access 'scalar' (processed 3 insns (limit 1000000))"
        );
    }

    #[test]
    fn the_first_line_of_a_two_line_explanation_is_kept() {
        let log = "13: (79) r1 = *(u64 *)(r0 +64)\n\
            R0=map_value(map=STATS,ks=4,vs=64)\n\
            invalid access to map value, value_size=64 off=64 size=8\n\
            R0 min value is outside of the allowed memory range\n\
            verification time 35 usec\n\
            stack depth 0\n\
            processed 14 insns (limit 1000000) max_states_per_insn 0 total_states 1 \
            peak_states 1 mark_read 1\n";
        assert_eq!(
            summarize_verifier_log(log).unwrap(),
            "invalid access to map value, value_size=64 off=64 size=8 \
             (processed 14 insns (limit 1000000))"
        );
    }

    #[test]
    fn a_stack_complaint_keeps_the_stack_depth() {
        let log = "from 40 to 42: R0=scalar()\n\
            42: (85) call pc+10\n\
            combined stack size of 3 calls is 576. Too large\n\
            verification time 1201 usec\n\
            stack depth 32+512+32\n\
            processed 340 insns (limit 1000000) max_states_per_insn 1 total_states 20 \
            peak_states 20 mark_read 5\n";
        assert_eq!(
            summarize_verifier_log(log).unwrap(),
            "combined stack size of 3 calls is 576. Too large \
             (stack depth 32+512+32; processed 340 insns (limit 1000000))"
        );
    }

    #[test]
    fn logs_without_an_explanation() {
        assert_eq!(summarize_verifier_log(""), None);
        assert_eq!(summarize_verifier_log("\n\n"), None);
        assert_eq!(
            summarize_verifier_log(
                "0: (b7) r0 = 0\nprocessed 1000001 insns (limit 1000000) max_states_per_insn 4"
            )
            .unwrap(),
            "processed 1000001 insns (limit 1000000)"
        );
        // A log that is nothing but the complaint.
        assert_eq!(
            summarize_verifier_log("unknown opcode 8d\n").unwrap(),
            "unknown opcode 8d"
        );
    }

    #[test]
    fn register_states_are_not_complaints() {
        assert!(is_trace_line("R1_w=scalar(id=1)"));
        assert!(is_trace_line("R0=0 R10=fp0"));
        assert!(is_trace_line("12: (85) call bpf_probe_read_kernel#113"));
        assert!(is_trace_line("; if x == 0 { @ main.rs:12"));
        assert!(!is_trace_line("R1 invalid mem access 'scalar'"));
        assert!(!is_trace_line("R2 !read_ok"));
        assert!(!is_trace_line("back-edge from insn 10 to 5"));
    }
}
