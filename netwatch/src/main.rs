//! netwatch: an eBPF tracer of TCP connections. See the README for what it shows and how.
mod analysis;
mod btf;
mod cli;
mod clock;
mod commands;
mod event;
mod filter;
mod layout;
mod life;
mod netstat;
mod offsets;
mod privileges;
mod probe;
mod record;
mod report;
mod selection;
mod sink;
mod stream;
mod tracefs;
mod tracker;

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;

use crate::cli::{Cli, Command, TraceArgs};

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
    let result = match command {
        // Offline: no runtime, no privileges.
        Command::Analyze(args) => commands::analyze(args),
        Command::Help { topic } => commands::help(topic.as_deref()),
        Command::Completions { shell } => commands::completions(shell),
        Command::Manpage => commands::manpage(),
        live => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async {
                match live {
                    Command::Trace(a) => commands::trace(a).await,
                    Command::Life(a) => commands::life(a).await,
                    Command::Report(a) => commands::report(a).await,
                    Command::Analyze(_)
                    | Command::Help { .. }
                    | Command::Completions { .. }
                    | Command::Manpage => unreachable!("handled above"),
                }
            }),
            Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `netwatch ... | head`: the reader left; nothing is wrong.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netwatch: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
