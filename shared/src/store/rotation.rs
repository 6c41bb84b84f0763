//! A sweep's turn through one status index, kept between runs.
//!
//! Why it exists: a sweep that starts each run at the oldest record of an index and stops
//! after a number of them (or at its deadline) is starved by records it can never finish —
//! an unpaid order WeChat never answers about stays first for ever, and enough of them keep
//! every newer order (expired ones whose stock should go back among them) from being looked
//! at. A [`Rotation`] instead starts right after the record the last run handled last, goes
//! to the end of the index, and wraps round to the start: every record in the index is
//! handed out once per turn, however many ahead of it never settle, and each run reads only
//! what it handles.
//!
//! The place is the (`sort`, `id`) of the last record handed out — a position in the index's
//! order, not a store cursor, so it stays good when that record has left the index (paid,
//! closed) — kept as a [`kv`] entry. So the index must order its records by a `sort` with
//! few ties (a creation time): ties at the place are read past, one by one. It is for
//! sweeps, which act on each record with a conditional write anyway: two runs at once (a
//! retried schedule) each save their place, the later save loses, and nothing is done twice
//! that a version check does not stop.

use super::{kv, Index, Kind, Query, Record, Store, StoreError};
use std::collections::VecDeque;

/// How long a saved place lasts unused; after that a turn starts again at the start.
const PLACE_TTL_SECS: i64 = 7 * 24 * 3600;
/// Records read per query.
const PAGE: usize = 100;

/// Which part of the turn is being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// After the saved place, to the end of the index.
    AfterPlace,
    /// From the start of the index up to the saved place (included).
    UpToPlace,
    /// Every record has been handed out once.
    Done,
}

/// What [`Rotation::next_before`] hands out.
#[derive(Debug)]
pub enum Next {
    Record(Record),
    /// Nothing more this run: the turn is done (`finished`), or the deadline passed.
    Stop {
        finished: bool,
    },
}

/// One run's turn through `status` records of `kind` (see the module docs).
#[derive(Debug)]
pub struct Rotation {
    key: String,
    kind: Kind,
    status: String,
    sort_min: Option<i64>,
    sort_max: Option<i64>,
    /// Where the last run stopped, and its entry's version (the save's condition).
    place: Option<(i64, String)>,
    place_version: Option<u64>,
    /// The last record handed out in this run.
    last: Option<(i64, String)>,
    part: Part,
    cursor: Option<String>,
    page: VecDeque<Record>,
    page_was_last: bool,
}

impl Rotation {
    /// The turn named `name` through `kind` records in `status` whose `sort` is within the
    /// inclusive bounds, from where its last run stopped.
    pub async fn resume(
        store: &dyn Store,
        name: &str,
        kind: Kind,
        status: &str,
        sort_min: Option<i64>,
        sort_max: Option<i64>,
    ) -> Result<Rotation, StoreError> {
        let key = format!("rotation/{name}");
        let saved = kv::get(store, &key).await?;
        let place = saved
            .as_ref()
            .and_then(|e| serde_json::from_str::<(i64, String)>(&e.value).ok());
        Ok(Rotation {
            key,
            kind,
            status: status.to_owned(),
            sort_min,
            sort_max,
            part: if place.is_some() {
                Part::AfterPlace
            } else {
                Part::UpToPlace
            },
            place,
            place_version: saved.map(|e| e.version),
            last: None,
            cursor: None,
            page: VecDeque::new(),
            page_was_last: false,
        })
    }

    /// [`Rotation::next`] for a sweep bounded by `deadline`, checked first so that nothing is
    /// handed out once it has passed: the record, or where the run stops — `Stop { finished:
    /// true }` at the end of the turn, `false` at the deadline (the next run goes on from here).
    pub async fn next_before(
        &mut self,
        store: &dyn Store,
        deadline: crate::time::Deadline,
    ) -> Result<Next, StoreError> {
        if deadline.passed() {
            return Ok(Next::Stop { finished: false });
        }
        Ok(match self.next(store).await? {
            Some(rec) => Next::Record(rec),
            None => Next::Stop { finished: true },
        })
    }

    /// The next record of the turn, or `None` once every record has been handed out in this
    /// run. A record handed out counts as handled: ask for one only to handle it.
    pub async fn next(&mut self, store: &dyn Store) -> Result<Option<Record>, StoreError> {
        loop {
            if self.part == Part::Done {
                return Ok(None);
            }
            if let Some(rec) = self.page.pop_front() {
                let at = (rec.sort, rec.id.clone());
                match (self.part, &self.place) {
                    // Ties at the place (and the place itself): handled last run.
                    (Part::AfterPlace, Some(place)) if at <= *place => continue,
                    // Past the place again: the turn is complete.
                    (Part::UpToPlace, Some(place)) if at > *place => {
                        self.part = Part::Done;
                        return Ok(None);
                    }
                    _ => {}
                }
                self.last = Some(at);
                return Ok(Some(rec));
            }
            if self.page_was_last {
                self.part = match self.part {
                    Part::AfterPlace => Part::UpToPlace,
                    _ => Part::Done,
                };
                self.page_was_last = false;
                self.cursor = None;
                continue;
            }
            let mut q = Query::new(self.kind, Index::Status(self.status.clone()));
            q.limit = PAGE;
            q.cursor = self.cursor.take();
            let place_sort = self.place.as_ref().map(|(sort, _)| *sort);
            (q.sort_min, q.sort_max) = match self.part {
                Part::AfterPlace => (max_of(self.sort_min, place_sort), self.sort_max),
                _ => (self.sort_min, min_of(self.sort_max, place_sort)),
            };
            let page = match (q.sort_min, q.sort_max) {
                (Some(lo), Some(hi)) if lo > hi => super::Page::default(),
                _ => store.query(q).await?,
            };
            self.page_was_last = page.next.is_none();
            self.cursor = page.next;
            self.page.extend(page.records);
        }
    }

    /// Keeps where this run stopped, for the next. A failure is logged: the next run then
    /// starts where this one did, which repeats work but skips none.
    pub async fn save(&self, store: &dyn Store, now_secs: i64) {
        let Some(last) = &self.last else { return };
        if self.place.as_ref() == Some(last) {
            return;
        }
        save_place(store, &self.key, last, now_secs, self.place_version).await;
    }
}

fn max_of(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn min_of(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Where a [`ListingTurn`] stands: the listing (a status, by name, so a reordering of the
/// listings does not move it) and the store's cursor to read it on from (`None`: its start).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ListingPlace {
    status: String,
    cursor: Option<String>,
}

/// A sweep's turn through listings whose records tie on `sort` — products: every one has
/// sort 0, so each status listing is in product-id order — where a [`Rotation`], whose place
/// is a `sort`, would read every tie from the start of the listing on every run.
///
/// The place kept between runs is instead the store's own cursor, which on both backends is
/// a position in the listing's order (the sort key and id of the last record returned), not a
/// reference to a record: it stays good when that record has left the listing, as
/// [`repo::reindex_products`](super::repo::reindex_products) relies on too. A cursor exists
/// only at the end of a page, so the turn goes a page at a time: [`ListingTurn::page`] reads
/// one from the place, [`ListingTurn::advance`] moves the place past it once the sweep has
/// handled it, or the sweep stops without advancing and the next run reads it again. Each
/// listing is read to its end, then the next; after the last listing the place goes back to
/// the first one's start and the run stops, so a run reads nothing twice. A cursor the store
/// refuses (written by another version) restarts its listing, logged. Runs at once: as
/// [`Rotation::save`].
#[derive(Debug)]
pub struct ListingTurn {
    key: String,
    kind: Kind,
    statuses: Vec<String>,
    /// Which listing is read, and from where.
    at: usize,
    cursor: Option<String>,
    /// The kept place as read, and its entry's version (the save's condition).
    saved: Option<ListingPlace>,
    saved_version: Option<u64>,
    /// The cursor after the page last read (`None`: it was the listing's last).
    after_page: Option<Option<String>>,
    /// The run went past the end of the last listing.
    wrapped: bool,
}

impl ListingTurn {
    /// The turn named `name` through `kind` records in each of `statuses` in turn, from where
    /// its last run stopped (kv `rotation/{name}`).
    pub async fn resume(
        store: &dyn Store,
        name: &str,
        kind: Kind,
        statuses: &[&str],
    ) -> Result<ListingTurn, StoreError> {
        let key = format!("rotation/{name}");
        let entry = kv::get(store, &key).await?;
        let saved = entry
            .as_ref()
            .and_then(|e| serde_json::from_str::<ListingPlace>(&e.value).ok());
        let statuses: Vec<String> = statuses.iter().map(|s| (*s).to_owned()).collect();
        let (at, cursor) = saved
            .as_ref()
            .and_then(|p| {
                let at = statuses.iter().position(|s| *s == p.status)?;
                Some((at, p.cursor.clone()))
            })
            .unwrap_or((0, None));
        Ok(ListingTurn {
            key,
            kind,
            statuses,
            at,
            cursor,
            saved,
            saved_version: entry.map(|e| e.version),
            after_page: None,
            wrapped: false,
        })
    }

    /// The next page of at most `limit` records from the place, or `None` once the run has
    /// gone past the end of the last listing. Empty listings are passed by. The place moves
    /// past the page only with [`ListingTurn::advance`].
    pub async fn page(
        &mut self,
        store: &dyn Store,
        limit: usize,
    ) -> Result<Option<Vec<Record>>, StoreError> {
        loop {
            if self.wrapped || self.statuses.is_empty() {
                return Ok(None);
            }
            let Some(status) = self.statuses.get(self.at) else {
                self.at = 0;
                self.cursor = None;
                continue;
            };
            let mut q = Query::new(self.kind, Index::Status(status.clone()));
            q.limit = limit.clamp(1, PAGE);
            q.cursor = self.cursor.clone();
            let page = match store.query(q).await {
                Ok(p) => p,
                Err(StoreError::BadCursor) if self.cursor.is_some() => {
                    tracing::warn!(rotation = %self.key, status = %status, "a sweep's kept place is not a cursor of its listing; the listing is read from its start");
                    self.cursor = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.after_page = Some(page.next.clone());
            if page.records.is_empty() {
                // Nothing to handle: past it at once.
                self.advance();
                continue;
            }
            return Ok(Some(page.records));
        }
    }

    /// Moves the place past the page last read: on in its listing, or to the next listing's
    /// start (after the last listing, the first one's, and the run stops there).
    pub fn advance(&mut self) {
        match self.after_page.take() {
            Some(Some(next)) => self.cursor = Some(next),
            Some(None) => {
                self.cursor = None;
                self.at += 1;
                if self.at >= self.statuses.len() {
                    self.at = 0;
                    self.wrapped = true;
                }
            }
            None => {}
        }
    }

    /// Keeps where this run stopped, for the next. A failure is logged: the next run then
    /// starts where this one did, which repeats work but skips none.
    pub async fn save(&self, store: &dyn Store, now_secs: i64) {
        let Some(status) = self.statuses.get(self.at) else {
            return;
        };
        let place = ListingPlace {
            status: status.clone(),
            cursor: self.cursor.clone(),
        };
        let unchanged = match &self.saved {
            Some(saved) => *saved == place,
            None => place.cursor.is_none() && self.at == 0,
        };
        if unchanged {
            return;
        }
        save_place(store, &self.key, &place, now_secs, self.saved_version).await;
    }
}

/// Keeps a sweep's `place` under kv `key` for [`PLACE_TTL_SECS`], over the entry's `version`
/// as read (`None`: there was none). Another run having saved its place meanwhile (the
/// condition fails) is fine: either place will do. A failure is logged: the next run then
/// starts where this one did, which repeats work but skips none.
async fn save_place(
    store: &dyn Store,
    key: &str,
    place: &impl serde::Serialize,
    now_secs: i64,
    version: Option<u64>,
) {
    let value = match serde_json::to_string(place) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(rotation = %key, error = %e, "could not encode a sweep's place");
            return;
        }
    };
    if let Err(e) = kv::put_if(store, key, &value, now_secs + PLACE_TTL_SECS, version).await {
        tracing::warn!(rotation = %key, error = %e, "could not keep a sweep's place; the next run starts where this one did");
    }
}
