//! `wxlocal` — run wxshop on one machine: `demo`, `serve`, `sandbox`.

use std::net::SocketAddr;
use std::process::ExitCode;

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
";

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn parse_addr(s: Option<String>, default: &str) -> Result<SocketAddr, String> {
    let s = s.unwrap_or_else(|| default.to_owned());
    s.parse()
        .map_err(|_| format!("--addr `{s}` is not host:port, e.g. 127.0.0.1:8787"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The demo prints its own story; expected retries (e.g. a benign write race) would only be
    // noise there. `RUST_LOG` still wins.
    let quiet = args.first().map(String::as_str) == Some("demo");
    let level =
        std::env::var("RUST_LOG").unwrap_or_else(|_| if quiet { "error" } else { "warn" }.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .try_init();
    let result = match args.first().map(String::as_str) {
        Some("demo") => {
            let fund_type = flag(&args, "--fund-type").unwrap_or_else(|| "0".into());
            wxlocal::demo::run(&fund_type).await
        }
        Some("serve") => serve(&args).await,
        Some("sandbox") => match parse_addr(flag(&args, "--addr"), "127.0.0.1:8788") {
            Ok(addr) => {
                println!("wxlocal sandbox listening on http://{addr}");
                wxlocal::sandbox::serve(addr, wxlocal::sandbox::SandboxConfig::default())
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        },
        Some("-h") | Some("--help") | Some("help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wxlocal: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &[String]) -> Result<(), String> {
    let addr = parse_addr(flag(args, "--addr"), "127.0.0.1:8787")?;
    let time_scale = match flag(args, "--time-scale") {
        None => 1.0,
        Some(s) => s
            .parse::<f64>()
            .ok()
            .filter(|v| *v > 0.0)
            .ok_or("--time-scale must be a positive number")?,
    };
    let opts = wxlocal::gateway::Options {
        addr,
        store: flag(args, "--store"),
        seed: args.iter().any(|a| a == "--seed"),
        time_scale,
        ..Default::default()
    };
    let running = wxlocal::gateway::start(opts).await?;
    // First line of stdout: the address (tests and tools read it).
    println!("wxlocal listening on {}", running.base_url);
    running.wait().await;
    Ok(())
}
