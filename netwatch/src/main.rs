//! netwatch: an eBPF tracer of TCP connections. See the README for what it shows and how.
mod cli;
mod clock;
mod event;
mod layout;
mod privileges;
mod probe;
mod sink;
mod stream;
mod tracefs;

use std::{
    io::{self, BufWriter, Write as _},
    process::ExitCode,
};

use clap::Parser as _;

use crate::{
    cli::{Cli, Command, TraceArgs},
    clock::{WallClock, monotonic_ns},
    probe::{Probe, ProbeConfig},
    sink::{JsonSink, Sink, TextSink, TimeStyle},
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format(|buf, record| {
            writeln!(
                buf,
                "netwatch: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Trace(TraceArgs::default()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("netwatch: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Trace(args) => trace(args).await,
    }
}

async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let config = ProbeConfig {
        ring_bytes: args.run.ring_size,
    };
    let mut probe = Probe::attach(&config)?;
    for w in &probe.warnings {
        log::warn!("{w}");
    }
    eprintln!(
        "netwatch: tracing TCP events ({} of {} tracepoints attached); Ctrl-C to stop",
        probe.attached(),
        probe::program_names().count()
    );
    let clock = WallClock::now();
    let out = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if args.json {
        Box::new(JsonSink::new(out, clock))
    } else {
        let time = if args.timestamp {
            TimeStyle::Wall
        } else {
            TimeStyle::Relative {
                start_ns: monotonic_ns(),
            }
        };
        Box::new(TextSink::new(out, clock, time, args.wide))
    };
    let (summary, _stop) = stream::run(&mut probe, sink.as_mut(), args.run.duration).await?;
    eprintln!("{}", summary.line());
    Ok(())
}
