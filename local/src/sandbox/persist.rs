//! The sandbox's memory on disk, for stacks whose store outlives the process.
//!
//! Why: WeChat does not forget. `wxlocal serve` keeps our side in a SQLite file
//! (`sqlite:.wxlocal/wxshop.db` by default) that survives a restart; if the sandbox started
//! empty again, the store would refer to products, prepay ids, component orders, refunds and
//! after-sales WeChat no longer knew — seeding failed with "product not exist", every order
//! of the seeded product was refused. So a sandbox opened with a state file
//! ([`super::Sandbox::with_state_file`]) keeps what WeChat would keep there, next to the
//! store, and reads it back at start.
//!
//! What is kept: the sequence that makes ids, WeChat Pay orders and refunds, tokens and
//! logins, the trading component (products, audits, orders, after-sales, account), the
//! funds, and how far `/_control/clock` has moved the sandbox's clock — everything above is
//! stamped in that time, so a sandbox that forgot the move would find its own refunds,
//! tokens and orders in the future. A file without the offset (an older wxlocal's) reads
//! as 0, the time it was made in. What is not: the test knobs (faults, refund outcomes, notification options), the
//! call and delivery logs, and notifications still in their retry schedule (the app's own
//! queries and schedule reconcile those, as they would after a long outage).
//!
//! When: every change marks the state; one writer task saves a snapshot (JSON, written to a
//! temporary file, flushed to disk and renamed over the old one, so a crash leaves the old or
//! the new file, never half of one) and says which change it covered. Every answer the
//! sandbox gives, and every notification it sends, waits until the changes made before it are
//! on disk ([`Persist::saved`]): whatever the app learnt from the sandbox, and so may have
//! written to its store, the sandbox still knows after a crash, as WeChat would. Changes that
//! come in while a snapshot is written share the next one, so a busy sandbox writes about as
//! often as one snapshot takes, not once per call.

use super::{funds, mch, platform, shop, State};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::{watch, Notify};

/// Bumped when the layout changes incompatibly; a file of another format is refused with a
/// message that says what to do, never half read.
pub const FORMAT: u32 = 1;

/// The kept part of [`State`] and the clock's offset, borrowed for writing.
#[derive(Serialize)]
struct DurableRef<'a> {
    format: u32,
    clock_offset_ms: i64,
    seq: u64,
    pay: &'a mch::PayState,
    platform: &'a platform::PlatformState,
    shop: &'a shop::ShopState,
    funds: &'a funds::FundsState,
}

/// The kept part of [`State`] and the clock's offset, as read back.
#[derive(Deserialize)]
struct Durable {
    format: u32,
    /// Absent from files written before it was kept: their sandbox ran unmoved (or its move
    /// is lost), and 0 is what such a file always meant.
    #[serde(default)]
    clock_offset_ms: i64,
    seq: u64,
    pay: mch::PayState,
    platform: platform::PlatformState,
    shop: shop::ShopState,
    funds: funds::FundsState,
}

/// What a state file holds: the state, and how far the sandbox's clock was moved
/// ([`wxshop::time::Clock::offset_ms`]).
pub(crate) struct Kept {
    pub(crate) state: State,
    pub(crate) clock_offset_ms: i64,
}

/// The snapshot of `st`, with the clock moved by `clock_offset_ms`, as written to the file.
pub(crate) fn snapshot(st: &State, clock_offset_ms: i64) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&DurableRef {
        format: FORMAT,
        clock_offset_ms,
        seq: st.seq,
        pay: &st.pay,
        platform: &st.platform,
        shop: &st.shop,
        funds: &st.funds,
    })
}

/// Reads the state file at `path`: `Ok(None)` when there is none yet.
pub(crate) fn load(path: &Path) -> Result<Option<Kept>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    restore(&bytes).map(Some).map_err(|why| {
        format!(
            "{} is not a sandbox state wxlocal can read ({why})",
            path.display()
        )
    })
}

fn restore(bytes: &[u8]) -> Result<Kept, String> {
    // The format first, so a file of another version says so instead of "missing field".
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if head.format != FORMAT {
        return Err(format!(
            "format {}, this wxlocal reads format {FORMAT}",
            head.format
        ));
    }
    let d: Durable = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    debug_assert_eq!(d.format, FORMAT);
    Ok(Kept {
        state: State {
            seq: d.seq,
            pay: d.pay,
            platform: d.platform,
            shop: d.shop,
            funds: d.funds,
            ..State::default()
        },
        clock_offset_ms: d.clock_offset_ms,
    })
}

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it (owner-only:
/// tokens and order details), flushed, renamed over `path`, then the directory flushed so the
/// rename itself survives a power cut (the store is `synchronous=FULL`; the sandbox must not
/// be less durable than what it is compared with).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The bookkeeping between changes and snapshots.
pub(crate) struct Persist {
    pub(crate) path: PathBuf,
    /// Counts changes (bumped under the state lock, so a snapshot taken under the lock covers
    /// exactly the changes counted when it was taken).
    changed: AtomicU64,
    /// The last change on disk.
    saved: watch::Sender<u64>,
    wake: Notify,
    /// The bytes last written: a change that leaves the kept part as it was (a call logged)
    /// costs a serialisation, not a write.
    last: Mutex<Vec<u8>>,
}

impl Persist {
    pub(crate) fn new(path: PathBuf, written: Vec<u8>) -> Persist {
        Persist {
            path,
            changed: AtomicU64::new(0),
            saved: watch::Sender::new(0),
            wake: Notify::new(),
            last: Mutex::new(written),
        }
    }

    /// A change was made (called with the state lock held).
    pub(crate) fn touch(&self) {
        self.changed.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Returns once every change made before the call is on disk.
    pub(crate) async fn saved(&self) {
        let want = self.changed.load(Ordering::SeqCst);
        let mut rx = self.saved.subscribe();
        // Only fails once the sender is gone, and it lives as long as `self`.
        let _ = rx.wait_for(|s| *s >= want).await;
    }

    /// Takes a snapshot of `st` and the clock's offset (the state lock held): the change it
    /// covers and its bytes, or `None` when the kept part is what was last written.
    pub(crate) fn take(&self, st: &State, clock_offset_ms: i64) -> (u64, Option<Vec<u8>>) {
        let covers = self.changed.load(Ordering::SeqCst);
        let bytes = match snapshot(st, clock_offset_ms) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "sandbox: cannot serialise the state");
                return (covers, None);
            }
        };
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        (covers, (*last != bytes).then_some(bytes))
    }

    /// Writes a snapshot [`Persist::take`] returned and records the change it covers as saved
    /// (also when the write failed, which is logged: the sandbox goes on answering rather than
    /// hanging every caller on a full disk).
    pub(crate) fn write(&self, covers: u64, bytes: Option<Vec<u8>>) {
        if let Some(bytes) = bytes {
            match write_atomic(&self.path, &bytes) {
                Ok(()) => *self.last.lock().unwrap_or_else(|p| p.into_inner()) = bytes,
                Err(e) => tracing::error!(
                    file = %self.path.display(), error = %e,
                    "sandbox: cannot save the state; after a restart the sandbox will not know what it did since"
                ),
            }
        }
        self.saved.send_if_modified(|s| {
            let newer = covers > *s;
            if newer {
                *s = covers;
            }
            newer
        });
    }

    /// The sandbox is gone: wakes the writer so it ends.
    pub(crate) fn close(&self) {
        self.wake.notify_one();
    }

    /// Whether changes are waiting for a snapshot.
    pub(crate) fn behind(&self) -> bool {
        self.changed.load(Ordering::SeqCst) > *self.saved.borrow()
    }

    /// Waits for the next change.
    pub(crate) async fn next_change(&self) {
        if !self.behind() {
            self.wake.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock's move is read back; a file written before it was kept (no
    /// `clock_offset_ms`) still reads, as an unmoved clock.
    #[test]
    fn the_clock_offset_is_kept_and_older_files_read_as_unmoved() {
        let st = State {
            seq: 7,
            ..State::default()
        };
        let bytes = snapshot(&st, 86_400_000).unwrap();
        let kept = restore(&bytes).unwrap();
        assert_eq!(kept.clock_offset_ms, 86_400_000);
        assert_eq!(kept.state.seq, 7);

        let mut older: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        older.as_object_mut().unwrap().remove("clock_offset_ms");
        let kept = restore(&serde_json::to_vec(&older).unwrap()).unwrap();
        assert_eq!(kept.clock_offset_ms, 0);
        assert_eq!(kept.state.seq, 7);
    }
}
