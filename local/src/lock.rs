//! One `wxlocal serve` per SQLite store.
//!
//! Why: the WeChat sandbox's state beside the store (`<store>-sandbox.json` and its journal)
//! is written by the process that runs it. Two `serve`s on one store would each overwrite the other's
//! sandbox state — the products, prepay ids, orders and refunds the other's requests put in
//! the shared store — and after a restart the store and the sandbox would no longer belong
//! together, with nothing to say why. So `serve` takes an OS advisory lock (`flock`, through
//! `File::try_lock`) on `<store>-wxlocal.lock` before it opens either file, and a second
//! `serve` refuses to start, naming the process that holds it.
//!
//! The OS drops the lock when its holder exits, however it exits (`kill -9`, a panic, a power
//! cut): a lock file left behind never blocks a start. Its content (the holder's pid and
//! address) is only there for the message; the file is not deleted on exit, because deleting
//! a lock file another process may just have opened would let two hold "the" lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Appended to a SQLite store's path to name its lock file (removed by the same
/// `rm wxshop.db*` as the store's other files).
pub const LOCK_SUFFIX: &str = "-wxlocal.lock";

/// The lock file of the SQLite store at `store`.
pub fn lock_path(store: &str) -> PathBuf {
    PathBuf::from(format!("{store}{LOCK_SUFFIX}"))
}

/// Held while a `serve` runs on a store; released when dropped or when the process ends.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Locks the store at `store` (a SQLite path) for this process, which serves at
    /// `base_url`. `Err` says which process holds it and what to do.
    pub fn acquire(store: &str, base_url: &str) -> Result<Option<StoreLock>, String> {
        let path = lock_path(store);
        // Not truncated on open: until we hold the lock, its content is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(in_use(store, &path, &mut file)),
            Err(TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                tracing::warn!(
                    file = %path.display(),
                    "this file system cannot lock files: nothing stops a second wxlocal on this \
                     store from overwriting the sandbox's state"
                );
                return Ok(None);
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
        let holder = format!("pid {} serving {base_url}\n", std::process::id());
        // Best effort: the content only feeds another process's message.
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(holder.as_bytes()));
        if let Err(e) = written {
            tracing::debug!(file = %path.display(), error = %e, "cannot record the lock's holder");
        }
        Ok(Some(StoreLock { _file: file }))
    }
}

/// The refusal [`StoreLock::acquire`] would give, when another process holds the lock of the
/// store at `store`; `None` when nobody does (or it cannot tell). Takes nothing: a lock it
/// gets is let go at once, and the file's content is left as it was.
pub fn held_by_another(store: &str) -> Option<String> {
    let path = lock_path(store);
    let mut file = OpenOptions::new().read(true).open(&path).ok()?;
    match file.try_lock() {
        Err(TryLockError::WouldBlock) => Some(in_use(store, &path, &mut file)),
        _ => None,
    }
}

/// The refusal of a second `serve`: who holds the store, and what to do.
fn in_use(store: &str, path: &Path, file: &mut File) -> String {
    let mut holder = String::new();
    let _ = file.read_to_string(&mut holder);
    let holder = holder.trim();
    let pid = holder
        .strip_prefix("pid ")
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()));
    let who = if holder.is_empty() {
        "another process".to_owned()
    } else {
        format!("another wxlocal ({holder})")
    };
    let stop = match pid {
        Some(pid) => format!("Stop it first (kill {pid})"),
        None => "Stop it first".to_owned(),
    };
    format!(
        "the store {store} is in use: {who} holds its lock {}. Two wxlocal on one store would \
         overwrite each other's WeChat sandbox state ({store}{}). {stop}, or run this one on \
         its own store (--store sqlite:OTHER.db, or --store memory)",
        path.display(),
        crate::gateway::SANDBOX_STATE_SUFFIX
    )
}
