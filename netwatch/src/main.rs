//! netwatch: an eBPF tracer of TCP connections. See the README for what it shows and how.
mod cli;
mod commands;
mod host;
mod kernel;
mod model;
mod pipeline;

use std::{io::Write as _, process::ExitCode};

use clap::Parser as _;

use crate::cli::{Cli, Command};

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
    // No subcommand: the live view (a plain-text summary per interval without a terminal),
    // with whatever of top's flags were given.
    let command = cli.command.unwrap_or(Command::Top(cli.top));
    let result = match command {
        // Offline: no runtime, no privileges.
        Command::Analyze(args) => commands::analyze(args),
        Command::Help { topic } => commands::help(topic.as_deref()),
        Command::Completions { shell } => commands::completions(shell),
        Command::Manpage => commands::manpage(),
        // A dump of what exists: no runtime, no BPF.
        Command::Leaks(a) if a.once => commands::leaks_once(&a),
        // Loads programs but attaches nothing: no runtime. Exit 1 when netwatch cannot run here.
        Command::Doctor(a) => match commands::doctor::run(&a) {
            Ok(false) => return ExitCode::FAILURE,
            done => done.map(drop),
        },
        live => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(async {
                match live {
                    Command::Trace(a) => commands::trace(a).await,
                    Command::Life(a) => commands::life(a).await,
                    Command::Report(a) => commands::report(a).await,
                    Command::Top(a) => commands::top(a).await,
                    Command::Serve(a) => commands::serve(a).await,
                    Command::Leaks(a) => commands::leaks(a).await,
                    Command::Analyze(_)
                    | Command::Doctor(_)
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
