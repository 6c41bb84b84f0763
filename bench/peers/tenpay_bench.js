// tenpay's notification parsing on bench/payloads.json, single thread, one JSON line per case.
//
// Run by scripts/bench-peers.sh from a scratch folder with `npm install tenpay`:
//     node tenpay_bench.js PAYLOADS.json [secs] [rounds]
// `Payment._parse(xml, 'middleware_pay')` is what tenpay's pay middleware runs (xml2js, return
// and result codes, appid/mch_id, sign with `sign_type || MD5`); refunds use
// 'middleware_refund' (appid/mch_id, AES-256-ECB of req_info, xml2js again).
'use strict';
const fs = require('fs');
const path = require('path');
const tenpay = require('tenpay');

async function rate(fn, secs) {
  let n = 0;
  const start = process.hrtime.bigint();
  for (;;) {
    for (let i = 0; i < 64; i++) await fn();
    n += 64;
    const e = Number(process.hrtime.bigint() - start) / 1e9;
    if (e >= secs) return n / e;
  }
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

async function main() {
  const p = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const secs = Number(process.argv[3] || 1);
  const rounds = Number(process.argv[4] || 5);
  const version = require(path.join(path.dirname(require.resolve('tenpay')), '..', 'package.json')).version;
  const api = new tenpay({ appid: p.appid, mchid: p.mch_id, partnerKey: p.key });
  const cases = {
    pay_md5: () => api._parse(p.pay_md5, 'middleware_pay'),
    pay_hmac: () => api._parse(p.pay_hmac, 'middleware_pay'),
    refund: () => api._parse(p.refund, 'middleware_refund'),
  };
  for (const [name, fn] of Object.entries(cases)) {
    const out = { impl: 'tenpay', version, case: name };
    try {
      const r = await fn();
      if (!r) throw new Error('empty result');
    } catch (e) {
      out.refused = e.message;
      console.log(JSON.stringify(out));
      continue;
    }
    await rate(fn, Math.min(secs, 0.3));
    const rates = [];
    for (let i = 0; i < rounds; i++) rates.push(await rate(fn, secs));
    const ops = median(rates);
    Object.assign(out, { ops_per_sec: ops, ns_per_op: 1e9 / ops, rounds, round_secs: secs,
      min: Math.min(...rates), max: Math.max(...rates) });
    console.log(JSON.stringify(out));
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
