//! The store's floor for `payCallback` on SQLite: the SQL a payment needs and nothing else —
//! no tokio, no writer thread, no JSON work, no notification — on one thread, so it is also
//! the most a single SQLite writer can do (SQLite serialises writers).
//!
//! `ours`: per payment, the statements `SqliteStore` runs (`store::sqlite::{SCHEMA, GET,
//! PUT_IF_VERSION, PUT_IF_ABSENT}`, the store's own constants), with the real
//! records (`repo::order_record`, `outbox::to_record`, encoded before the clock starts): read
//! the order by key, update it conditionally on its version (body, status, version), insert
//! the outbox entry; `--group` payments per transaction, WAL, `synchronous=FULL`, as the
//! store's group commit does at high concurrency. `minimal`: one `UPDATE` of a small row by
//! integer key on a table without indexes, `--group` per transaction — what any durable
//! "mark paid" costs on SQLite whatever the record layout. `narrow`: the read of `ours`, then
//! the payment recorded as one insert into a narrow append-only `payments` table (integer
//! rowid, unique `out_trade_no`) and nothing else — the floor of the redesign that issue 8's
//! payCallback target would need (PAID and the `shop/order/pay` task derived from that row).

use crate::callback::order;
use crate::stats::us;
use rusqlite::OptionalExtension;
use serde_json::json;
use std::time::Instant;
use wxshop::domain::{OpenId, OutTradeNo};
use wxshop::outbox::{to_record, OutboxEntry, Task};
use wxshop::store::repo::order_record;
use wxshop::store::sqlite::{
    columns, GET, LIVE_INDEXED, LIVE_VERSION, PUT_IF_ABSENT, SCHEMA, UPDATE_LIVE, UPSERT,
};

/// `UPDATE_LIVE`'s statement for a put that changes the status only (an order's transition).
const STATUS_ONLY: usize = 0b010;

/// The `minimal` case's table, beside the store's own schema.
const MINIMAL: &str =
    "CREATE TABLE minimal (id INTEGER PRIMARY KEY, status INTEGER NOT NULL, txn TEXT);";

/// The `narrow` case's table: a payment as an append-only fact (the order's PAID state and the
/// `shop/order/pay` task would be derived from it; a relay would read it in rowid order).
const NARROW: &str = "CREATE TABLE payments (
    seq INTEGER PRIMARY KEY, out_trade_no TEXT NOT NULL UNIQUE, transaction_id TEXT NOT NULL,
    total_fee INTEGER NOT NULL, time_end INTEGER NOT NULL);";

pub fn run(args: &[String]) -> Result<(), String> {
    let n = crate::num(args, "--n", 50_000usize);
    let group = crate::num(args, "--group", 256usize).max(1);
    let dir = std::env::temp_dir().join(format!("wxshop-sqlite-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("floor.db");
    let result = measure(&path, n, group);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn db(e: rusqlite::Error) -> String {
    e.to_string()
}

fn measure(path: &std::path::Path, n: usize, group: usize) -> Result<(), String> {
    let mut conn = rusqlite::Connection::open(path).map_err(db)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(db)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(db)?;
    conn.execute_batch(SCHEMA).map_err(db)?;
    conn.execute_batch(MINIMAL).map_err(db)?;
    conn.execute_batch(NARROW).map_err(db)?;

    // The records, as the store would write them: PREPAID orders, then PAID + outbox entry.
    let now = 1_764_000_000_000_i64;
    let openid = OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").map_err(|e| e.to_string())?;
    let mut created = Vec::with_capacity(n);
    let mut paid = Vec::with_capacity(n);
    for i in 0..n {
        let no = OutTradeNo::parse(format!("FLOOR{now}{i:08}")).map_err(|e| e.to_string())?;
        let mut o = order(&no, &openid, now)?;
        created.push(order_record(&o, 1).map_err(|e| e.to_string())?);
        o.pay(&format!("42000{i:023}"), now, now)
            .map_err(|e| e.to_string())?;
        let entry = OutboxEntry::new(Task::OrderPay { out_trade_no: no }, now);
        paid.push((
            order_record(&o, 2).map_err(|e| e.to_string())?,
            to_record(&entry, 1).map_err(|e| e.to_string())?,
        ));
    }
    let now_secs = now / 1000;
    for chunk in created.chunks(1000) {
        let tx = conn.transaction().map_err(db)?;
        {
            let mut st = tx.prepare_cached(PUT_IF_ABSENT).map_err(db)?;
            for r in chunk {
                let version = r.version as i64;
                let [k, id, v, body, owner, status, sort, exp] = columns(r, &version);
                st.execute([k, id, v, body, owner, status, sort, exp, &now_secs])
                    .map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
    }
    {
        let tx = conn.transaction().map_err(db)?;
        {
            let mut st = tx
                .prepare_cached("INSERT INTO minimal (id, status) VALUES (?1, 0)")
                .map_err(db)?;
            for i in 0..n {
                st.execute([i as i64]).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
    }

    // ours: per payment, the handler's read of the order, then the store's two-write call
    // (`apply_call`): check both conditions, learning which indexed columns the order's put
    // changes (status only), update the order in place, write the outbox entry.
    let t = Instant::now();
    for chunk in paid.chunks(group) {
        let tx = conn.transaction().map_err(db)?;
        {
            let mut get = tx.prepare_cached(GET).map_err(db)?;
            let mut live_indexed = tx.prepare_cached(LIVE_INDEXED).map_err(db)?;
            let mut live_version = tx.prepare_cached(LIVE_VERSION).map_err(db)?;
            let mut upd = tx.prepare_cached(UPDATE_LIVE[STATUS_ONLY]).map_err(db)?;
            let mut ins = tx.prepare_cached(UPSERT).map_err(db)?;
            for (o, e) in chunk {
                let (version, body): (i64, String) = get
                    .query_row((o.kind.as_str(), &o.id, now_secs), |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(db)?;
                std::hint::black_box(&body);
                let (live, same_owner, same_status, same_sort): (i64, bool, bool, bool) =
                    live_indexed
                        .query_row(
                            (
                                o.kind.as_str(),
                                &o.id,
                                now_secs,
                                &o.owner,
                                &o.status,
                                o.sort,
                            ),
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                        )
                        .map_err(db)?;
                if live != version || !same_owner || same_status || !same_sort {
                    return Err(format!("order {} is not as expected", o.id));
                }
                let absent = live_version
                    .query_row((e.kind.as_str(), &e.id, now_secs), |r| r.get::<_, i64>(0))
                    .optional()
                    .map_err(db)?
                    .is_none();
                if !absent {
                    return Err(format!("outbox entry {} exists", e.id));
                }
                let changed = upd.execute(columns(o, &(o.version as i64))).map_err(db)?;
                if changed != 1 {
                    return Err(format!("order {} not updated", o.id));
                }
                ins.execute(columns(e, &(e.version as i64))).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
    }
    let ours = t.elapsed();

    // minimal: one small UPDATE by integer key per payment.
    let t = Instant::now();
    for (g, chunk) in paid.chunks(group).enumerate() {
        let tx = conn.transaction().map_err(db)?;
        {
            let mut upd = tx
                .prepare_cached("UPDATE minimal SET status = 1, txn = ?2 WHERE id = ?1")
                .map_err(db)?;
            for (j, (o, _)) in chunk.iter().enumerate() {
                let id = (g * group + j) as i64;
                if upd.execute((id, &o.id)).map_err(db)? != 1 {
                    return Err(format!("row {id} not updated"));
                }
            }
        }
        tx.commit().map_err(db)?;
    }
    let minimal = t.elapsed();

    // narrow: read the order (as for the amount check; on a reader connection in the store,
    // here on the one thread), then record the payment as one narrow insert.
    let txns: Vec<String> = (0..n).map(|i| format!("4200001234{now}{i:08}")).collect();
    let t = Instant::now();
    for (chunk, txns) in paid.chunks(group).zip(txns.chunks(group)) {
        let tx = conn.transaction().map_err(db)?;
        {
            let mut get = tx.prepare_cached(GET).map_err(db)?;
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO payments (out_trade_no, transaction_id, total_fee, time_end)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (out_trade_no) DO NOTHING",
                )
                .map_err(db)?;
            for ((o, _), txn) in chunk.iter().zip(txns) {
                let body: String = get
                    .query_row((o.kind.as_str(), &o.id, now_secs), |r| r.get(1))
                    .map_err(db)?;
                std::hint::black_box(&body);
                if ins.execute((&o.id, txn, 1990_i64, now)).map_err(db)? != 1 {
                    return Err(format!("payment {} not recorded", o.id));
                }
            }
        }
        tx.commit().map_err(db)?;
    }
    let narrow = t.elapsed();

    let order_body = paid.first().map(|(o, _)| o.body.len()).unwrap_or(0);
    let outbox_body = paid.first().map(|(_, e)| e.body.len()).unwrap_or(0);
    for (case, d) in [("ours", ours), ("minimal", minimal), ("narrow", narrow)] {
        let per = d.as_secs_f64() / n as f64;
        println!(
            "{}",
            json!({
                "bench": "sqlite_floor", "case": case, "n": n, "group": group,
                "journal_mode": mode, "synchronous": "FULL",
                "ops_per_sec": 1.0 / per, "us_per_op": us(d) / n as f64,
                "order_body_bytes": order_body, "outbox_body_bytes": outbox_body,
            })
        );
    }
    Ok(())
}
