//! The subcommands: one output pipeline ([`Output`]) fed either live from the kernel or from a
//! recording, so that `analyze` prints exactly what the live run printed.
pub mod doctor;
pub mod http;
pub mod leaks;
pub mod life;
pub mod metrics;
pub mod report;
pub mod top;

use std::io::{self, BufWriter, Stdout, Write};

use anyhow::Context as _;

use crate::{
    cli::ServeArgs,
    cli::{
        AnalyzeArgs, LeaksArgs, LifeArgs, OutputArgs, ReportArgs, RunArgs, ThresholdArgs, TraceArgs,
    },
    commands::leaks::LeaksSink,
    commands::life::LifeSink,
    commands::metrics::{Exporter, MetricsSink},
    commands::report::ReportSink,
    commands::top::{TopArgs, TopSink},
    host::clock::{WallClock, monotonic_ns},
    host::netstat,
    host::stacks::Stacks,
    kernel::probe::{self, Probe, ProbeConfig},
    model::analysis::{HostSettings, Thresholds},
    model::event::Event,
    model::selection::Selection,
    pipeline::record::{self, Header, Item, Recorder, Replay, Summary},
    pipeline::sink::{JsonSink, Sink, TextSink, TimeStyle},
    pipeline::stream,
};

type Stdio = BufWriter<Stdout>;

fn stdout() -> Stdio {
    BufWriter::with_capacity(64 * 1024, io::stdout())
}

/// Passes on only the events the selection keeps.
struct Filtered<S> {
    selection: Selection,
    inner: S,
}

impl<S: Sink> Sink for Filtered<S> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if self.selection.event(ev) {
            self.inner.event(ev)
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What a run prints.
enum Output {
    /// `trace`; with `--stacks`, `stacks` symbolizes the code path of accept and connect events
    /// (set once the probe is loaded).
    Trace {
        sink: Box<dyn Sink>,
        want_stacks: bool,
        stacks: Option<Box<Stacks>>,
    },
    Life(Box<LifeSink<Stdio>>),
    Report {
        sink: Box<ReportSink>,
        output: OutputArgs,
    },
    /// `serve`: metrics, read by the HTTP tasks; prints nothing.
    Serve(Box<MetricsSink>),
    /// `top`: the live view.
    Top(Box<TopSink>),
    /// `leaks`: stuck sockets, their owners and code paths.
    Leaks(Box<LeaksSink<Stdio>>),
}

impl Output {
    fn trace(o: &OutputArgs, stacks: bool, selection: Selection, header: &Header) -> Self {
        let clock = WallClock::from_offset(header.wall_offset_ns);
        let sink: Box<dyn Sink> = if o.json {
            Box::new(JsonSink::new(stdout(), clock))
        } else {
            let time = if o.timestamp {
                TimeStyle::Wall
            } else {
                TimeStyle::Relative {
                    start_ns: header.started_ns,
                }
            };
            Box::new(TextSink::new(stdout(), clock, time, o.wide))
        };
        Output::Trace {
            sink: if selection.is_empty() {
                sink
            } else {
                Box::new(Filtered {
                    selection,
                    inner: sink,
                })
            },
            want_stacks: o.json && stacks,
            stacks: None,
        }
    }

    fn life(o: &OutputArgs, selection: Selection, max_sockets: usize) -> Self {
        Output::Life(Box::new(LifeSink::new(
            stdout(),
            o.json,
            o.wide,
            max_sockets,
            selection,
        )))
    }

    fn report(
        t: &ThresholdArgs,
        selection: Selection,
        max_sockets: usize,
        output: &OutputArgs,
        header: &Header,
    ) -> Self {
        let thresholds = Thresholds {
            close_wait_age_ms: t.close_wait_age.as_secs_f64() * 1000.0,
            close_wait_alarm: t.close_wait_alarm,
            time_wait_alarm: t.time_wait_alarm,
        };
        Output::Report {
            sink: Box::new(ReportSink::new(
                header.settings.clone(),
                thresholds,
                max_sockets,
                selection,
            )),
            output: output.clone(),
        }
    }

    /// The stream stopped: a live view gives the terminal back before the summary line.
    fn stopped(&mut self, stop: stream::StopReason) {
        if let Output::Top(s) = self {
            s.stopped(stop);
        }
    }

    /// Prints what is printed at the end of a run.
    fn finish(self, header: &Header, summary: &Summary) -> io::Result<()> {
        match self {
            Output::Trace { mut sink, .. } => sink.flush(),
            Output::Life(mut s) => s.finish(),
            Output::Serve(_) => Ok(()),
            Output::Top(s) => s.finish(header, summary),
            Output::Leaks(s) => s.finish(),
            Output::Report { mut sink, output } => {
                let listen = summary.listen_overflows.zip(summary.listen_drops);
                let r = sink.report(summary.stopped_ns, header.started_ns, summary.lost, listen);
                let mut out = stdout();
                if output.json {
                    serde_json::to_writer_pretty(&mut out, &r)?;
                    out.write_all(b"\n")?;
                } else {
                    let clock = WallClock::from_offset(header.wall_offset_ns);
                    let style = report::Style {
                        wide: output.wide,
                        span: output.timestamp.then(|| {
                            (
                                clock.rfc3339(header.started_ns),
                                clock.rfc3339(summary.stopped_ns),
                            )
                        }),
                    };
                    out.write_all(report::render(&r, &style).as_bytes())?;
                }
                out.flush()
            }
        }
    }
}

impl Sink for Output {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        match self {
            Output::Trace {
                sink,
                stacks: Some(stacks),
                ..
            } => match (ev.pid, ev.stack_id) {
                (Some(pid), Some(id)) if ev.opens_socket() => {
                    let mut ev = ev.clone();
                    ev.stack = stacks.frames(pid, id, ev.sp_word).to_vec();
                    sink.event(&ev)
                }
                _ => sink.event(ev),
            },
            Output::Trace { sink, .. } => sink.event(ev),
            Output::Life(s) => s.event(ev),
            Output::Report { sink, .. } => sink.event(ev),
            Output::Serve(sink) => sink.event(ev),
            Output::Top(sink) => sink.event(ev),
            Output::Leaks(sink) => sink.event(ev),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Trace { sink, .. } => sink.flush(),
            Output::Life(s) => s.flush(),
            Output::Report { sink, .. } => sink.flush(),
            Output::Serve(sink) => sink.flush(),
            Output::Top(sink) => sink.flush(),
            Output::Leaks(sink) => sink.flush(),
        }
    }
}

fn broken_pipe_ok(r: io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing output"),
    }
}

/// Attaches, streams into `make(header)` until stopped, then prints the summary and the
/// output's ending; with `--record`, writes the recording alongside.
async fn live(
    run: &RunArgs,
    selection: &Selection,
    make: impl FnOnce(&Header) -> Output,
) -> anyhow::Result<()> {
    let config = ProbeConfig {
        ring_bytes: run.ring_size,
        filter: selection.kernel(),
        capture_stacks: ProbeConfig::stacks_from_env(),
    };
    let mut probe = Probe::attach(&config)?;
    for w in &probe.warnings {
        log::warn!("{w}");
    }
    let header = Header {
        netwatch_record: record::FORMAT_VERSION,
        started_ns: monotonic_ns(),
        wall_offset_ns: WallClock::now().offset_ns(),
        settings: HostSettings::read(),
    };
    let listen_before = netstat::listen_counters();
    let mut output = make(&header);
    if let Output::Serve(sink) = &mut output {
        sink.set_kernel_stats(probe.stats_reader()?);
    }
    if let Output::Top(sink) = &mut output {
        sink.set_kernel_stats(probe.stats_reader()?);
    }
    if let Output::Trace {
        want_stacks: true,
        stacks,
        ..
    } = &mut output
    {
        *stacks = Some(Box::new(Stacks::new(probe.stack_map()?)));
    }
    if let Output::Leaks(sink) = &mut output
        && config.capture_stacks
    {
        sink.set_stacks(Stacks::new(probe.stack_map()?));
    }
    eprintln!(
        "netwatch: tracing TCP events ({} of {} tracepoints attached); Ctrl-C to stop",
        probe.attached(),
        probe::tracepoint_count()
    );
    let (output, summary) = match &run.record {
        Some(path) => {
            let mut rec = Recorder::create(path, &header, output)
                .with_context(|| format!("creating the recording {}", path.display()))?;
            let (stats, stop) = stream::run(&mut probe, &mut rec, run.duration).await?;
            rec.inner_mut().stopped(stop);
            let summary = summarize(stats.kernel.lost, listen_before);
            eprintln!("{}", stats.line());
            let output = rec
                .finish(summary.clone())
                .with_context(|| format!("finishing the recording {}", path.display()))?;
            (output, summary)
        }
        None => {
            let mut output = output;
            let (stats, stop) = stream::run(&mut probe, &mut output, run.duration).await?;
            output.stopped(stop);
            eprintln!("{}", stats.line());
            (output, summarize(stats.kernel.lost, listen_before))
        }
    };
    drop(probe);
    broken_pipe_ok(output.finish(&header, &summary))
}

fn summarize(lost: u64, listen_before: Option<(u64, u64)>) -> Summary {
    let listen = listen_before
        .zip(netstat::listen_counters())
        .map(|(b, a)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1)));
    Summary {
        stopped_ns: monotonic_ns(),
        lost,
        listen_overflows: listen.map(|l| l.0),
        listen_drops: listen.map(|l| l.1),
    }
}

pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let selection = Selection::from_args(&args.filter)?;
    let o = args.output;
    let stacks = args.stacks;
    live(&args.run, &selection.clone(), |h| {
        Output::trace(&o, stacks, selection, h)
    })
    .await
}

pub async fn life(args: LifeArgs) -> anyhow::Result<()> {
    let selection = Selection::from_args(&args.filter)?;
    let o = args.output;
    let max = args.tracker.max_sockets;
    live(&args.run, &selection.clone(), |_| {
        Output::life(&o, selection, max)
    })
    .await
}

/// `netwatch serve`: the metrics server runs beside the stream, on the same runtime, until the
/// stream stops.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let selection = Selection::from_args(&args.filter)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    let exporter = Exporter::new();
    let server = tokio::spawn(http::serve(
        listener,
        exporter.routes(),
        http::Limits::default(),
    ));
    eprintln!("netwatch: serving http://{addr}/metrics and /healthz");
    let caps = metrics::LabelCaps {
        peer_labels: args.peer_labels,
        max_peers: args.max_peers,
        max_processes: args.max_processes,
    };
    let max = args.tracker.max_sockets;
    let result = live(&args.run, &selection.clone(), |_| {
        Output::Serve(Box::new(MetricsSink::new(exporter, caps, max, selection)))
    })
    .await;
    server.abort();
    result
}

/// `netwatch top` (and plain `netwatch`): the live view.
pub async fn top(args: TopArgs) -> anyhow::Result<()> {
    let selection = Selection::from_args(&args.filter)?;
    live(&args.run, &selection.clone(), |h| {
        Output::Top(Box::new(TopSink::new(&args, selection, h)))
    })
    .await
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
    live(&args.run, &Selection::default(), |_| {
        Output::Leaks(Box::new(LeaksSink::new(
            stdout(),
            style,
            args.interval,
            args.tracker.max_sockets,
        )))
    })
    .await
}

/// `netwatch leaks --once`: what is stuck now, from the kernel's socket list alone.
pub fn leaks_once(args: &LeaksArgs) -> anyhow::Result<()> {
    broken_pipe_ok(leaks::once(&mut stdout(), &leaks_style(args)))
}

pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let selection = Selection::from_args(&args.filter)?;
    let t = args.thresholds;
    let max = args.tracker.max_sockets;
    let o = args.output;
    live(&args.run, &selection.clone(), |h| {
        Output::report(&t, selection, max, &o, h)
    })
    .await
}

/// Replays a recording into the output the live run had; a damaged file still prints what was
/// read, then fails naming the line.
pub fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    let selection = Selection::from_args(&args.filter)?;
    let mut replay = Replay::open(&args.file)?;
    let header = replay.header.clone();
    let max = args.tracker.max_sockets;
    let mut output = if args.report {
        Output::report(&args.thresholds, selection, max, &args.output, &header)
    } else if args.life {
        Output::life(&args.output, selection, max)
    } else {
        Output::trace(&args.output, false, selection, &header)
    };
    let mut events = 0u64;
    let mut last_ns = header.started_ns;
    let outcome = loop {
        match replay.next_item() {
            Ok(Item::Event(ev)) => {
                events += 1;
                last_ns = last_ns.max(ev.ts_ns);
                if let Err(e) = output.event(&ev) {
                    return broken_pipe_ok(Err(e));
                }
            }
            Ok(Item::End(summary)) => break Ok(summary),
            Err(e) => break Err(e),
        }
    };
    match outcome {
        Ok(summary) => {
            broken_pipe_ok(output.finish(&header, &summary))?;
            eprintln!(
                "netwatch: replayed {events} events from {} ({} were lost in the live run)",
                args.file.display(),
                summary.lost
            );
            Ok(())
        }
        Err(e) => {
            // What was read is still worth printing; the stop time is the last event's.
            let partial = Summary {
                stopped_ns: last_ns,
                ..Summary::default()
            };
            broken_pipe_ok(output.finish(&header, &partial))?;
            Err(e).with_context(|| format!("replayed {events} events before the error"))
        }
    }
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
