//! `wxlocal` — run wxshop on one machine: `demo`, `serve`, `sandbox`.
//!
//! Every command checks its whole command line before it does anything: `--help` anywhere
//! prints the usage, and an option the command does not take, a value missing, or a stray
//! word stops it (exit 2) naming what was wrong. An option that was silently ignored used to
//! start a server the user did not ask for — `serve --help` served (and made `.wxlocal/`), a
//! misspelt `--stroe memory` wrote to the default SQLite store.

use std::net::SocketAddr;
use std::process::ExitCode;
use wxlocal::gateway::Stopped;

const USAGE: &str = "\
wxlocal — the whole wxshop stack on one machine, with a faithful WeChat sandbox

USAGE:
    wxlocal demo [--fund-type 0|1]
        Walk a whole purchase (login, order, payment, notification, sync, shipping,
        after-sale, refund), printing each step; exit 0 only if every step checked out.
    wxlocal serve [--addr 127.0.0.1:8787] [--store sqlite:PATH|memory] [--seed] [--time-scale X]
        The gateway (/fn/*, /callbacks/*, /admin/*) plus the sandbox (/sandbox/*).
        Configuration: the same environment variables as Lambda (see README).
    wxlocal sandbox [--addr 127.0.0.1:8788]
        Only the WeChat sandbox.
    wxlocal --help
        This text (also `wxlocal COMMAND --help`).
";

/// The options of each command: name, and whether it takes a value.
const OPTIONS: &[(&str, &[(&str, bool)])] = &[
    ("demo", &[("--fund-type", true)]),
    (
        "serve",
        &[
            ("--addr", true),
            ("--store", true),
            ("--seed", false),
            ("--time-scale", true),
        ],
    ),
    ("sandbox", &[("--addr", true)]),
];

/// A command line that is not one `wxlocal` takes: the message says what was wrong.
struct UsageError(String);

/// What the command line asks for.
enum Invocation {
    Help,
    Run {
        command: &'static str,
        options: Vec<(&'static str, Option<String>)>,
    },
}

impl Invocation {
    fn value(options: &[(&'static str, Option<String>)], name: &str) -> Option<String> {
        options
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.clone())
    }
}

fn parse(args: &[String]) -> Result<Invocation, UsageError> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Invocation::Help);
    }
    let Some(first) = args.first() else {
        return Err(UsageError("no command given".into()));
    };
    if first == "help" {
        return Ok(Invocation::Help);
    }
    let Some(&(command, known)) = OPTIONS.iter().find(|(c, _)| c == first) else {
        return Err(UsageError(format!(
            "unknown command `{first}`; the commands are demo, serve and sandbox"
        )));
    };
    let takes = || {
        known
            .iter()
            .map(|(n, v)| {
                if *v {
                    format!("{n} VALUE")
                } else {
                    (*n).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut options: Vec<(&'static str, Option<String>)> = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let Some(&(name, with_value)) = known.iter().find(|(n, _)| *n == name) else {
            let what = if arg.starts_with('-') {
                "option"
            } else {
                "argument"
            };
            return Err(UsageError(format!(
                "unknown {what} `{arg}` for `wxlocal {command}`, which takes: {}",
                takes()
            )));
        };
        if options.iter().any(|(n, _)| *n == name) {
            return Err(UsageError(format!("{name} is given twice")));
        }
        let value = match (with_value, inline) {
            (true, Some(v)) => Some(v),
            (true, None) => match rest.next() {
                Some(v) if !v.starts_with("--") => Some(v.clone()),
                _ => return Err(UsageError(format!("{name} needs a value"))),
            },
            (false, Some(_)) => return Err(UsageError(format!("{name} takes no value"))),
            (false, None) => None,
        };
        options.push((name, value));
    }
    Ok(Invocation::Run { command, options })
}

fn parse_addr(s: Option<String>, default: &str) -> Result<SocketAddr, String> {
    let s = s.unwrap_or_else(|| default.to_owned());
    s.parse()
        .map_err(|_| format!("--addr `{s}` is not host:port, e.g. 127.0.0.1:8787"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, options) = match parse(&args) {
        Ok(Invocation::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Run { command, options }) => (command, options),
        Err(UsageError(why)) => {
            eprintln!("wxlocal: {why}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // The demo prints its own story; expected retries (e.g. a benign write race) would only be
    // noise there. `RUST_LOG` still wins.
    let level = std::env::var("RUST_LOG")
        .unwrap_or_else(|_| if command == "demo" { "error" } else { "warn" }.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .try_init();
    let value = |name| Invocation::value(&options, name);
    let result = match command {
        "demo" => {
            let fund_type = value("--fund-type").unwrap_or_else(|| "0".into());
            wxlocal::demo::run(&fund_type).await
        }
        "serve" => serve(&options).await,
        _ => sandbox(value("--addr")).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxlocal: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn sandbox(addr: Option<String>) -> Result<(), String> {
    let addr = parse_addr(addr, "127.0.0.1:8788")?;
    // Bound before the address is printed: the line names the port actually taken (with
    // `:0`, the one the OS chose), and nothing is printed when the address is not free.
    let running = wxlocal::sandbox::bind(addr, wxlocal::sandbox::SandboxConfig::default())
        .await
        .map_err(|e| wxlocal::gateway::cannot_listen(addr, &e))?;
    println!("wxlocal sandbox listening on {}", running.base_url());
    match running.handle.await {
        Ok(served) => served.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

async fn serve(options: &[(&'static str, Option<String>)]) -> Result<(), String> {
    let value = |name| Invocation::value(options, name);
    let addr = parse_addr(value("--addr"), "127.0.0.1:8787")?;
    let time_scale = match value("--time-scale") {
        None => 1.0,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v > 0.0)
            .ok_or("--time-scale must be a positive number")?,
    };
    // `--store memory` keeps nothing: its stop must not say the state is saved.
    let kept = if value("--store").as_deref() == Some("memory") {
        "forgotten (--store memory)"
    } else {
        "saved"
    };
    let opts = wxlocal::gateway::Options {
        addr,
        store: value("--store"),
        seed: options.iter().any(|(n, _)| *n == "--seed"),
        time_scale,
        ..Default::default()
    };
    let running = wxlocal::gateway::start(opts).await?;
    // First line of stdout: the address (tests and tools read it).
    println!("wxlocal listening on {}", running.base_url);
    let grace = std::time::Duration::from_secs(30);
    match running.serve_until(stop_asked, grace).await {
        Stopped::Ended => Err("the server stopped on its own (see the log above)".into()),
        Stopped::Drained => {
            eprintln!(
                "wxlocal: stopped; requests under way were answered and the sandbox's state \
                 is {kept}"
            );
            Ok(())
        }
        Stopped::Cut => Err(format!(
            "stopped with requests still under way (a second Ctrl-C, or over {} s): they end \
             as in a crash; a client's retry with the same idempotency key picks its order up \
             (after up to 30 s of REQUEST_IN_PROGRESS)",
            grace.as_secs()
        )),
    }
}

/// Set at the first stop signal (the second only cuts the wait short).
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Resolves at Ctrl-C (SIGINT) or SIGTERM; never, where neither can be listened for (then
/// the default applies: the process ends at once, as in a crash).
async fn stop_asked() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if !STOPPING.swap(true, std::sync::atomic::Ordering::SeqCst) {
                eprintln!(
                    "wxlocal: stopping: finishing the requests under way (Ctrl-C again stops \
                     at once)"
                );
            }
            return;
        }
    }
    std::future::pending::<()>().await
}
