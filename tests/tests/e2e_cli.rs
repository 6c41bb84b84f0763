#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
//! The `wxlocal` command line as a newcomer meets it: `--help` after a command, a misspelt
//! option, an option without its value, an address already taken, a store path that cannot
//! be made. Each must stop at once with a message that says what was wrong and what to do —
//! never start a server the user did not ask for, never write a store in the current
//! directory on the way, never print an address it is not listening on.

#[path = "reliability_support.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::{run_to_end, temp_dir, wxlocal_bin, Ran};

/// Runs `wxlocal args` in `cwd` until it exits; one still running after `limit` (it started
/// something instead of stopping) is killed and reported as a failure.
fn run_in(cwd: &Path, args: &[&str], limit: Duration) -> Ran {
    let mut cmd = Command::new(wxlocal_bin());
    cmd.args(args).current_dir(cwd).env_remove("STORE");
    let ran = run_to_end(cmd, limit);
    assert!(
        ran.stopped,
        "wxlocal {args:?} was still running after {limit:?} instead of stopping; stdout: {} \
         stderr: {}",
        ran.stdout, ran.stderr
    );
    ran
}

/// Nothing was written where the command ran (the default store is `.wxlocal/`).
fn nothing_written(cwd: &Path, args: &[&str]) {
    let left: Vec<_> = std::fs::read_dir(cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "wxlocal {args:?} wrote {left:?}");
}

#[test]
fn help_after_a_command_prints_the_usage_and_starts_nothing() {
    for args in [
        &["--help"][..],
        &["serve", "--addr", "127.0.0.1:0", "--help"],
        &["serve", "-h"],
        &["sandbox", "--addr", "127.0.0.1:0", "--help"],
        &["demo", "--help"],
    ] {
        let cwd = temp_dir("cli-help");
        let ran = run_in(&cwd, args, Duration::from_secs(15));
        assert_eq!(ran.code, Some(0), "wxlocal {args:?}: {}", ran.stderr);
        assert!(
            ran.stdout.contains("USAGE:") && ran.stdout.contains("wxlocal serve"),
            "wxlocal {args:?} printed: {}",
            ran.stdout
        );
        assert!(
            !ran.stdout.contains("listening"),
            "wxlocal {args:?} started serving: {}",
            ran.stdout
        );
        nothing_written(&cwd, args);
        let _ = std::fs::remove_dir_all(&cwd);
    }
}

#[test]
fn a_command_line_wxlocal_does_not_take_stops_it_saying_what_was_wrong() {
    for (args, needles) in [
        // Misspelt: would otherwise serve on the default SQLite store, not in memory.
        (
            &["serve", "--addr", "127.0.0.1:0", "--stroe", "memory"][..],
            &["unknown option `--stroe`", "--store"][..],
        ),
        (
            &[
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--store",
                "memory",
                "8080",
            ],
            &["unknown argument `8080`", "--addr"],
        ),
        (
            &[
                "serve",
                "--store",
                "memory",
                "--addr",
                "127.0.0.1:0",
                "--seed=yes",
            ],
            &["--seed takes no value"],
        ),
        (&["demo", "--fund-type"], &["--fund-type needs a value"]),
        (
            &["sandbox", "--addr", "127.0.0.1:0", "--seed"],
            &["unknown option `--seed`", "wxlocal sandbox"],
        ),
        (&["srve"], &["unknown command `srve`", "serve"]),
        (&[], &["no command given"]),
    ] {
        let cwd = temp_dir("cli-usage");
        let ran = run_in(&cwd, args, Duration::from_secs(15));
        assert_eq!(ran.code, Some(2), "wxlocal {args:?}: {}", ran.stderr);
        for needle in needles.iter().chain(&["USAGE:"]) {
            assert!(
                ran.stderr.contains(needle),
                "wxlocal {args:?} says {needle:?}: {}",
                ran.stderr
            );
        }
        assert!(
            ran.stdout.is_empty(),
            "wxlocal {args:?} printed: {}",
            ran.stdout
        );
        nothing_written(&cwd, args);
        let _ = std::fs::remove_dir_all(&cwd);
    }
}

/// A child `wxlocal args` (stderr to `log`) and the first line it printed.
fn first_line(bin: &Path, args: &[&str], log: &Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("wxlocal runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for _ in lines {}
    });
    let Ok(first) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!(
            "wxlocal {args:?} printed nothing; stderr: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    (child, first)
}

#[tokio::test]
async fn the_sandbox_alone_prints_the_address_it_took() {
    let bin = wxlocal_bin();
    let cwd = temp_dir("cli-sandbox");
    let log = cwd.join("stderr.log");
    let (mut child, first) = first_line(&bin, &["sandbox", "--addr", "127.0.0.1:0"], &log);
    let base = first
        .strip_prefix("wxlocal sandbox listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let answered = reqwest::Client::new()
        .post(format!("{base}/_control/login"))
        .json(&serde_json::json!({ "user": "ada" }))
        .send()
        .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !base.ends_with(":0/sandbox"),
        "printed the port asked for, not the one taken: {base}"
    );
    let answered = answered.unwrap();
    assert_eq!(answered.status(), 200, "{base}");
    let _ = std::fs::remove_dir_all(&cwd);
}

#[test]
fn an_address_already_taken_is_named_with_what_to_do() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for args in [
        &["sandbox", "--addr", addr.as_str()][..],
        &["serve", "--addr", addr.as_str(), "--store", "memory"],
    ] {
        let cwd = temp_dir("cli-taken");
        let ran = run_in(&cwd, args, Duration::from_secs(30));
        assert_eq!(ran.code, Some(1), "wxlocal {args:?}: {}", ran.stderr);
        assert!(
            ran.stdout.is_empty(),
            "wxlocal {args:?} claims to listen: {}",
            ran.stdout
        );
        for needle in [addr.as_str(), "already", "--addr 127.0.0.1:0"] {
            assert!(
                ran.stderr.contains(needle),
                "wxlocal {args:?} says {needle:?}: {}",
                ran.stderr
            );
        }
        let _ = std::fs::remove_dir_all(&cwd);
    }
}

#[test]
fn a_store_path_that_cannot_be_made_is_named_with_what_to_do() {
    let cwd = temp_dir("cli-store");
    // A file where the store's directory should be.
    std::fs::write(cwd.join("not-a-dir"), "").unwrap();
    let store = format!(
        "sqlite:{}",
        cwd.join("not-a-dir").join("wxshop.db").display()
    );
    let args = ["serve", "--addr", "127.0.0.1:0", "--store", &store];
    let ran = run_in(&cwd, &args, Duration::from_secs(30));
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(ran.stdout.is_empty(), "claims to listen: {}", ran.stdout);
    for needle in [store.as_str(), "--store memory", "directory"] {
        assert!(
            ran.stderr.contains(needle),
            "the refusal says {needle:?}: {}",
            ran.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&cwd);
}
