"""Prints the comparison table of scripts/bench-peers.sh from its JSON lines (stdin or file)."""
import json
import statistics
import sys


def fmt(x):
    return "—" if x is None else f"{x:,.0f}"


def ratio(a, b):
    return "—" if not a or not b else f"{a / b:,.1f}×"


def main():
    src = open(sys.argv[1], encoding="utf-8") if len(sys.argv) > 1 else sys.stdin
    rows = [json.loads(line) for line in src if line.strip().startswith("{")]
    # One row per implementation, case and pass (scripts/bench-peers.sh alternates them).
    notify = {}
    for r in rows:
        if "impl" in r:
            notify.setdefault((r["impl"], r["case"]), []).append(r)
    passes = lambda impl, case: [r["ops_per_sec"] for r in notify.get((impl, case), []) if r.get("ops_per_sec")]
    ops = lambda impl, case: statistics.median(passes(impl, case)) if passes(impl, case) else None
    refused = lambda impl, case: next((r["refused"] for r in notify.get((impl, case), []) if r.get("refused")), None)

    def per_pass(case, peer):
        # wxshop ÷ peer pass by pass (each pass ran the three one after another).
        rs = [w / p for w, p in zip(passes("wxshop", case), passes(peer, case)) if p]
        if len(rs) < 2:
            return ""
        return f" ({min(rs):,.1f}–{max(rs):,.1f}×)"

    floor = ops("wxshop", "floor_md5")
    n = max((len(v) for v in notify.values()), default=0)
    print(f"\nNotification verify + parse, single thread (notifications/s: median over {n} pass(es), "
          "each the median of its rounds; in brackets the range of the ratio pass by pass)\n")
    print(f"| case | wxshop | wechatpy | tenpay | wxshop ÷ wechatpy | wxshop ÷ tenpay | wxshop time ÷ floor time |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in ("pay_md5", "pay_hmac", "refund"):
        w, py, tp = ops("wxshop", case), ops("wechatpy", case), ops("tenpay", case)
        pys = fmt(py) if py else f"refused ({refused('wechatpy', case)})" if refused("wechatpy", case) else "—"
        tps = fmt(tp) if tp else f"refused ({refused('tenpay', case)})" if refused("tenpay", case) else "—"
        print(f"| {case} | {fmt(w)} | {pys} | {tps} | {ratio(w, py)}{per_pass(case, 'wechatpy')} "
              f"| {ratio(w, tp)}{per_pass(case, 'tenpay')} | {ratio(floor, w)} |")
    print(f"| floor: MD5 of the canonical string once | {fmt(floor)} | | | | | 1.0× |")
    tenpay_md5 = ops("tenpay", "pay_md5")
    cb = [r for r in rows if r.get("bench") == "paycallback" and r.get("pass") == "first"]
    if cb:
        print("\npayCallback in-process (verify, checks, conditional transition + outbox, SUCCESS)\n")
        print("| store | in flight | logs | notifications/s | p50 µs | p99 µs | ÷ tenpay parse-only (pay_md5) |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for r in cb:
            print(f"| {r['store']} | {r.get('concurrency', 1)} | {'JSON' if r['logs'] else 'off'} | {fmt(r['ops_per_sec'])} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {ratio(r['ops_per_sec'], tenpay_md5)} |")
    floor_sql = next((r for r in rows if r.get("bench") == "sqlite_floor" and r.get("case") == "ours"), None)
    file256 = next((r for r in cb if r["store"] == "sqlite" and r.get("concurrency") == 256 and not r["logs"]), None)
    if floor_sql and file256:
        print(f"\nthe store's floor (sqlite-floor `ours`: the SQL of one payment alone, one thread, "
              f"one commit): {fmt(floor_sql['ops_per_sec'])}/s ({floor_sql['us_per_op']:.1f} µs); "
              f"payCallback on the file at 256 in flight is {ratio(file256['ops_per_sec'], floor_sql['ops_per_sec'])} of it "
              "(the restatement docs/PERFORMANCE.md suggests: at least 0.5×)")
    for r in rows:
        if r.get("bench") == "coldstart":
            print(f"\ncold start {r['bin']}: median {r['cold_median_ms']:.2f} ms over {r['runs']} runs "
                  f"(min {r['cold_min_ms']:.2f}, max {r['cold_max_ms']:.2f}); size {r['size_bytes'] / 1e6:.2f} MB; "
                  f"VmHWM after {r['invocations']} invocations {r['vm_hwm_kb'] / 1024:.1f} MiB")
        if r.get("bench") == "stack":
            print(f"\nwxlocal ({r['store']}, {r['concurrency']} clients): {r['purchases_per_sec']:,.0f} purchases/s "
                  f"over {r['purchases']}; p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; "
                  f"CPU {r['cpu_ms_per_purchase']:.2f} ms/purchase")


if __name__ == "__main__":
    main()
