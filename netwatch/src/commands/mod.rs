//! The subcommands. Each one turns its arguments into a [`Sink`] (its own module holds the sink
//! and its rendering) and hands it to the runner ([`crate::pipeline::run`]), live from the
//! kernel or from a recording: that is why `analyze` prints what the live run printed.
pub mod doctor;
pub mod http;
pub mod leaks;
pub mod life;
pub mod metrics;
pub mod report;
pub mod top;
pub mod trace;
pub mod web_config;

use std::io::{self, BufWriter, Stdout, Write};

use anyhow::Context as _;

use crate::{
    cli::{
        AnalyzeArgs, FilterArgs, LeaksArgs, LifeArgs, ReportArgs, RunArgs, ServeArgs, TopArgs,
        TraceArgs, TrackerArgs,
    },
    commands::{
        leaks::LeaksSink,
        metrics::{Exporter, MetricsSink},
        top::TopSink,
    },
    kernel::{
        privileges::INSPECTS_OTHERS,
        probe::{ProbeConfig, TracepointMode},
    },
    model::selection::Selection,
    pipeline::{
        record::{Replay, Target},
        run::{self, Live, broken_pipe_ok},
    },
};

type Stdio = BufWriter<Stdout>;

/// What `trace` (without `--stacks`) and `life` keep once attached: they read the ring buffer
/// and `/proc/<pid>/cgroup`, which need no capability. `report`, `top` and `serve` keep
/// [`INSPECTS_OTHERS`] for the TIME_WAIT reconciliation in every network namespace; `leaks`
/// for the fds of every process in every namespace.
const NOTHING: &[u32] = &[];

fn stdout() -> Stdio {
    BufWriter::with_capacity(64 * 1024, io::stdout())
}

/// A live run as the command line asks for it, with the selection's kernel-side filter (the
/// selection is returned beside it), and the filter stored for a recording.
/// `code_paths`: the command shows the code path that opened a socket, so the kernel captures
/// user stacks at connect() and accept(), and owners are taken at accept() (a syscall
/// tracepoint, which taxes every syscall on the host) rather than at the socket's first read.
/// Other commands pay for neither: a stack walk is the dearest part of a connect's event.
/// `keep_caps`: the capabilities the run keeps once attached ([`NOTHING`] or
/// [`privileges::INSPECTS_OTHERS`]).
fn live_options(
    run: &RunArgs,
    filter: &FilterArgs,
    code_paths: bool,
    tracker: &TrackerArgs,
    keep_caps: &'static [u32],
) -> anyhow::Result<(Live, Selection)> {
    let selection = filter.selection()?;
    let live = Live {
        config: ProbeConfig {
            ring_bytes: run.ring_size,
            filter: selection.kernel(),
            capture_stacks: code_paths && ProbeConfig::stacks_from_env(),
            owners_at_accept: code_paths,
            max_sockets: u32::try_from(tracker.max_sockets).unwrap_or(u32::MAX),
            tracepoints: TracepointMode::from_env()?,
        },
        duration: run.duration,
        record: run.record_target(),
        filter: filter.to_args(),
        keep_caps: Some(keep_caps),
    };
    Ok((live, selection))
}

pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    // User stacks are symbolized from other processes' memory maps.
    let keep = if args.stacks {
        INSPECTS_OTHERS
    } else {
        NOTHING
    };
    let (live, selection) =
        live_options(&args.run, &args.filter, args.stacks, &args.tracker, keep)?;
    run::live(live, |h| {
        trace::output(&args.output, args.stacks, selection, h)
    })
    .await
}

pub async fn life(args: LifeArgs) -> anyhow::Result<()> {
    let (live, selection) = live_options(&args.run, &args.filter, false, &args.tracker, NOTHING)?;
    let max = args.tracker.max_sockets;
    run::live(live, |h| life::output(&args.output, selection, max, h)).await
}

/// `netwatch serve`: the metrics server runs beside the stream, on the same runtime, until the
/// stream stops.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (live, selection) = live_options(
        &args.run,
        &args.filter,
        false,
        &args.tracker,
        INSPECTS_OTHERS,
    )?;
    let web_file = match &args.web_config_file {
        Some(path) => web_config::WebConfigFile::open(path)?,
        None => web_config::WebConfigFile::fixed(web_config::WebConfig::default()),
    };
    let web = web_file.last_read().unwrap_or_default();
    let listener = if args.systemd_socket {
        let std = crate::host::systemd::listener()
            .context("--web.systemd-socket: taking the socket systemd passed")?;
        tokio::net::TcpListener::from_std(std).context("--web.systemd-socket")?
    } else {
        tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| args.listen.to_string(), |a| a.to_string());
    let scheme = if web.tls.is_some() { "https" } else { "http" };
    let auth = if web.requires_auth() {
        " (basic auth; /healthz open)"
    } else {
        ""
    };
    let exporter = Exporter::new();
    let server = tokio::spawn(http::serve(
        listener,
        exporter.routes(),
        http::Limits::default(),
        web_file,
    ));
    eprintln!("netwatch: serving {scheme}://{addr}/metrics and /healthz{auth}");
    let caps = metrics::LabelCaps {
        peer_labels: args.peer_labels,
        max_peers: args.max_peers,
        max_processes: args.max_processes,
        label_ttl: args.label_ttl,
    };
    let max = args.tracker.max_sockets;
    let result = run::live(live, |header| {
        Box::new(
            MetricsSink::new(exporter, caps, max, selection)
                .for_run(header.settings.clone(), header.started_ns),
        )
    })
    .await;
    server.abort();
    result
}

/// `netwatch top` (and plain `netwatch`): the live view.
pub async fn top(args: TopArgs) -> anyhow::Result<()> {
    let (live, selection) = live_options(
        &args.run,
        &args.filter,
        false,
        &args.tracker,
        INSPECTS_OTHERS,
    )?;
    run::live(live, |h| Box::new(TopSink::new(&args, selection, h))).await
}

fn leaks_style(args: &LeaksArgs) -> leaks::Style {
    leaks::Style {
        json: args.json,
        min_age: args.min_age,
        pids: args.pids.clone(),
        comm: args.comm.clone(),
    }
}

/// `netwatch leaks`: stuck sockets every interval, with the owners and code paths the stream
/// reveals.
pub async fn leaks(args: LeaksArgs) -> anyhow::Result<()> {
    let style = leaks_style(&args);
    let (live, _) = live_options(
        &args.run,
        &FilterArgs::default(),
        true,
        &args.tracker,
        INSPECTS_OTHERS,
    )?;
    run::live(live, |_| {
        Box::new(LeaksSink::new(
            stdout(),
            style,
            args.interval,
            args.tracker.max_sockets,
        ))
    })
    .await
}

/// `netwatch leaks --once`: what is stuck now, from the kernel's socket list alone.
pub fn leaks_once(args: &LeaksArgs) -> anyhow::Result<()> {
    if let Some(target) = args.run.record_target() {
        anyhow::bail!(
            "--once traces nothing, so there is nothing to record in {}; record a live run \
             (`netwatch leaks --record FILE`) and replay it with `netwatch analyze FILE --leaks`",
            target.path().display()
        );
    }
    broken_pipe_ok(leaks::once(&mut stdout(), &leaks_style(args)))
}

pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let (live, selection) = live_options(
        &args.run,
        &args.filter,
        false,
        &args.tracker,
        INSPECTS_OTHERS,
    )?;
    let max = args.tracker.max_sockets;
    run::live(live, |h| {
        report::output(&args.thresholds, selection, max, &args.output, h)
    })
    .await
}

/// `analyze IN --record OUT` must not truncate what it is about to read: OUT may not be IN
/// (the same file by another name too), nor a file in the directory IN.
fn refuse_to_overwrite_the_input(
    input: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.is_dir()))
    };
    // An input that cannot be read is for the replay to report.
    let Some((dev, ino, input_is_dir)) = id(input) else {
        return Ok(());
    };
    let same = |p: &std::path::Path| id(p).is_some_and(|(d, i, _)| (d, i) == (dev, ino));
    if same(out) {
        anyhow::bail!(
            "--record {}: it is the recording being replayed, which writing would destroy; \
             write to another file",
            out.display()
        );
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    if input_is_dir && same(parent.unwrap_or(std::path::Path::new("."))) {
        anyhow::bail!(
            "--record {}: it is inside the recording directory being replayed; write it \
             elsewhere",
            out.display()
        );
    }
    Ok(())
}

/// Replays a recording into the output the live run had (with `--record`, writes it again in
/// the current format); a damaged file still prints what was read, then fails naming the line
/// or byte offset.
pub fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    if let Some(out) = &args.record {
        refuse_to_overwrite_the_input(&args.file, out)?;
    }
    let replay = Replay::open(&args.file)?;
    if let Some(o) = &replay.origin {
        let unknown = || "an unknown host".to_string();
        eprintln!(
            "netwatch: a recording made on {}{} by netwatch {}",
            o.host.clone().unwrap_or_else(unknown),
            o.kernel
                .as_deref()
                .map(|k| format!(" (Linux {k})"))
                .unwrap_or_default(),
            o.netwatch
        );
    }
    if args.leaks {
        return analyze_leaks(args, replay);
    }
    let top = args.top;
    let recorded = &replay.header.filter;
    let selection = if args.filter.is_empty() && !recorded.is_empty() {
        eprintln!(
            "netwatch: applying the recording's filter ({}); give another filter to override it",
            recorded.join(" ")
        );
        FilterArgs::from_args(recorded)?.selection()?
    } else {
        args.filter.selection()?
    };
    let max = args.tracker.max_sockets;
    let target = args.record.clone().map(Target::File);
    if top {
        return analyze_top(args, replay, selection, target);
    }
    if args.metrics {
        return run::replay(replay, &args.file, target.as_ref(), |header| {
            Box::new(
                MetricsSink::replay(metrics::LabelCaps::default(), max, selection)
                    .for_run(header.settings.clone(), header.started_ns),
            )
        });
    }
    run::replay(replay, &args.file, target.as_ref(), |header| {
        if args.report {
            report::output(&args.thresholds, selection, max, &args.output, header)
        } else if args.life {
            life::output(&args.output, selection, max, header)
        } else {
            trace::output(&args.output, false, selection, header)
        }
    })
}

/// `analyze --top`: the plain-text summaries a `top --record` run printed, at its recorded
/// ticks.
fn analyze_top(
    args: AnalyzeArgs,
    replay: Replay,
    selection: Selection,
    target: Option<Target>,
) -> anyhow::Result<()> {
    let replayed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let top = TopArgs {
        thresholds: args.thresholds.clone(),
        tracker: args.tracker.clone(),
        ..TopArgs::default()
    };
    run::replay(replay, &args.file, target.as_ref(), |header| {
        Box::new(TopSink::replay(&top, selection, header, replayed.clone()))
    })?;
    if replayed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        anyhow::bail!(
            "{} holds no top ticks: only `netwatch top --record FILE` (or --record-dir), with \
             stdout not a terminal, records them; replay this recording without --top (or with \
             --life, --report)",
            args.file.display()
        );
    }
    Ok(())
}

/// `analyze --leaks`: the snapshots a `leaks --record` run took, printed again from the
/// recorded stream and the host side of each snapshot.
fn analyze_leaks(args: AnalyzeArgs, replay: Replay) -> anyhow::Result<()> {
    // `-p` and `--comm` select holders, as in `leaks`; the stream itself is never filtered
    // (the live run's was not: its tracker saw every socket).
    let holders = FilterArgs {
        pids: args.filter.pids.clone(),
        comm: args.filter.comm.clone(),
        ..FilterArgs::default()
    };
    if args.filter.to_args() != holders.to_args() {
        anyhow::bail!(
            "analyze --leaks selects holders with -p and --comm only, as `netwatch leaks` does; \
             drop the other filters"
        );
    }
    let replayed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let replaying = leaks::Replaying {
        min_age: args.min_age,
        pids: args.filter.pids.clone(),
        comm: args.filter.comm.clone(),
        replayed: replayed.clone(),
    };
    let (json, max) = (args.output.json, args.tracker.max_sockets);
    let target = args.record.clone().map(Target::File);
    run::replay(replay, &args.file, target.as_ref(), |_| {
        Box::new(LeaksSink::replay(stdout(), json, replaying, max))
    })?;
    if replayed.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        anyhow::bail!(
            "{} holds no leaks snapshots: only `netwatch leaks --record FILE` (or --record-dir) \
             records them; replay this recording without --leaks (or with --life, --report)",
            args.file.display()
        );
    }
    Ok(())
}

/// `netwatch help [TOPIC]`: a subcommand's help, or the filter grammar.
pub fn help(topic: Option<&str>) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    let mut cmd = crate::cli::Cli::command();
    // Gives every subcommand its full name (`netwatch life`) in its usage line.
    cmd.build();
    match topic {
        None => cmd.print_long_help()?,
        Some("filters" | "filter") => print!("{}", crate::model::filter::HELP),
        Some(name) => match cmd.find_subcommand_mut(name) {
            Some(sub) => sub.print_long_help()?,
            None => anyhow::bail!(
                "no help on `{name}`: try `netwatch help filters` or a subcommand (trace, life, report, top, serve, leaks, analyze, doctor, completions)"
            ),
        },
    }
    Ok(())
}

/// The man page, generated from the same definitions as `--help`.
pub fn manpage() -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    let cmd = crate::cli::Cli::command();
    let mut out = io::stdout().lock();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(out, ".SH \"NETWATCH {}\"", sub.get_name().to_uppercase())?;
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut out)?;
    }
    writeln!(out, ".SH FILTERS\n.nf")?;
    out.write_all(crate::model::filter::HELP.as_bytes())?;
    writeln!(out, ".fi")?;
    Ok(())
}

/// A shell completion script, generated from the same definitions as `--help`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut crate::cli::Cli::command(),
        "netwatch",
        &mut script,
    );
    io::stdout().write_all(&script)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::refuse_to_overwrite_the_input;
    use crate::host::scratch::Scratch;

    #[test]
    fn analyze_never_records_over_what_it_replays() {
        let scratch = Scratch::new("analyze-record-over-input");
        let (file, dir) = (scratch.path("in.nwr"), scratch.path("run"));
        std::fs::write(&file, b"x").unwrap();
        std::fs::create_dir(&dir).unwrap();
        let link = scratch.path("link.nwr");
        std::fs::hard_link(&file, &link).unwrap();

        let err = |i: &std::path::Path, o: &std::path::Path| {
            refuse_to_overwrite_the_input(i, o)
                .err()
                .map(|e| e.to_string())
        };
        assert!(err(&file, &file).unwrap().contains("being replayed"));
        assert!(
            err(&file, &link).unwrap().contains("being replayed"),
            "another name"
        );
        assert!(
            err(&dir, &dir.join("new.nwr"))
                .unwrap()
                .contains("inside the recording directory")
        );
        assert_eq!(err(&file, &scratch.path("out.nwr")), None);
        assert_eq!(err(&dir, &scratch.path("out.nwr")), None);
        assert_eq!(
            err(&scratch.path("missing"), &file),
            None,
            "the replay reports it"
        );
    }
}
