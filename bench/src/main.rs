//! `wxshop-bench`: the benchmarks of issue 8 as one binary (release build). Every figure in
//! docs/PERFORMANCE.md comes from one of these subcommands, run as written there.
//!
//! ```text
//! wxshop-bench notify      [--secs S] [--rounds R]             verify+parse, notifications/s
//! wxshop-bench notify-iters --case C --iters N                   fixed work for callgrind
//! wxshop-bench paycallback --store sqlite|memory [--n N] [--concurrency N] [--logs] [--component off|always]
//! wxshop-bench coldstart   --bin PATH [--runs N] [--invocations N] [--store S]
//! wxshop-bench stack       [--purchases N] [--concurrency C] [--store S]
//! ```
//!
//! Output is JSON lines on stdout (one per measurement), so scripts/bench-peers.sh can put
//! ours and the peers' in one table. Nothing here is a test: no timing is ever asserted.

mod callback;
mod coldstart;
mod notify;
mod sqlite_floor;
mod stack;
mod stats;

use std::process::ExitCode;

/// `--name value` from the arguments, else `default`.
pub(crate) fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

pub(crate) fn flag(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

pub(crate) fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("usage: wxshop-bench notify|notify-iters|paycallback|coldstart|stack [options] (see src/main.rs)");
        return ExitCode::from(2);
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "notify" => notify::run(rest),
        "notify-iters" => notify::run_iters(rest),
        "paycallback" => callback::run(rest),
        "sqlite-floor" => sqlite_floor::run(rest),
        "coldstart" => coldstart::run(rest),
        "stack" => stack::run(rest),
        other => Err(format!("unknown subcommand `{other}`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxshop-bench {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}
