#!/usr/bin/env python3
"""Builds the fuzz seed corpora in fuzz/seeds/<target>/ from the shared test vectors
(../shared/vectors/pay_v2.json) and the fixtures in shared/tests/*.rs.

Deterministic: each seed is named by the SHA-1 of its bytes (as libFuzzer names corpus
entries), so re-running it only adds files when the vectors or fixtures gained cases.
Targets with a mode byte (refund_decrypt, push_decrypt) get one seed per useful mode.

Usage: python3 fuzz/seed.py   (from anywhere; fuzz/seed.sh calls it, then copies the seeds
into fuzz/corpus/ for `cargo fuzz run`).
"""

import base64
import hashlib
import json
import os
import re
import shutil
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
VECTORS = os.path.join(ROOT, "..", "shared", "vectors", "pay_v2.json")
TESTS = os.path.join(ROOT, "shared", "tests")
SEEDS = os.path.join(FUZZ, "seeds")
TARGETS = ["xml_decode", "notify_verify", "refund_decrypt", "push_decrypt", "json_events"]

# Must match the constants in fuzz_targets/*.rs.
PAY_KEY = "192006250b4c09247ec02edce69f6a2d"
PUSH_TOKEN = "test-token"
PUSH_APPID = "wx1234567890abcdef"
PUSH_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
PUSH_TS = "1700000000"
PUSH_NONCE = "1320562132"

# From shared/tests/push_events.rs: the header its `xml()` / `json()` helpers put around a body.
HEAD_XML = (
    "<ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>"
    "<FromUserName><![CDATA[oWeChatTeamFixedOpenid]]></FromUserName>"
    "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType>"
)
HEAD_JSON = (
    '"ToUserName":"gh_0123456789ab","FromUserName":"oWeChatTeamFixedOpenid",'
    '"CreateTime":1700000000,"MsgType":"event"'
)

seeds = {t: set() for t in TARGETS}


def add(target, data, mode=None):
    if isinstance(data, str):
        data = data.encode()
    if mode is not None:
        data = bytes([mode]) + data
    if len(data) <= 4096:  # libFuzzer's default -max_len
        seeds[target].add(data)


# ---------------------------------------------------------------- Rust string literals


def rust_literals(src):
    """Yields the value of every string literal in Rust source, in order (raw, byte and
    normal strings; comments and char literals skipped)."""
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            i = src.find("\n", i)
            i = n if i < 0 else i
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c == "'":
            # char literal ('x', '\n', '\'', '"') or a lifetime ('a)
            if src.startswith("'\\", i):
                j = src.find("'", i + 2 if src[i + 2] != "'" else i + 3)
                i = j + 1
            elif i + 2 < n and src[i + 2] == "'":
                i += 3
            else:
                i += 1
        elif (c in "rb") and not (i > 0 and (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', src[i:])
            if m:
                hashes = m.group(1)
                start = i + m.end()
                end = src.find('"' + hashes, start)
                yield src[start:end]
                i = end + 1 + len(hashes)
            elif src.startswith('b"', i):
                s, i = read_escaped(src, i + 2)
                yield s
            else:
                i += 1
        elif c == '"':
            s, i = read_escaped(src, i + 1)
            yield s
        else:
            i += 1


def read_escaped(src, i):
    out = []
    while src[i] != '"':
        if src[i] == "\\":
            e = src[i + 1]
            if e == "\n":  # line continuation: skip the newline and leading whitespace
                i += 2
                while src[i] in " \t\n\r":
                    i += 1
                continue
            if e == "u":
                j = src.index("}", i)
                out.append(chr(int(src[i + 3 : j].replace("_", ""), 16)))
                i = j + 1
                continue
            if e == "x":
                out.append(chr(int(src[i + 2 : i + 4], 16)))
                i += 4
                continue
            out.append({"n": "\n", "t": "\t", "r": "\r", "0": "\0"}.get(e, e))
            i += 2
        else:
            out.append(src[i])
            i += 1
    return "".join(out), i + 1


def json_macros(src):
    """The `json!({...})` literals of Rust source that are plain JSON (after dropping
    integer suffixes and digit separators); the ones with Rust expressions are skipped."""
    for m in re.finditer(r"json!\(", src):
        i = m.end()
        if src[i] not in "{[":
            continue
        depth, j, in_str = 0, i, False
        while j < len(src):
            ch = src[j]
            if in_str:
                if ch == "\\":
                    j += 1
                elif ch == '"':
                    in_str = False
            elif ch == '"':
                in_str = True
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        text = src[i : j + 1]
        text = re.sub(r"(\d)_(?=\d)", r"\1", text)
        text = re.sub(r"(\d)(u64|i64|u32|i32|usize)\b", r"\1", text)
        try:
            yield json.loads(text)
        except ValueError:
            continue


def nested_objects(v):
    """Every JSON object inside `v` (a reply's `data`, `order`, list items…)."""
    if isinstance(v, dict):
        yield v
        for x in v.values():
            yield from nested_objects(x)
    elif isinstance(v, list):
        for x in v:
            yield from nested_objects(x)


# ---------------------------------------------------------------- crypto for push envelopes


def sha1_hex(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def push_encrypt(msg: bytes):
    """Safe-mode `Encrypt` value (AES-256-CBC, 32-byte PKCS#7), or None without the
    `cryptography` package (the envelope seeds are then skipped)."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        return None
    key = base64.b64decode(PUSH_AES_KEY + "=")[:32]
    rand16 = hashlib.md5(msg).digest()  # deterministic seeds
    plain = rand16 + len(msg).to_bytes(4, "big") + msg + PUSH_APPID.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


# ---------------------------------------------------------------- classification


def is_push_message(s):
    return "ToUserName" in s or "MsgType" in s


def add_push_message(s):
    add("json_events", s)
    add("push_decrypt", s, 0)
    add("push_decrypt", s, 1)
    add("push_decrypt", s[:200], 4)
    enc = push_encrypt(s.encode())
    if enc is None:
        return
    if s.lstrip().startswith("<"):
        env = "<xml><ToUserName><![CDATA[gh_0123456789ab]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt></xml>" % enc
    else:
        env = json.dumps({"ToUserName": "gh_0123456789ab", "Encrypt": enc}, separators=(",", ":"))
    add("push_decrypt", env, 2)
    add("push_decrypt", enc, 3)
    sig = sha1_hex(PUSH_TOKEN, PUSH_TS, PUSH_NONCE, enc)
    query = "signature=%s&timestamp=%s&nonce=%s&encrypt_type=aes&msg_signature=%s" % (
        sha1_hex(PUSH_TOKEN, PUSH_TS, PUSH_NONCE), PUSH_TS, PUSH_NONCE, sig)
    add("push_decrypt", query + "\n" + env, 5)


def classify(s):
    t = s.strip()
    if "{HEAD" in s or "{event}" in s or "{body}" in s:
        return  # format! templates, not data
    if t.startswith("<xml") or t.startswith("<?xml"):
        add("xml_decode", s)
        if is_push_message(s):
            add_push_message(s)
        else:
            add("notify_verify", s)
            if t.startswith("<xml>"):
                # the same flat fields as a refund's inner <root>
                add("refund_decrypt", "<root>" + t[5:-6] + "</root>", 4)
            if "req_info" in s:
                add("refund_decrypt", s, 0)
    elif t.startswith("<root"):
        add("xml_decode", s)
        add("refund_decrypt", s, 3)
        add("refund_decrypt", s, 4)
    elif t.startswith("{") or t.startswith("["):
        try:
            v = json.loads(t)
        except ValueError:
            return
        if isinstance(v, dict) and is_push_message(t):
            add_push_message(s)
        else:
            for o in nested_objects(v):
                add("json_events", json.dumps(o, ensure_ascii=False, separators=(",", ":")))
    elif "timestamp=" in s or "signature=" in s:
        add("push_decrypt", s, 5)


def from_tests():
    for name in sorted(os.listdir(TESTS)):
        if not name.endswith(".rs"):
            continue
        src = open(os.path.join(TESTS, name), encoding="utf-8").read()
        event = "open_product_spu_audit"
        for lit in rust_literals(src):
            t = lit.strip()
            if re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", t) and ("product" in t or "notify" in t
                                                             or "aftersale" in t or "_" in t):
                event = t  # the event name a `both()` / `xml()` / `json()` call wraps
            elif t.startswith("<") and not t.startswith(("<xml", "<root", "<?xml")) and "{" not in t:
                add_push_message("<xml>%s<Event><![CDATA[%s]]></Event>%s</xml>" % (HEAD_XML, event, lit))
                add("xml_decode", "<xml>%s</xml>" % lit)
            elif t.startswith('"') and ":" in t:
                body = "{%s,\"Event\":\"%s\",%s}" % (HEAD_JSON, event, lit)
                try:
                    json.loads(body)
                except ValueError:
                    continue
                add_push_message(body)
                try:
                    for o in nested_objects(json.loads("{%s}" % lit)):
                        add("json_events", json.dumps(o, ensure_ascii=False, separators=(",", ":")))
                except ValueError:
                    pass
            else:
                classify(lit)
        for v in json_macros(src):
            for o in nested_objects(v):
                add("json_events", json.dumps(o, ensure_ascii=False, separators=(",", ":")))


def from_vectors():
    v = json.load(open(VECTORS, encoding="utf-8"))
    for k in ("generated_payment_notify_md5", "generated_payment_notify_hmac"):
        add("notify_verify", v[k]["xml"])
        add("xml_decode", v[k]["xml"])
    r = v["generated_refund_notify"]
    add("refund_decrypt", r["xml"], 0)
    add("xml_decode", r["xml"])
    add("xml_decode", r["plaintext"])
    add("refund_decrypt", r["plaintext"], 3)
    add("refund_decrypt", r["plaintext"], 4)
    m = re.search(r"<req_info><!\[CDATA\[(.*?)\]\]></req_info>", r["xml"], re.S)
    if m:
        add("refund_decrypt", m.group(1), 2)
    g = v["refund_notify_gopay"]
    gopay_body = (
        "<xml><return_code>SUCCESS</return_code><appid><![CDATA[wx2421b1c4370ec43b]]></appid>"
        "<mch_id><![CDATA[10000100]]></mch_id><nonce_str><![CDATA[TeqClE3i0mvn3DrK]]></nonce_str>"
        "<req_info><![CDATA[%s]]></req_info></xml>" % g["req_info"]
    )
    add("refund_decrypt", gopay_body, 1)
    add("refund_decrypt", g["plaintext"], 3)
    add("refund_decrypt", g["plaintext"], 4)
    add("xml_decode", g["plaintext"])
    # The signing examples as messages: unsigned, and with the published signatures.
    for k in ("official_sign_example", "wechatpy_test_vector"):
        e = v[k]
        fields = dict(e["params"])
        xml = lambda f: "<xml>%s</xml>" % "".join(
            "<%s><![CDATA[%s]]></%s>" % (a, b, a) for a, b in sorted(f.items()))
        add("xml_decode", xml(fields))
        add("notify_verify", xml(dict(fields, return_code="SUCCESS", sign=e["md5"])))
        add("notify_verify", xml(dict(fields, return_code="SUCCESS", sign=e["hmac_sha256"],
                                      sign_type="HMAC-SHA256")))
    # A few hand-written edge cases every target should start from.
    for s in ["<xml/>", "<xml></xml>", "<xml><a/></xml>", "<xml><a>&amp;&lt;</a></xml>",
              "<xml><a><![CDATA[]]>]]&gt;</a></xml>", "<root><a>1</a></root>"]:
        add("xml_decode", s)
    # Crashes found by fuzzing, kept as regression seeds (docs/RELIABILITY.md, Fuzzing).
    add("xml_decode", "<xml><<//></xml>")
    add("notify_verify", "<xml><],,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,.******\x02<//></xml>")
    add("push_decrypt", "signature=x&timestamp=1&nonce=2&echostr=e\n", 5)
    add("push_decrypt", "", 4)
    add("json_events", '{"errcode":0,"errmsg":"ok"}')
    add("json_events", '{"order_id":"18446744073709551615","final_price":"12.34"}')


def main():
    from_vectors()
    from_tests()
    for t in TARGETS:
        d = os.path.join(SEEDS, t)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        for data in seeds[t]:
            with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
                f.write(data)
        print("%-15s %4d seeds" % (t, len(seeds[t])))
    if not all(seeds.values()):
        sys.exit("a target has no seeds")


if __name__ == "__main__":
    main()
