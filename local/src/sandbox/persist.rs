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
//! as 0, the time it was made in. What is not: the test knobs (faults, refund outcomes,
//! notification options), the call and delivery logs, and notifications still in their retry
//! schedule (the app's own queries and schedule reconcile those, as they would after a long
//! outage).
//!
//! How: two files. `<store>-sandbox.json` is a full snapshot (JSON, written to a temporary
//! file, flushed and renamed over the old one, so a crash leaves the old or the new file,
//! never half of one). `<store>-sandbox.journal` beside it holds what changed since, one line
//! per batch: the changed entries of the kept maps with their new value or their removal, the
//! new entries of the funds' flows, and the small parts that do not grow with orders (the
//! sequence, the clock's offset, the current tokens, account, flags, balances, bank), written
//! whole. Which maps say what changed: [`super::kept`]. Writing the whole state for every
//! change made each purchase cost the size of everything the sandbox ever remembered (and
//! held the state lock while serialising it): a dev store got 13× slower after a few thousand
//! orders. Now a change costs what changed.
//!
//! When: every change is counted; one writer task takes a batch under the state lock
//! (serialising only the changed entries), then appends it to the journal and flushes it
//! (`fdatasync`), and says which change it covered. Every answer the sandbox gives, and every
//! notification it sends, waits until the changes made before it are on disk
//! ([`Persist::saved`]): whatever the app learnt from the sandbox, and so may have written to
//! its store, the sandbox still knows after a crash, as WeChat would. Changes that come in
//! while a batch is written share the next one (group commit). A batch that changed nothing
//! kept (a call logged) writes nothing.
//!
//! Compaction: once the journal is larger than both 1 MiB and the snapshot, the next batch is
//! still a line, and with it the kept maps are cloned (under the state lock: one consistent
//! state, as of that line; a clone costs far less than serialising, and copies only the
//! trees and keys: each value is shared behind an `Arc` and copied only if changed while the
//! compaction still holds it, [`super::kept`]). A thread of its own
//! serialises the copy and writes it as a new snapshot, then replaces the journal by the
//! lines appended meanwhile ([`compact`]): answers, and the lines that acknowledge them, go on
//! during the write (they used to wait for the whole state to be serialised and written). It
//! comes once per journal's worth of changes, so on average a change still costs what
//! changed. The batch after `/_control/reset` (the state replaced wholesale) is a full
//! snapshot written in line, and the journal is emptied after it; a compaction under way then
//! finds a newer snapshot and drops its own. A compaction that
//! fails (a full disk) leaves the journal whole and is tried again only once the journal has
//! grown by as much again: each try copies the kept maps under the state lock, and a failing
//! one used to be tried, copying everything, at every batch. Each snapshot records the last
//! journal batch it holds; lines are numbered.
//!
//! A failed write (a full disk): the journal lacks that batch (and may end in part of its
//! line), so only a full snapshot, written in line, saves again. The sandbox does not hang
//! its callers meanwhile: the failed batch, and every change until the snapshot is written,
//! is acknowledged without being on disk — the one exception to "on disk before it answers",
//! logged as an error at each failure; a crash before the snapshot loses those changes. The
//! snapshot is tried a second after the failure ([`SNAPSHOT_RETRY_FIRST`]; the writer wakes
//! for it even if nothing changes), then after twice as long after each failure again, up to
//! half a minute ([`SNAPSHOT_RETRY_MAX`]); sooner once the changes since the failure would
//! have made another threshold's worth of journal (measured, not written), as a failing
//! compaction waits; and at once when the sandbox stops (`serve`'s Ctrl-C, the sandbox
//! dropped: [`Persist::retry_now`]) or is reset. Each try serialises the whole state under
//! the state lock: a disk that stayed full used to make every batch try one (and fail
//! again), so that each change cost the size of everything; and a quiet sandbox used to try
//! only after a threshold's worth of changes, so what it did before going quiet stayed
//! unsaved for as long as it stayed quiet. The try that succeeds (the disk has room again)
//! holds every change, and lines follow it as before.
//!
//! Reading back: the snapshot, then the journal's lines numbered after it, in order; at start
//! the result is written as a new snapshot with an empty journal. Crash cases: cut short while
//! appending, the journal ends in an unfinished line, never acknowledged: ignored. Between a
//! new snapshot and emptying (or, after a compaction, replacing) the journal: its lines are
//! numbered at or below the snapshot's batch and skipped, never replayed over newer values. A complete line that does not read,
//! or a numbering gap (a journal beside another snapshot), stops the start with a message
//! naming both files; so does a snapshot of an unknown format. A journal without a snapshot
//! belongs to nothing and is started afresh. Format-1 files (a snapshot, no journal) read.

use super::kept::{Kept, KeptLog};
use super::{funds, mch, platform, shop, State};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::ops::DerefMut;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Bumped when the layout changes incompatibly; a file of another format is refused with a
/// message that says what to do, never half read. 2: the snapshot has a journal beside it
/// (an older wxlocal must refuse it rather than read the snapshot without the journal).
pub const FORMAT: u32 = 2;

/// Format 1 (a whole snapshot, no journal) still reads.
const READS: [u32; 2] = [1, FORMAT];

/// The journal is folded into a new snapshot once it is larger than this and than the
/// snapshot: replaying it stays cheaper than reading the snapshot twice, and each full write
/// is paid for by as many bytes of journal, so a change costs what changed, on average.
const COMPACT_AT: u64 = 1 << 20;

/// After a failed write, the full snapshot that saves again is tried this long after the
/// failure at the latest, then after twice as long after each failure again, up to
/// [`SNAPSHOT_RETRY_MAX`]: a quiet sandbox saves soon after the disk has room again, and one
/// whose disk stays full serialises its whole state at most every half minute.
const SNAPSHOT_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
const SNAPSHOT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// The journal beside the snapshot at `path` (`wxshop.db-sandbox.json` →
/// `wxshop.db-sandbox.journal`, removed by the same `rm wxshop.db*`).
pub(crate) fn journal_path(path: &Path) -> PathBuf {
    match path.extension() {
        Some(e) if e == "json" => path.with_extension("journal"),
        _ => {
            let mut p = path.as_os_str().to_owned();
            p.push(".journal");
            PathBuf::from(p)
        }
    }
}

/// The kept part of [`State`] and the clock's offset, borrowed for writing.
#[derive(Serialize)]
struct DurableRef<'a> {
    format: u32,
    /// The last journal batch the snapshot holds: only later lines are replayed over it.
    batch: u64,
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
    /// Absent from format 1, which had no journal.
    #[serde(default)]
    batch: u64,
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

/// What a state file holds: the state, how far the sandbox's clock was moved
/// ([`wxshop::time::Clock::offset_ms`]), and the last journal batch in it.
pub(crate) struct Loaded {
    pub(crate) state: State,
    pub(crate) clock_offset_ms: i64,
    pub(crate) batch: u64,
}

/// The full snapshot of `st` as written to the file, holding journal batches up to `batch`.
pub(crate) fn snapshot(
    st: &State,
    clock_offset_ms: i64,
    batch: u64,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&DurableRef {
        format: FORMAT,
        batch,
        clock_offset_ms,
        seq: st.seq,
        pay: &st.pay,
        platform: &st.platform,
        shop: &st.shop,
        funds: &st.funds,
    })
}

/// The kept part of the state, copied under the state lock for a compaction: cloning the maps
/// is much cheaper than serialising them, which, like the write, happens after the lock. The
/// kept maps' values are shared with the state, not copied ([`Kept`]).
struct Copied {
    clock_offset_ms: i64,
    seq: u64,
    pay: mch::PayState,
    platform: platform::PlatformState,
    shop: shop::ShopState,
    funds: funds::FundsState,
}

impl Copied {
    fn of(st: &State, clock_offset_ms: i64) -> Copied {
        Copied {
            clock_offset_ms,
            seq: st.seq,
            pay: st.pay.clone(),
            platform: st.platform.clone(),
            shop: st.shop.clone(),
            funds: st.funds.clone(),
        }
    }

    fn snapshot(&self, batch: u64) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&DurableRef {
            format: FORMAT,
            batch,
            clock_offset_ms: self.clock_offset_ms,
            seq: self.seq,
            pay: &self.pay,
            platform: &self.platform,
            shop: &self.shop,
            funds: &self.funds,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// What a journal line holds

/// The small parts of the kept state, written whole with every journal line. Nothing here
/// grows with orders: what does is a [`Kept`] map or a [`KeptLog`] ([`visit_kept`]).
#[derive(Serialize)]
struct ScalarsRef<'a> {
    clock_offset_ms: i64,
    seq: u64,
    classic_token: &'a Option<String>,
    stable_token: &'a Option<String>,
    registered: bool,
    finished: &'a BTreeSet<i64>,
    account: &'a Map<String, Value>,
    categories: &'a BTreeSet<i64>,
    uploads: u64,
    flags: &'a BTreeSet<String>,
    available: i64,
    pending: i64,
    bank: &'a Option<Value>,
}

#[derive(Deserialize)]
struct Scalars {
    clock_offset_ms: i64,
    seq: u64,
    classic_token: Option<String>,
    stable_token: Option<String>,
    registered: bool,
    finished: BTreeSet<i64>,
    account: Map<String, Value>,
    categories: BTreeSet<i64>,
    uploads: u64,
    flags: BTreeSet<String>,
    available: i64,
    pending: i64,
    bank: Option<Value>,
}

// Both directions name every field of the kept structs: a field added there and forgotten
// here does not compile, instead of being silently lost at the next restart.

fn scalars_of(st: &State, clock_offset_ms: i64) -> ScalarsRef<'_> {
    let platform::PlatformState {
        tokens: _,
        classic,
        stable,
        codes: _,
        issued: _,
        // Changes only with a reset, whose batch is a full snapshot.
        key: _,
        // Not kept.
        next_prune_ms: _,
    } = &st.platform;
    let shop::ShopState {
        registered,
        finished,
        scenes: _,
        account,
        products: _,
        orders: _,
        order_ids: _,
        aftersales: _,
        audits: _,
        brands: _,
        categories,
        uploads,
        flags,
        failing_refunds: _,
        slow_refunds: _,
        expiring: _,
    } = &st.shop;
    let funds::FundsState {
        available,
        pending,
        flows: _,
        bank,
        bank_changes: _,
        withdraws: _,
        qrcodes: _,
        settled: _,
        flow_faults: _,
        qr_expiring: _,
    } = &st.funds;
    ScalarsRef {
        clock_offset_ms,
        seq: st.seq,
        classic_token: classic,
        stable_token: stable,
        registered: *registered,
        finished,
        account,
        categories,
        uploads: *uploads,
        flags,
        available: *available,
        pending: *pending,
        bank,
    }
}

/// Sets the small parts from a journal line; returns the clock's offset.
fn set_scalars(st: &mut State, s: Scalars) -> i64 {
    st.seq = s.seq;
    let p = &mut st.platform;
    p.classic = s.classic_token;
    p.stable = s.stable_token;
    let sh = &mut st.shop;
    sh.registered = s.registered;
    sh.finished = s.finished;
    sh.account = s.account;
    sh.categories = s.categories;
    sh.uploads = s.uploads;
    sh.flags = s.flags;
    let f = &mut st.funds;
    f.available = s.available;
    f.pending = s.pending;
    f.bank = s.bank;
    s.clock_offset_ms
}

/// Something done with each kept map and log, by its name in the journal.
trait Visit {
    fn map<K, V>(&mut self, name: &'static str, m: &mut Kept<K, V>)
    where
        K: Ord + Clone + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned;
    fn log<T: Serialize + DeserializeOwned>(&mut self, name: &'static str, l: &mut KeptLog<T>);
}

fn visit_kept(st: &mut State, v: &mut impl Visit) {
    let mch::PayState {
        orders,
        refunds,
        by_txn,
        prepay_ids,
        // Not kept.
        next_prune_ms: _,
        refund_outcomes: _,
        garbled_bill_lines: _,
        bill_failures: _,
    } = &mut st.pay;
    v.map("pay.orders", orders);
    v.map("pay.refunds", refunds);
    v.map("pay.by_txn", by_txn);
    v.map("pay.prepay_ids", prepay_ids);
    let platform::PlatformState {
        tokens,
        classic: _,
        stable: _,
        codes,
        issued,
        key: _,
        next_prune_ms: _,
    } = &mut st.platform;
    v.map("platform.tokens", tokens);
    v.map("platform.codes", codes);
    v.map("platform.issued", issued);
    let shop::ShopState {
        registered: _,
        finished: _,
        scenes,
        account: _,
        products,
        orders,
        order_ids,
        aftersales,
        audits,
        brands,
        categories: _,
        uploads: _,
        flags: _,
        failing_refunds: _,
        slow_refunds: _,
        // Not kept: rebuilt from the orders at start.
        expiring: _,
    } = &mut st.shop;
    v.map("shop.scenes", scenes);
    v.map("shop.products", products);
    v.map("shop.orders", orders);
    v.map("shop.order_ids", order_ids);
    v.map("shop.aftersales", aftersales);
    v.map("shop.audits", audits);
    v.map("shop.brands", brands);
    let funds::FundsState {
        available: _,
        pending: _,
        flows,
        bank: _,
        bank_changes,
        withdraws,
        qrcodes,
        settled,
        // Not kept.
        flow_faults: _,
        // Not kept: rebuilt from the QR codes at start.
        qr_expiring: _,
    } = &mut st.funds;
    v.log("funds.flows", flows);
    v.map("funds.bank_changes", bank_changes);
    v.map("funds.withdraws", withdraws);
    v.map("funds.qrcodes", qrcodes);
    v.map("funds.settled", settled);
}

/// A map's changes in a journal line: entries with their new value, and keys removed.
#[derive(Serialize)]
struct MapChangesRef<'a, K, V> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    set: Vec<(&'a K, &'a V)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gone: Vec<K>,
}

#[derive(Deserialize)]
struct MapChanges<K, V> {
    #[serde(default = "Vec::new")]
    set: Vec<(K, V)>,
    #[serde(default = "Vec::new")]
    gone: Vec<K>,
}

/// A log's new entries in a journal line, and where they start.
#[derive(Serialize)]
struct LogChangesRef<'a, T> {
    from: usize,
    add: &'a [T],
}

#[derive(Deserialize)]
struct LogChanges<T> {
    from: usize,
    add: Vec<T>,
}

/// Writes the changes of every kept map and log as `"name":{…}` pairs, and forgets them.
#[derive(Default)]
struct Collect {
    out: Vec<u8>,
    any: bool,
    error: Option<serde_json::Error>,
}

impl Collect {
    fn entry(&mut self, name: &str, changes: &impl Serialize) {
        if self.any {
            self.out.push(b',');
        }
        self.any = true;
        let r = serde_json::to_writer(&mut self.out, name).and_then(|()| {
            self.out.push(b':');
            serde_json::to_writer(&mut self.out, changes)
        });
        if let Err(e) = r {
            self.error.get_or_insert(e);
        }
    }
}

impl Visit for Collect {
    fn map<K, V>(&mut self, name: &'static str, m: &mut Kept<K, V>)
    where
        K: Ord + Clone + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        if m.is_changed() {
            let (set, gone) = m.take_changes();
            self.entry(name, &MapChangesRef { set, gone });
        }
    }
    fn log<T: Serialize + DeserializeOwned>(&mut self, name: &'static str, l: &mut KeptLog<T>) {
        if l.is_changed() {
            let (from, add) = l.take_new();
            self.entry(name, &LogChangesRef { from, add });
        }
    }
}

/// Forgets every change: a full snapshot holds them.
struct MarkSaved;

impl Visit for MarkSaved {
    fn map<K, V>(&mut self, _: &'static str, m: &mut Kept<K, V>)
    where
        K: Ord + Clone + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        m.mark_saved();
    }
    fn log<T: Serialize + DeserializeOwned>(&mut self, _: &'static str, l: &mut KeptLog<T>) {
        l.mark_saved();
    }
}

/// Applies one journal line's changes, taking each from `kept` by name.
struct Apply {
    kept: Map<String, Value>,
    error: Option<String>,
}

impl Visit for Apply {
    fn map<K, V>(&mut self, name: &'static str, m: &mut Kept<K, V>)
    where
        K: Ord + Clone + Serialize + DeserializeOwned,
        V: Serialize + DeserializeOwned,
    {
        if let Some(v) = self.kept.remove(name) {
            match serde_json::from_value::<MapChanges<K, V>>(v) {
                Ok(c) => m.apply(c.set, c.gone),
                Err(e) => {
                    self.error.get_or_insert(format!("{name}: {e}"));
                }
            }
        }
    }
    fn log<T: Serialize + DeserializeOwned>(&mut self, name: &'static str, l: &mut KeptLog<T>) {
        if let Some(v) = self.kept.remove(name) {
            let r = serde_json::from_value::<LogChanges<T>>(v)
                .map_err(|e| e.to_string())
                .and_then(|c| l.apply(c.from, c.add));
            if let Err(e) = r {
                self.error.get_or_insert(format!("{name}: {e}"));
            }
        }
    }
}

/// One journal line as read back.
#[derive(Deserialize)]
struct Line {
    batch: u64,
    scalars: Scalars,
    #[serde(default)]
    kept: Map<String, Value>,
}

#[derive(Deserialize)]
struct LineHead {
    batch: u64,
}

// ---------------------------------------------------------------------------------------------
// Reading back

/// Reads the state file at `path` and replays its journal: `Ok(None)` when there is no state
/// file yet (a journal without its snapshot belongs to nothing and is started afresh).
pub(crate) fn load(path: &Path) -> Result<Option<Loaded>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut kept = restore(&bytes).map_err(|why| {
        format!(
            "{} is not a sandbox state wxlocal can read ({why})",
            path.display()
        )
    })?;
    let journal = journal_path(path);
    let lines = match std::fs::read(&journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", journal.display())),
    };
    replay(&mut kept, &lines).map_err(|why| {
        format!(
            "{} cannot be replayed over {} ({why}); moving the journal away starts from the \
             snapshot alone, without the changes made since it, which the store may refer to",
            journal.display(),
            path.display()
        )
    })?;
    Ok(Some(kept))
}

fn restore(bytes: &[u8]) -> Result<Loaded, String> {
    // The format first, so a file of another version says so instead of "missing field".
    #[derive(Deserialize)]
    struct Head {
        format: u32,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !READS.contains(&head.format) {
        return Err(format!(
            "format {}, this wxlocal reads formats 1 to {FORMAT}: it was written by a newer \
             wxlocal, which can still read it",
            head.format
        ));
    }
    let d: Durable = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(Loaded {
        state: State {
            seq: d.seq,
            pay: d.pay,
            platform: d.platform,
            shop: d.shop,
            funds: d.funds,
            ..State::default()
        },
        clock_offset_ms: d.clock_offset_ms,
        batch: d.batch,
    })
}

/// Replays the journal's lines newer than the snapshot in `kept`, in order. Lines the
/// snapshot already holds (left by a crash between a new snapshot and emptying the journal)
/// are skipped; what follows the last newline is a line whose append never finished, so
/// never acknowledged, and is ignored; any other line that does not read is an error.
fn replay(kept: &mut Loaded, journal: &[u8]) -> Result<(), String> {
    let complete = match journal.iter().rposition(|&b| b == b'\n') {
        Some(end) => &journal[..=end],
        None => &[][..],
    };
    if complete.len() < journal.len() {
        tracing::warn!(
            bytes = journal.len() - complete.len(),
            "sandbox: ignoring the unfinished last line of the journal (an append cut short; \
             it was never acknowledged)"
        );
    }
    for (i, text) in complete.split_inclusive(|&b| b == b'\n').enumerate() {
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let n = i + 1;
        let head: LineHead =
            serde_json::from_slice(text).map_err(|e| format!("line {n} does not read: {e}"))?;
        if head.batch <= kept.batch {
            continue;
        }
        if head.batch != kept.batch + 1 {
            return Err(format!(
                "line {n} is batch {}, but the state read so far ends at batch {}: the journal \
                 belongs to another snapshot",
                head.batch, kept.batch
            ));
        }
        let line: Line =
            serde_json::from_slice(text).map_err(|e| format!("line {n} does not read: {e}"))?;
        let mut apply = Apply {
            kept: line.kept,
            error: None,
        };
        visit_kept(&mut kept.state, &mut apply);
        if let Some(e) = apply.error {
            return Err(format!("line {n}: {e}"));
        }
        if let Some(name) = apply.kept.keys().next() {
            return Err(format!(
                "line {n} changes {name}, which this wxlocal does not keep"
            ));
        }
        kept.clock_offset_ms = set_scalars(&mut kept.state, line.scalars);
        kept.batch = line.batch;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing

fn owner_only(opts: &mut std::fs::OpenOptions) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = opts;
}

/// Flushes the directory holding `path`, so a rename or a new file there survives a power cut.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably: a temporary file beside it (owner-only:
/// tokens and order details), flushed, renamed over `path`, then the directory flushed so the
/// rename itself survives a power cut (the store is `synchronous=FULL`; the sandbox must not
/// be less durable than what it is compared with).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = beside(path, ".tmp");
    drop(write_synced(&tmp, bytes)?);
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// `path` with `suffix` appended to its name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Writes `bytes` to a new file at `path` (owner-only) and flushes it; the file stays open
/// for appending.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    owner_only(&mut opts);
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(f)
}

/// Opens the journal at `path` for appending, emptied (owner-only), durably.
fn open_journal(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true).create(true);
    owner_only(&mut opts);
    let f = opts.open(path)?;
    f.set_len(0)?;
    f.sync_all()?;
    sync_dir(path)?;
    Ok(f)
}

/// The files and what is in them; held while a batch is taken and written, so batches reach
/// the journal in the order they were taken.
struct Io {
    journal: File,
    journal_len: u64,
    snapshot_len: u64,
    /// The journal is compacted once larger than this and the snapshot ([`COMPACT_AT`]).
    compact_at: u64,
    /// The last batch written (a journal line or a snapshot).
    batch: u64,
    /// The small parts as last written: a batch that changed nothing else and not these (a
    /// call logged) writes nothing.
    scalars: Vec<u8>,
    /// A write failed (logged): the journal may end in a partial line and lacks what that
    /// batch held, so what is saved next is a full snapshot, tried once `unwritten` reaches
    /// `snapshot_retry_at` ([`Io::fail`]).
    broken: bool,
    /// While `broken`: the changes taken since the last failed write, in bytes of the journal
    /// lines they would have made. Not written; the full snapshot that ends `broken` holds them.
    unwritten: u64,
    /// While `broken`: no full snapshot is tried before `unwritten` reaches this, or
    /// `snapshot_retry_due` passes.
    snapshot_retry_at: u64,
    /// While `broken`: when the full snapshot is tried even if nothing else is due; the
    /// writer wakes for it ([`Persist::next_change`]).
    snapshot_retry_due: Option<std::time::Instant>,
    /// The wait before `snapshot_retry_due`, doubled by each failure in a row up to
    /// [`SNAPSHOT_RETRY_MAX`].
    retry_wait: std::time::Duration,
    /// The first wait after a write fails ([`SNAPSHOT_RETRY_FIRST`]; tests shorten or
    /// lengthen it, as `compact_at`).
    retry_first: std::time::Duration,
    /// The batch the snapshot on disk holds.
    snapshot_batch: u64,
    /// A compaction is being written ([`compact`]): no second one starts.
    compacting: bool,
    /// After a compaction failed: no other is tried before the journal is this long (0: no
    /// failure since the last snapshot).
    compact_retry_at: u64,
}

/// The files and their bookkeeping, shared with a compaction's thread.
struct Files {
    path: PathBuf,
    journal_path: PathBuf,
    io: Mutex<Io>,
    /// Called by a compaction before it writes its snapshot, with the files' lock (not held).
    #[cfg(test)]
    before_compaction_write: Mutex<Option<CompactionHook>>,
}

#[cfg(test)]
type CompactionHook = Arc<dyn Fn(&Mutex<Io>) + Send + Sync>;

impl Files {
    fn io(&self) -> std::sync::MutexGuard<'_, Io> {
        self.io.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One batch, taken under the state lock and written after it.
enum Batch {
    Nothing,
    /// A journal line; with `fold`, the state as of this line, to be compacted into a new
    /// snapshot once the line is on disk.
    Line {
        line: Vec<u8>,
        scalars: Vec<u8>,
        fold: Option<Box<Copied>>,
    },
    Full {
        bytes: Vec<u8>,
        scalars: Vec<u8>,
    },
}

/// The bookkeeping between changes and the files.
pub(crate) struct Persist {
    pub(crate) path: PathBuf,
    files: Arc<Files>,
    /// Counts changes (bumped under the state lock, so a batch taken under the lock covers
    /// exactly the changes counted when it was taken).
    changed: AtomicU64,
    /// The last change on disk.
    saved: watch::Sender<u64>,
    wake: Notify,
    /// The state was replaced wholesale (`/_control/reset`): its maps do not know what was
    /// removed, so the next batch is a full snapshot.
    replaced: AtomicBool,
    /// The compaction being written, if any.
    compaction: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// After a failed write: the next batch tries the full snapshot now, without waiting for
    /// its back-off ([`Persist::retry_now`]).
    retry: AtomicBool,
}

impl Persist {
    /// Starts keeping `st` at `path`: writes its full snapshot (holding journal batches up to
    /// `batch`) and an empty journal. From now on both files exist beside the store; a journal
    /// line left unfinished by a crash is gone, so new lines never follow it.
    pub(crate) fn create(
        path: &Path,
        st: &mut State,
        clock_offset_ms: i64,
        batch: u64,
    ) -> Result<Persist, String> {
        visit_kept(st, &mut MarkSaved);
        let bytes = snapshot(st, clock_offset_ms, batch).map_err(|e| e.to_string())?;
        let scalars =
            serde_json::to_vec(&scalars_of(st, clock_offset_ms)).map_err(|e| e.to_string())?;
        write_atomic(path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let journal_path = journal_path(path);
        let journal = open_journal(&journal_path)
            .map_err(|e| format!("cannot write {}: {e}", journal_path.display()))?;
        Ok(Persist {
            path: path.to_owned(),
            files: Arc::new(Files {
                path: path.to_owned(),
                journal_path,
                io: Mutex::new(Io {
                    journal,
                    journal_len: 0,
                    snapshot_len: bytes.len() as u64,
                    compact_at: COMPACT_AT,
                    batch,
                    scalars,
                    broken: false,
                    unwritten: 0,
                    snapshot_retry_at: 0,
                    snapshot_retry_due: None,
                    retry_wait: SNAPSHOT_RETRY_FIRST,
                    retry_first: SNAPSHOT_RETRY_FIRST,
                    snapshot_batch: batch,
                    compacting: false,
                    compact_retry_at: 0,
                }),
                #[cfg(test)]
                before_compaction_write: Mutex::new(None),
            }),
            changed: AtomicU64::new(0),
            saved: watch::Sender::new(0),
            wake: Notify::new(),
            replaced: AtomicBool::new(false),
            compaction: Mutex::new(None),
            retry: AtomicBool::new(false),
        })
    }

    /// A change was made (called with the state lock held).
    pub(crate) fn touch(&self) {
        self.changed.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// The state is being replaced wholesale (called with the state lock held, before the
    /// change is counted).
    pub(crate) fn replace_all(&self) {
        self.replaced.store(true, Ordering::SeqCst);
    }

    /// After a failed write, makes the next batch try the full snapshot at once instead of
    /// waiting for its back-off, and wakes the writer (the sandbox is stopping, or
    /// [`super::Sandbox::flush`]). Returns whether a write had failed; without one, nothing to
    /// do.
    pub(crate) fn retry_now(&self) -> bool {
        if !self.files.io().broken {
            return false;
        }
        self.retry.store(true, Ordering::SeqCst);
        self.touch();
        true
    }

    /// Returns once every change made before the call is on disk.
    pub(crate) async fn saved(&self) {
        let want = self.changed.load(Ordering::SeqCst);
        let mut rx = self.saved.subscribe();
        // Only fails once the sender is gone, and it lives as long as `self`.
        let _ = rx.wait_for(|s| *s >= want).await;
    }

    /// Saves every change counted so far: `lock` locks the state and reads the clock's offset
    /// (`None`: the sandbox is gone). The state lock is held only while the changed entries
    /// are serialised (and, when a compaction is due, the kept maps cloned); the write and its
    /// flush happen after it, the files' lock still held. A compaction's snapshot is written
    /// by a thread of its own, without either lock ([`compact`]).
    /// A failed write is logged and still counted as saved: the sandbox goes on answering
    /// rather than hanging every caller on a full disk. What changes meanwhile is counted as
    /// saved too, not written: everything is written as one full snapshot once the changes
    /// since the failure would have made another threshold's worth of journal (as a failed
    /// compaction waits), or at once with [`Persist::retry_now`].
    pub(crate) fn save<G: DerefMut<Target = State>>(
        &self,
        lock: impl FnOnce() -> Option<(G, i64)>,
    ) {
        let files = &*self.files;
        let mut io = files.io();
        let Some((mut st, clock_offset_ms)) = lock() else {
            return;
        };
        let covers = self.changed.load(Ordering::SeqCst);
        let batch = self.take(&mut io, &mut st, clock_offset_ms);
        drop(st);
        self.write(&mut io, batch);
        drop(io);
        self.saved.send_if_modified(|s| {
            let newer = covers > *s;
            if newer {
                *s = covers;
            }
            newer
        });
    }

    /// The next batch (the state lock held): the changed entries as a journal line, or the
    /// whole state when a snapshot is due. After a failed write, the changes are only
    /// measured until the full snapshot's retry is due ([`Io::fail`]).
    fn take(&self, io: &mut Io, st: &mut State, clock_offset_ms: i64) -> Batch {
        let n = io.batch + 1;
        let replaced = self.replaced.swap(false, Ordering::SeqCst);
        let retry = self.retry.swap(false, Ordering::SeqCst);
        let compact = !io.compacting
            && io.journal_len >= io.snapshot_len.max(io.compact_at).max(io.compact_retry_at);
        let scalars = match serde_json::to_vec(&scalars_of(st, clock_offset_ms)) {
            Ok(b) => b,
            Err(e) => return self.cannot_serialise(io, e),
        };
        if replaced {
            return self.full(io, st, clock_offset_ms, scalars);
        }
        let mut changes = Collect::default();
        visit_kept(st, &mut changes);
        if let Some(e) = changes.error {
            return self.cannot_serialise(io, e);
        }
        if io.broken {
            // The journal lacks a batch: only a full snapshot saves again, and each try
            // serialises the whole state under this lock. The changes are measured (what
            // their line would have cost), not written: the snapshot will hold them.
            let line_len = changes.out.len() + scalars.len() + 48;
            if changes.any || scalars != io.scalars {
                io.unwritten = io.unwritten.saturating_add(line_len as u64);
            }
            let due = io
                .snapshot_retry_due
                .is_some_and(|at| std::time::Instant::now() >= at);
            return if retry || due || io.unwritten >= io.snapshot_retry_at {
                self.full(io, st, clock_offset_ms, scalars)
            } else {
                Batch::Nothing
            };
        }
        if !changes.any && scalars == io.scalars {
            return Batch::Nothing;
        }
        let mut line = Vec::with_capacity(changes.out.len() + scalars.len() + 48);
        line.extend_from_slice(format!("{{\"batch\":{n},\"scalars\":").as_bytes());
        line.extend_from_slice(&scalars);
        line.extend_from_slice(b",\"kept\":{");
        line.extend_from_slice(&changes.out);
        line.extend_from_slice(b"}}\n");
        // The line first, so the changes are acknowledged at the cost of the line; the copy,
        // as of this line, is folded into a snapshot after it.
        let fold = compact.then(|| Box::new(Copied::of(st, clock_offset_ms)));
        Batch::Line {
            line,
            scalars,
            fold,
        }
    }

    /// The whole state as the next batch (the state lock held).
    fn full(&self, io: &mut Io, st: &mut State, clock_offset_ms: i64, scalars: Vec<u8>) -> Batch {
        visit_kept(st, &mut MarkSaved);
        match snapshot(st, clock_offset_ms, io.batch + 1) {
            Ok(bytes) => Batch::Full { bytes, scalars },
            Err(e) => self.cannot_serialise(io, e),
        }
    }

    fn cannot_serialise(&self, io: &mut Io, e: serde_json::Error) -> Batch {
        tracing::error!(file = %self.path.display(), error = %e, "sandbox: cannot serialise the state");
        io.fail();
        Batch::Nothing
    }

    fn write(&self, io: &mut Io, batch: Batch) {
        let lost = "sandbox: cannot save the state; it goes on answering, and what it does \
                    until it can save again is lost if it stops before (free disk space: \
                    everything is written as one snapshot at the next try, 1 to 30 seconds \
                    apart, or when wxlocal stops)";
        match batch {
            Batch::Nothing => {}
            Batch::Line {
                line,
                scalars,
                fold,
            } => {
                match io
                    .journal
                    .write_all(&line)
                    .and_then(|()| io.journal.sync_data())
                {
                    Ok(()) => {
                        io.journal_len += line.len() as u64;
                        io.batch += 1;
                        io.scalars = scalars;
                        if let Some(copy) = fold {
                            self.start_compaction(io, copy);
                        }
                    }
                    Err(e) => {
                        tracing::error!(file = %self.files.journal_path.display(), error = %e, "{lost}");
                        io.fail();
                    }
                }
            }
            Batch::Full { bytes, scalars } => match write_atomic(&self.path, &bytes) {
                Ok(()) => {
                    if io.broken {
                        tracing::warn!(file = %self.path.display(), "sandbox: the state is saved again");
                    }
                    io.batch += 1;
                    io.snapshot_batch = io.batch;
                    io.snapshot_len = bytes.len() as u64;
                    io.scalars = scalars;
                    // The snapshot holds every line: emptied, the journal starts after it. A
                    // crash before this leaves lines the snapshot's batch says to skip.
                    // Opened afresh: a compaction may have replaced the file the handle was on.
                    match open_journal(&self.files.journal_path) {
                        Ok(f) => {
                            io.journal = f;
                            io.journal_len = 0;
                            io.broken = false;
                            io.unwritten = 0;
                            io.compact_retry_at = 0;
                            io.snapshot_retry_due = None;
                            io.retry_wait = io.retry_first;
                        }
                        Err(e) => {
                            tracing::error!(file = %self.files.journal_path.display(), error = %e, "{lost}");
                            io.fail();
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(file = %self.path.display(), error = %e, "{lost}");
                    io.fail();
                }
            },
        }
    }

    /// Folds the journal up to the line just written (`io.batch`) into a new snapshot of
    /// `copy`, on a thread of its own: answers and journal lines go on meanwhile.
    fn start_compaction(&self, io: &mut Io, copy: Box<Copied>) {
        let mut slot = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
        // The previous one ended (`compacting` was false); its thread is gone or going.
        drop(slot.take());
        io.compacting = true;
        let (files, batch, at) = (self.files.clone(), io.batch, io.journal_len);
        match std::thread::Builder::new()
            .name("sandbox-compaction".into())
            .spawn(move || compact(&files, &copy, batch, at))
        {
            Ok(h) => *slot = Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "sandbox: cannot start a compaction; the journal grows until the next");
                io.compacting = false;
                io.back_off();
            }
        }
    }

    /// Waits for a compaction being written, if any.
    pub(crate) fn finish_compaction(&self) {
        let h = self
            .compaction
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// The sandbox is gone: wakes the writer so it ends, and lets a compaction finish (a
    /// second sandbox opened on the files must not meet its rename).
    pub(crate) fn close(&self) {
        self.wake.notify_one();
        self.finish_compaction();
    }

    /// Whether changes are waiting to be saved.
    pub(crate) fn behind(&self) -> bool {
        self.changed.load(Ordering::SeqCst) > *self.saved.borrow()
    }

    /// Waits for the next change; after a failed write, at most until the full snapshot's
    /// retry is due ([`Io::fail`]), and then has the next batch try it.
    pub(crate) async fn next_change(&self) {
        if self.behind() {
            return;
        }
        let due = {
            let io = self.files.io();
            io.snapshot_retry_due.filter(|_| io.broken)
        };
        let Some(at) = due else {
            self.wake.notified().await;
            return;
        };
        let at = tokio::time::Instant::from_std(at);
        if tokio::time::timeout_at(at, self.wake.notified())
            .await
            .is_err()
        {
            self.retry.store(true, Ordering::SeqCst);
        }
    }
}

/// A compaction: `copy` is the state as of journal batch `batch`, whose line ends at byte `at`
/// of the journal. Serialised and written to a temporary file without any lock; then, under
/// the files' lock (so no line is appended meanwhile), renamed over the snapshot, and the
/// journal replaced by its lines after `batch` (those appended since `at`), written to a
/// temporary file and renamed too. Every crash leaves a pair that reads: the old snapshot and
/// the whole journal; the new snapshot and the whole journal (its lines up to `batch` are
/// skipped); the new snapshot and the lines after it. A failure is logged and leaves the old
/// pair; the next try waits for another threshold's worth of journal ([`Io::back_off`]).
fn compact(files: &Files, copy: &Copied, batch: u64, at: u64) {
    let r = compact_files(files, copy, batch, at);
    let mut io = files.io();
    io.compacting = false;
    match r {
        Ok(()) => io.compact_retry_at = 0,
        Err(e) => {
            tracing::warn!(file = %files.path.display(), error = %e, "sandbox: cannot compact the journal; it is kept whole and tried again once it has grown as much again (free disk space)");
            io.back_off();
        }
    }
}

impl Io {
    /// A write failed: the journal lacks that batch, so only a full snapshot saves again. It
    /// is tried once the changes since would have made another threshold's worth of journal
    /// (as [`Io::back_off`] does for a compaction), once `retry_wait` has passed (the writer
    /// wakes for it, changes or not: 1 s after a first failure, twice as long after each
    /// failure in a row, at most [`SNAPSHOT_RETRY_MAX`]), or at once with
    /// [`Persist::retry_now`] (a stop, a reset). Each try serialises the whole state under
    /// the state lock; a disk that stays full used to make every batch try one (and fail
    /// again), so that each change cost the size of everything.
    fn fail(&mut self) {
        self.retry_wait = if self.broken {
            self.retry_wait.saturating_mul(2).min(SNAPSHOT_RETRY_MAX)
        } else {
            self.retry_first
        };
        self.broken = true;
        self.unwritten = 0;
        self.snapshot_retry_at = self.snapshot_len.max(self.compact_at);
        self.snapshot_retry_due = Some(std::time::Instant::now() + self.retry_wait);
    }

    /// A compaction failed: the next is tried once the journal has grown by another
    /// threshold's worth. Each try copies every kept map under the state lock; a disk that
    /// stays full used to make every batch past the threshold copy the whole state again
    /// (and fail again), so that each change cost the size of everything. Now each try is
    /// paid for by as many bytes of journal lines, as a successful compaction is.
    fn back_off(&mut self) {
        self.compact_retry_at = self
            .journal_len
            .saturating_add(self.snapshot_len.max(self.compact_at));
    }
}

fn compact_files(files: &Files, copy: &Copied, batch: u64, at: u64) -> std::io::Result<()> {
    let bytes = copy.snapshot(batch).map_err(std::io::Error::other)?;
    #[cfg(test)]
    {
        let hook = files
            .before_compaction_write
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(hook) = hook {
            hook(&files.io);
        }
    }
    let tmp = beside(&files.path, ".compact.tmp");
    drop(write_synced(&tmp, &bytes)?);
    let mut io = files.io();
    // A full snapshot written meanwhile (a reset) is newer; after a failed append only a
    // full snapshot, of everything since, saves again.
    if io.snapshot_batch >= batch || io.broken {
        drop(io);
        return std::fs::remove_file(&tmp);
    }
    std::fs::rename(&tmp, &files.path)?;
    sync_dir(&files.path)?;
    io.snapshot_batch = batch;
    io.snapshot_len = bytes.len() as u64;
    let journal = std::fs::read(&files.journal_path)?;
    let tail = journal.get(at as usize..).unwrap_or_default();
    let jtmp = beside(&files.journal_path, ".tmp");
    drop(write_synced(&jtmp, tail)?);
    std::fs::rename(&jtmp, &files.journal_path)?;
    sync_dir(&files.journal_path)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.append(true);
    match opts.open(&files.journal_path) {
        Ok(f) => io.journal = f,
        Err(e) => {
            // Appends would go to the file just replaced: what is saved next is a full
            // snapshot, which opens the journal afresh.
            io.fail();
            return Err(e);
        }
    }
    io.journal_len = tail.len() as u64;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_state_file(tag: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "wxlocal-persist-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s-sandbox.json")
    }

    /// The clock's move is read back; a format-1 file (no journal), and one written before
    /// the move was kept (no `clock_offset_ms`), still read, as an unmoved clock.
    #[test]
    fn the_clock_offset_is_kept_and_older_files_read_as_unmoved() {
        let st = State {
            seq: 7,
            ..State::default()
        };
        let bytes = snapshot(&st, 86_400_000, 0).unwrap();
        let kept = restore(&bytes).unwrap();
        assert_eq!(kept.clock_offset_ms, 86_400_000);
        assert_eq!(kept.state.seq, 7);

        let mut older: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let o = older.as_object_mut().unwrap();
        o.remove("clock_offset_ms");
        o.remove("batch");
        o.insert("format".into(), 1.into());
        let kept = restore(&serde_json::to_vec(&older).unwrap()).unwrap();
        assert_eq!(kept.clock_offset_ms, 0);
        assert_eq!(kept.batch, 0);
        assert_eq!(kept.state.seq, 7);
    }

    /// Past its threshold the journal is folded into a new snapshot and emptied; what is read
    /// back at any point is what was in memory (also entries removed and a growing log).
    #[test]
    fn compaction_folds_the_journal_into_the_snapshot_and_nothing_is_lost() {
        let path = temp_state_file("compact");
        let journal = journal_path(&path);
        let mut st = State::default();
        let p = Persist::create(&path, &mut st, 0, 0).unwrap();
        p.files.io().compact_at = 4096;
        let mut compactions = 0;
        let mut last_len = 0;
        for i in 0..300u64 {
            st.seq += 1;
            st.pay.by_txn.insert(format!("t{i}"), format!("o{i}"));
            if i % 3 == 0 && i >= 3 {
                st.pay.by_txn.remove(&format!("t{}", i - 3));
            }
            st.funds.flows.push(flow(i));
            p.touch();
            p.save(|| Some((&mut st, 1000)));
            // A compaction's two renames are not one step for a reader (a crash leaves either).
            p.finish_compaction();
            let len = std::fs::metadata(&journal).unwrap().len();
            if len < last_len {
                compactions += 1;
            }
            last_len = len;
            if i % 50 == 7 {
                let back = load(&path).unwrap().unwrap();
                assert_eq!(
                    snapshot(&back.state, back.clock_offset_ms, 0).unwrap(),
                    snapshot(&st, 1000, 0).unwrap(),
                    "read back after change {i}"
                );
            }
        }
        assert!(compactions >= 2, "compacted {compactions} times");
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.batch, 300, "one batch per save");
        assert_eq!(back.state.funds.flows.len(), 300);
        assert_eq!(
            snapshot(&back.state, back.clock_offset_ms, 0).unwrap(),
            snapshot(&st, 1000, 0).unwrap()
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// The `i`th fund flow of a test: income of 1 fen for order `o{i}`.
    fn flow(i: u64) -> funds::Flow {
        funds::Flow {
            id: format!("f{i}"),
            time_ms: i as i64,
            kind: "交易".into(),
            income: true,
            amount: 1,
            balance: i as i64,
            busi_type: "订单".into(),
            request_no: format!("o{i}"),
        }
    }

    /// A change, as a purchase makes one: an entry of a kept map and a new flow.
    fn change(st: &mut State, i: u64) {
        st.seq += 1;
        st.pay.by_txn.insert(format!("t{i}"), "o".repeat(200));
        st.funds.flows.push(flow(i));
    }

    /// While a compaction's snapshot is being written, the state lock and the journal are
    /// free: changes are made, appended and acknowledged meanwhile (every answer waits for
    /// that). A crash at that moment leaves files that read as the state; after the
    /// compaction the snapshot and the journal's remaining lines read as it too, and the
    /// journal holds only the lines written during the compaction. (The compaction used to
    /// serialise the whole state under the state lock and write it under the journal's lock:
    /// every answer waited for the whole state to reach the disk.)
    #[test]
    fn answers_are_saved_while_a_compaction_is_written() {
        use std::sync::mpsc;
        let path = temp_state_file("background");
        let journal = journal_path(&path);
        let state = Mutex::new(State::default());
        let p = Persist::create(&path, &mut state.lock().unwrap(), 0, 0).unwrap();
        p.files.io().compact_at = 4096;
        // The compaction stops before its write, says whether the journal and the state are
        // free, and (if they are) waits to be let go.
        let (free_tx, free_rx) = mpsc::channel::<bool>();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        *p.files.before_compaction_write.lock().unwrap() = Some(Arc::new(move |io| {
            // The batch that started the compaction may still be releasing the journal (it
            // spawns the compaction while holding it): poll a while. A compaction that held
            // the journal itself would keep it held for all of this.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let free = loop {
                if io.try_lock().is_ok() {
                    break true;
                }
                if std::time::Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            free_tx.send(free).unwrap();
            if free {
                go_rx.lock().unwrap().recv().unwrap();
            }
        }));
        let save = |p: &Persist| {
            p.touch();
            p.save(|| Some((state.lock().unwrap(), 0)));
        };
        let mut i = 0;
        let free = loop {
            change(&mut state.lock().unwrap(), i);
            i += 1;
            save(&p);
            if let Ok(free) = free_rx.try_recv() {
                break free;
            }
            if p.compaction.lock().unwrap().is_some() {
                break free_rx.recv().unwrap();
            }
            assert!(i < 1000, "no compaction started");
        };
        assert!(
            free,
            "the journal is held while the compaction's snapshot is written"
        );
        let at_start = i;

        // Meanwhile: changes are made and acknowledged, one journal line each.
        for _ in 0..5 {
            change(&mut state.lock().unwrap(), i);
            i += 1;
            save(&p);
            assert_eq!(
                *p.saved.borrow(),
                p.changed.load(Ordering::SeqCst),
                "acknowledged"
            );
        }
        // A crash now: the old snapshot and the whole journal read as the state.
        let expected = || snapshot(&state.lock().unwrap(), 0, 0).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            snapshot(&back.state, 0, 0).unwrap(),
            expected(),
            "mid-compaction"
        );

        go_tx.send(()).unwrap();
        p.finish_compaction();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.batch, i, "one batch per save");
        assert_eq!(snapshot(&back.state, 0, 0).unwrap(), expected(), "after it");
        let lines = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(
            lines.lines().count() as u64,
            i - at_start,
            "the lines after the snapshot"
        );
        // Appends go on in the new journal.
        change(&mut state.lock().unwrap(), i);
        save(&p);
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            snapshot(&back.state, 0, 0).unwrap(),
            expected(),
            "a line later"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A compaction that fails (its snapshot cannot be written, as on a full disk) is not
    /// tried again at the next batch: only once the journal has grown by another threshold's
    /// worth, so the kept maps are not copied at every batch. Once the disk has room again the
    /// next try folds the journal, and nothing was lost meanwhile. (Every batch past the
    /// threshold used to copy the whole state for a compaction that failed again.)
    #[test]
    fn a_failing_compaction_backs_off_and_tries_again_later() {
        let path = temp_state_file("backoff");
        let journal = journal_path(&path);
        let mut st = State::default();
        let p = Persist::create(&path, &mut st, 0, 0).unwrap();
        p.files.io().compact_at = 4096;
        // Each try reaches the hook once its copy is serialised.
        let tries = Arc::new(AtomicU64::new(0));
        let counted = tries.clone();
        *p.files.before_compaction_write.lock().unwrap() = Some(Arc::new(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        // Its temporary snapshot cannot be written: a directory is in the way.
        let blocker = beside(&path, ".compact.tmp");
        std::fs::create_dir(&blocker).unwrap();
        let mut i = 0;
        let mut save = |st: &mut State| {
            change(st, i);
            i += 1;
            p.touch();
            p.save(|| Some((&mut *st, 0)));
            p.finish_compaction();
        };
        for _ in 0..200 {
            save(&mut st);
        }
        let grown = std::fs::metadata(&journal).unwrap().len();
        let failed = tries.load(Ordering::SeqCst);
        assert!(failed >= 1, "a compaction was tried");
        assert!(
            failed <= grown / 4096 + 1,
            "{failed} tries for a journal of {grown} bytes: one per 4096 bytes of journal at most"
        );
        assert!(grown > 40_000, "nothing was folded: {grown} bytes");

        // Room again: a later try succeeds, and the files read as the state.
        std::fs::remove_dir(&blocker).unwrap();
        let mut n = 0;
        while std::fs::metadata(&journal).unwrap().len() >= grown {
            save(&mut st);
            n += 1;
            assert!(n < 100, "no compaction after the disk had room again");
        }
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            snapshot(&back.state, 0, 0).unwrap(),
            snapshot(&st, 0, 0).unwrap()
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// Counts the tries to write a full snapshot: a FIFO stands where each try writes its
    /// temporary file, so every try fails (a FIFO cannot be flushed, as a full disk cannot be
    /// written) and is seen by the reader. `stop` ends the reader and removes the FIFO: the
    /// disk has room again.
    struct FullTries {
        fifo: PathBuf,
        tries: Arc<AtomicU64>,
        done: Arc<AtomicBool>,
        reader: Option<std::thread::JoinHandle<()>>,
    }

    impl FullTries {
        fn block(path: &Path) -> FullTries {
            use std::io::Read;
            let fifo = beside(path, ".tmp");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success(), "mkfifo");
            let tries = Arc::new(AtomicU64::new(0));
            let done = Arc::new(AtomicBool::new(false));
            let (t, d, f) = (tries.clone(), done.clone(), fifo.clone());
            let reader = std::thread::spawn(move || loop {
                if d.load(Ordering::SeqCst) {
                    return;
                }
                let mut bytes = Vec::new();
                File::open(&f).unwrap().read_to_end(&mut bytes).unwrap();
                if !bytes.is_empty() {
                    t.fetch_add(1, Ordering::SeqCst);
                }
            });
            FullTries {
                fifo,
                tries,
                done,
                reader: Some(reader),
            }
        }

        fn count(&self) -> u64 {
            self.tries.load(Ordering::SeqCst)
        }

        /// Ends the reader. It may be blocked opening the FIFO (then an open from here wakes
        /// it, and it finds `done` on its next turn), or past its open, or gone already. A
        /// write-only open here used to wait for a reader that, having read its last bytes and
        /// then seen `done`, never opened again: the test hung (seen in CI). A read-write open
        /// of a FIFO never waits (Linux), so it is repeated until the reader is gone.
        fn stop(&mut self) {
            self.done.store(true, Ordering::SeqCst);
            let reader = self.reader.take().unwrap();
            while !reader.is_finished() {
                drop(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&self.fifo)
                        .unwrap(),
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            reader.join().unwrap();
            std::fs::remove_file(&self.fifo).unwrap();
        }
    }

    /// Appends fail from now on (a full disk): the journal's handle can only read.
    fn break_journal(p: &Persist) {
        let journal = journal_path(&p.path);
        p.files.io().journal = File::open(journal).unwrap();
    }

    /// After a failed append, the full snapshot that saves again is not tried at every batch:
    /// only once the changes since would have made another threshold's worth of journal, so
    /// a disk that stays full does not make each change copy the whole state. Meanwhile the
    /// sandbox goes on acknowledging (it does not hang on a full disk, as documented). Once
    /// the disk has room again, the next try writes everything: nothing changed meanwhile is
    /// lost, and lines are appended again. (Every batch after a failed append used to try a
    /// full snapshot.)
    #[test]
    fn a_failed_append_backs_off_before_the_full_snapshot_and_recovers() {
        let path = temp_state_file("appendfail");
        let journal = journal_path(&path);
        let mut st = State::default();
        let p = Persist::create(&path, &mut st, 0, 0).unwrap();
        p.files.io().compact_at = 4096;
        // The threshold is the subject here, not the timed retry.
        p.files.io().retry_first = std::time::Duration::from_secs(3600);
        let mut i = 0;
        let mut save = |st: &mut State| {
            change(st, i);
            i += 1;
            p.touch();
            p.save(|| Some((&mut *st, 0)));
            assert_eq!(
                *p.saved.borrow(),
                p.changed.load(Ordering::SeqCst),
                "acknowledged"
            );
        };
        for _ in 0..5 {
            save(&mut st);
        }
        let per_change = std::fs::metadata(&journal).unwrap().len() / 5;
        let mut tries = FullTries::block(&path);
        break_journal(&p);
        for _ in 0..200 {
            save(&mut st);
        }
        let n = tries.count();
        assert!(n >= 1, "the full snapshot was tried");
        assert!(
            n <= 200 * per_change / 4096 + 1,
            "{n} full snapshots tried for 200 changes of {per_change} bytes: one per 4096 \
             bytes of changes at most"
        );

        // Room again: a later batch writes everything, then lines are appended again.
        tries.stop();
        let mut k = 0;
        while p.files.io().broken {
            save(&mut st);
            k += 1;
            assert!(
                k <= 4096 / per_change + 1,
                "no full snapshot after the disk had room again"
            );
        }
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            snapshot(&back.state, 0, 0).unwrap(),
            snapshot(&st, 0, 0).unwrap(),
            "what changed while the disk was full is saved"
        );
        let len = std::fs::metadata(&journal).unwrap().len();
        save(&mut st);
        assert!(std::fs::metadata(&journal).unwrap().len() > len, "appended");
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            snapshot(&back.state, 0, 0).unwrap(),
            snapshot(&st, 0, 0).unwrap()
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// After a failed append, a stop (or `Sandbox::flush`) does not wait for the back-off: it
    /// writes everything at once, and a sandbox started on the files knows it.
    #[test]
    fn a_stop_after_a_failed_append_writes_everything() {
        let path = temp_state_file("appendstop");
        let mut st = State::default();
        let p = Persist::create(&path, &mut st, 0, 0).unwrap();
        p.files.io().retry_first = std::time::Duration::from_secs(3600);
        let save = |p: &Persist, st: &mut State, i: u64| {
            change(st, i);
            p.touch();
            p.save(|| Some((&mut *st, 0)));
        };
        save(&p, &mut st, 0);
        break_journal(&p);
        for i in 1..4 {
            save(&p, &mut st, i);
        }
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            back.state.funds.flows.len(),
            1,
            "not written yet (backing off)"
        );
        assert!(p.retry_now(), "a write had failed");
        p.save(|| Some((&mut st, 0)));
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            snapshot(&back.state, 0, 0).unwrap(),
            snapshot(&st, 0, 0).unwrap()
        );
        assert!(!p.retry_now(), "saved again: nothing to retry");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// GIVEN a sandbox whose append failed (a full disk) and that then goes quiet — no more
    /// changes, no stop — WHEN the disk has room again THEN the writer, waiting for the next
    /// change as the sandbox's does, is woken within seconds to try the full snapshot, and
    /// what changed before the failure is saved. (It used to wait for a threshold's worth of
    /// changes or the stop: a quiet sandbox never saved them, and a crash lost them.)
    #[tokio::test]
    async fn a_quiet_sandbox_saves_soon_after_a_failed_append() {
        let path = temp_state_file("appendquiet");
        let mut st = State::default();
        let p = Persist::create(&path, &mut st, 0, 0).unwrap();
        let save = |p: &Persist, st: &mut State, i: u64| {
            change(st, i);
            p.touch();
            p.save(|| Some((&mut *st, 0)));
        };
        save(&p, &mut st, 0);
        break_journal(&p);
        save(&p, &mut st, 1);
        assert_eq!(
            *p.saved.borrow(),
            p.changed.load(Ordering::SeqCst),
            "acknowledged"
        );
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            back.state.funds.flows.len(),
            1,
            "the failed change is not on disk"
        );

        // Quiet from now on: the writer's loop, as `spawn_writer` runs it. (The disk has room
        // again: a full snapshot writes a new file, which the broken handle does not touch.)
        let started = std::time::Instant::now();
        while p.files.io().broken {
            let woke =
                tokio::time::timeout(std::time::Duration::from_secs(5), p.next_change()).await;
            assert!(
                woke.is_ok(),
                "the writer is woken to try again without a change"
            );
            p.save(|| Some((&mut st, 0)));
            assert!(
                started.elapsed() < std::time::Duration::from_secs(3),
                "tried within seconds: {:?}",
                started.elapsed()
            );
        }
        let back = load(&path).unwrap().unwrap();
        assert_eq!(
            snapshot(&back.state, 0, 0).unwrap(),
            snapshot(&st, 0, 0).unwrap(),
            "what changed before the failure is saved"
        );
        assert!(!p.files.io().broken, "saving again");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
