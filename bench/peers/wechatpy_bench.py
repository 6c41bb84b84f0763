"""wechatpy's notification parsing on bench/payloads.json, single thread, one JSON line per case.

Run by scripts/bench-peers.sh in its own venv (pip install wechatpy cryptography):
    python wechatpy_bench.py PAYLOADS.json [secs] [rounds]
Cases match wxshop-bench notify: pay_md5, pay_hmac, refund. wechatpy's parse_payment_result
checks MD5 only, so it refuses the HMAC-SHA256 payload: that case is reported as refused.
"""
import json
import statistics
import sys
import time

import wechatpy
from wechatpy.pay import WeChatPay


def rate(fn, secs):
    n = 0
    start = time.perf_counter()
    while True:
        for _ in range(64):
            fn()
        n += 64
        e = time.perf_counter() - start
        if e >= secs:
            return n / e


def main():
    p = json.load(open(sys.argv[1], encoding="utf-8"))
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    pay = WeChatPay(appid=p["appid"], api_key=p["key"], mch_id=p["mch_id"])
    cases = {
        "pay_md5": lambda: pay.parse_payment_result(p["pay_md5"]),
        "pay_hmac": lambda: pay.parse_payment_result(p["pay_hmac"]),
        "refund": lambda: pay.parse_refund_notify_result(p["refund"]),
    }
    for name, fn in cases.items():
        out = {"impl": "wechatpy", "version": wechatpy.__version__, "case": name}
        try:
            r = fn()
            assert r, "empty result"
        except Exception as e:  # noqa: BLE001 - a refusal is a result here
            out.update({"refused": type(e).__name__})
            print(json.dumps(out), flush=True)
            continue
        rate(fn, min(secs, 0.3))
        rates = [rate(fn, secs) for _ in range(rounds)]
        ops = statistics.median(rates)
        out.update({"ops_per_sec": ops, "ns_per_op": 1e9 / ops, "rounds": rounds,
                    "round_secs": secs, "min": min(rates), "max": max(rates)})
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
