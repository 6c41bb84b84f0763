// The wxlocal the integration tests run against: build (or find) the binary, start
// `wxlocal serve --store memory --seed` on a free port, stop it; and a `wx` for Node backed by it
// (real HTTP for wx.request, the sandbox for wx.login and the cashier). Shared by
// integration.test.js (the client) and example.test.js (the example mini program's pages).
//
// Binary: $WXLOCAL_BIN as given, else what `cargo build -p wxlocal --bin wxlocal` builds, run
// once per test process so the tests never meet a server older than its sources (a no-op, about
// a second, when nothing changed; CARGO_TARGET_DIR is honoured, cargo names the executable).
//
// Node's test runner runs every .js file under test/, this one too: it defines functions only,
// so it "passes" as an empty test file.
'use strict';

const assert = require('node:assert/strict');
const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const crypto = require('node:crypto');

const REPO = path.resolve(__dirname, '..', '..', '..');
const START_TIMEOUT_MS = 20000;
const BUILD_TIMEOUT_MS = 40 * 60 * 1000; // from scratch: 18 min measured on a busy 2-core machine; up to date: ~1 s

let bin = null; // the wxlocal executable, once known

/**
 * The wxlocal to run: $WXLOCAL_BIN, else the executable `cargo build` reports after building
 * (or finding up to date) the current sources, once per test run.
 */
function ensureBinary() {
  if (bin) return bin;
  if (process.env.WXLOCAL_BIN) {
    if (!fs.existsSync(process.env.WXLOCAL_BIN)) throw new Error(`WXLOCAL_BIN=${process.env.WXLOCAL_BIN} does not exist`);
    bin = process.env.WXLOCAL_BIN;
    return bin;
  }
  const args = ['build', '-p', 'wxlocal', '--bin', 'wxlocal', '--message-format=json-render-diagnostics'];
  process.stderr.write(`# cargo ${args.slice(0, 5).join(' ')} in ${REPO}${process.env.CARGO_TARGET_DIR ? ` (CARGO_TARGET_DIR=${process.env.CARGO_TARGET_DIR})` : ''}\n`);
  const r = spawnSync('cargo', args, {
    cwd: REPO,
    stdio: ['ignore', 'pipe', 'inherit'],
    encoding: 'utf8',
    timeout: BUILD_TIMEOUT_MS,
    maxBuffer: 256 * 1024 * 1024,
  });
  if (r.error) throw new Error(`cargo build -p wxlocal failed to run: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`cargo build -p wxlocal exited with ${r.status}`);
  for (const line of r.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      continue;
    }
    if (msg.reason === 'compiler-artifact' && msg.target && msg.target.name === 'wxlocal' && msg.executable) bin = msg.executable;
  }
  if (!bin || !fs.existsSync(bin)) throw new Error(`cargo build -p wxlocal succeeded but named no wxlocal executable (${bin})`);
  return bin;
}

/**
 * What the server signs paySign with, found the way wxlocal finds it: the variable from the
 * environment it was started with, else its local default (`LOCAL_DEFAULTS` in
 * local/src/gateway.rs). Blank counts as unset, as in shared/src/config.rs.
 */
function serverSigning(env) {
  const src = fs.readFileSync(path.join(REPO, 'local', 'src', 'gateway.rs'), 'utf8');
  const get = (name) => {
    const m = new RegExp(`\\("${name}", "([^"]*)"\\)`).exec(src);
    const v = Object.prototype.hasOwnProperty.call(env, name) ? env[name] : m ? m[1] : undefined;
    return v && v.trim() ? v : undefined;
  };
  const apiKey = get('WXPAY_API_KEY');
  const appid = get('WX_APPID');
  assert.ok(apiKey && appid, 'WXPAY_API_KEY / WX_APPID not found in the environment or local/src/gateway.rs LOCAL_DEFAULTS');
  // paySign's appId is the appid the user's openid belongs to: sub_appid in provider mode.
  return { appId: get('WXPAY_SUB_APPID') || appid, apiKey };
}

/** The v2 paySign (WECHAT_PAY_V2.md §4.1): the five keys sorted, `&key=`, MD5 or HMAC-SHA256. */
function paySign(p, appId, apiKey) {
  const s = `appId=${appId}&nonceStr=${p.nonceStr}&package=${p.package}&signType=${p.signType}&timeStamp=${p.timeStamp}&key=${apiKey}`;
  if (p.signType === 'MD5') return crypto.createHash('md5').update(s, 'utf8').digest('hex').toUpperCase();
  if (p.signType === 'HMAC-SHA256') return crypto.createHmac('sha256', apiKey).update(s, 'utf8').digest('hex').toUpperCase();
  return null;
}

/**
 * What WeChat's cashier refuses in the parameters it is opened with, or null. `order` is the
 * unifiedOrder reply they came from. A fund_type 1 order's parameters are signed by WeChat
 * (getpaymentparams, signType RSA), so only their presence is checked.
 */
function cashierProblem(p, order, signing) {
  if (typeof p.timeStamp !== 'string' || !/^\d+$/.test(p.timeStamp)) return `timeStamp must be a string of seconds, got ${JSON.stringify(p.timeStamp)}`;
  if (typeof p.nonceStr !== 'string' || p.nonceStr.length === 0 || p.nonceStr.length > 32) return `bad nonceStr ${JSON.stringify(p.nonceStr)}`;
  if (typeof p.package !== 'string' || !/^prepay_id=\S+$/.test(p.package)) return `package must be "prepay_id=…", got ${JSON.stringify(p.package)}`;
  if (typeof p.paySign !== 'string' || !p.paySign) return 'no paySign';
  if (Number(order.fund_type) === 1) return p.signType === 'RSA' ? null : `a fund_type 1 order is signed RSA, got ${p.signType}`;
  if (p.signType !== 'MD5' && p.signType !== 'HMAC-SHA256') return `signType must be MD5 or HMAC-SHA256, got ${JSON.stringify(p.signType)}`;
  const want = paySign(p, signing.appId, signing.apiKey);
  return p.paySign === want ? null : `支付验证签名失败 (paySign ${p.paySign}, expected ${want})`;
}

function startWxlocal(extraEnv) {
  const BIN = ensureBinary();
  return new Promise((resolve, reject) => {
    const args = ['serve', '--addr', '127.0.0.1:0', '--store', 'memory', '--seed'];
    const env = Object.assign({}, process.env, { NO_COLOR: '1' }, extraEnv || {});
    const child = spawn(BIN, args, { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let errTail = '';
    child.stderr.on('data', (b) => {
      errTail = (errTail + b.toString().replace(/\x1b\[[0-9;]*m/g, '')).slice(-4000);
    });
    const stderr = () => (errTail.trim() ? `\n--- wxlocal stderr (tail) ---\n${errTail.trim()}` : ' (no stderr output)');
    let settled = false;
    const fail = (why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      try {
        child.kill('SIGKILL');
      } catch (e) {
        /* already gone */
      }
      reject(new Error(`wxlocal could not serve: \`${BIN} ${args.join(' ')}\` ${why}${stderr()}`));
    };
    const timer = setTimeout(() => fail(`printed no "wxlocal listening on http://…" line within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
    child.on('error', (e) => fail(`failed to start: ${e.message}`));
    child.on('exit', (code, sig) => fail(`exited early (code ${code}, signal ${sig})`));
    const lines = readline.createInterface({ input: child.stdout });
    lines.once('line', (line) => {
      const m = /^wxlocal listening on (http:\/\/\S+)\s*$/.exec(line);
      if (!m) return fail(`printed an unexpected first line: ${JSON.stringify(line)}`);
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.removeAllListeners('exit');
      lines.on('line', () => {}); // keep draining stdout
      resolve({ child, baseUrl: m[1].replace(/\/+$/, ''), stderr, signing: serverSigning(env) });
    });
  });
}

/** Stops a server startWxlocal started (SIGTERM, SIGKILL after 3 s) → resolves once it exited. */
function stopWxlocal(s) {
  if (!s) return Promise.resolve();
  const { child } = s;
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const hard = setTimeout(() => child.kill('SIGKILL'), 3000);
    child.once('exit', () => {
      clearTimeout(hard);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** POST JSON with a bounded wait; returns { status, body }. */
async function postJson(url, body, headers) {
  const res = await fetch(url, {
    method: 'POST',
    headers: Object.assign({ 'content-type': 'application/json' }, headers || {}),
    body: JSON.stringify(body === undefined ? {} : body),
    signal: AbortSignal.timeout(10000),
  });
  const text = await res.text();
  let parsed = text;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    /* keep text, as wx.request does for non-JSON bodies */
  }
  return { status: res.status, body: parsed };
}

/**
 * A `wx` for Node backed by wxlocal. `cashier` decides what the user does in the cashier:
 * 'pay' (pay through the sandbox) or 'cancel'. Either way the cashier first checks the payment
 * parameters against `signing` ({appId, apiKey}: the started server's `signing`) and fails with
 * the reason when WeChat's would refuse them. `loseAnswer(name, n)` → true makes the n-th
 * (0-based) call of function `name` reach the server and complete there, but report a timeout
 * to the caller: what a phone sees when the server finishes as its request times out.
 * `scene` is the enter scene (default 1001), read at each purchase.
 * `orderCheck` (`res.data` of WeChat's pre-order check: { requireOrder, requiredFundType,
 * traceId }) gives the stub a `wx.checkBeforeAddOrder` that answers it; without it the stub has
 * none, as an older base library.
 */
function sandboxWx(baseUrl, opts) {
  opts = opts || {};
  const storage = new Map();
  const log = []; // [{ name, status }]
  const prepayToOrder = new Map(); // payment.package → unifiedOrder reply (what WeChat knows about the prepay)
  const sent = new Map(); // function name → calls so far
  let logins = 0;
  const signing = opts.signing;
  const cashier = (p, api) => {
    const order = prepayToOrder.get(p.package);
    if (!order) return setImmediate(() => p.fail({ errMsg: `${api}:fail unknown package ${p.package}` }));
    const problem = cashierProblem(p, order, signing);
    if (problem) return setImmediate(() => p.fail({ errMsg: `${api}:fail ${problem}` }));
    if (opts.cashier === 'cancel') return setImmediate(() => p.fail({ errMsg: `${api}:fail cancel` }));
    // fund_type 1 orders are paid through the trading component (out_order_id), others through Pay v2.
    const body = Number(order.fund_type) === 1 ? { out_order_id: order.out_trade_no } : { out_trade_no: order.out_trade_no };
    postJson(`${baseUrl}/sandbox/_control/pay`, body).then(
      (r) => (r.status === 200 ? p.success({ errMsg: `${api}:ok` }) : p.fail({ errMsg: `${api}:fail sandbox ${r.status} ${JSON.stringify(r.body)}` })),
      (e) => p.fail({ errMsg: `${api}:fail ${e.message}` })
    );
  };
  return {
    storage,
    log,
    get logins() {
      return logins;
    },
    getStorageSync: (k) => (storage.has(k) ? storage.get(k) : ''),
    setStorageSync: (k, v) => storage.set(k, v),
    removeStorageSync: (k) => storage.delete(k),
    getEnterOptionsSync: () => ({ scene: opts.scene || 1001, path: 'pages/buy/buy', query: {} }),
    login: ({ success, fail }) => {
      logins += 1;
      postJson(`${baseUrl}/sandbox/_control/login`, { user: opts.user || 'alice' }).then(
        (r) => (r.status === 200 && r.body && r.body.code ? success({ code: r.body.code, errMsg: 'login:ok' }) : fail({ errMsg: `login:fail sandbox ${r.status} ${JSON.stringify(r.body)}` })),
        (e) => fail({ errMsg: `login:fail ${e.message}` })
      );
    },
    request: ({ url, method, data, header, timeout, success, fail }) => {
      const name = url.replace(/^.*\/fn\//, '');
      const nth = sent.get(name) || 0;
      sent.set(name, nth + 1);
      const lost = Boolean(opts.loseAnswer && opts.loseAnswer(name, nth));
      fetch(url, {
        method: method || 'GET',
        headers: header || {},
        body: method === 'GET' ? undefined : typeof data === 'string' ? data : JSON.stringify(data),
        signal: AbortSignal.timeout(timeout || 10000),
      })
        .then(async (res) => {
          const text = await res.text();
          let body = text;
          try {
            body = JSON.parse(text);
          } catch (e) {
            /* non-JSON stays a string */
          }
          if (lost) {
            log.push({ name, status: 0 });
            return fail({ errMsg: 'request:fail timeout' });
          }
          log.push({ name, status: res.status });
          if (name === 'unifiedOrder' && res.status === 200 && body && body.payment) {
            prepayToOrder.set(body.payment.package, body);
          }
          success({ statusCode: res.status, data: body, header: Object.fromEntries(res.headers) });
        })
        .catch((e) => {
          log.push({ name, status: 0 });
          fail({ errMsg: `request:fail ${e.message}` });
        });
    },
    requestPayment: (p) => cashier(p, 'requestPayment'),
    requestOrderPayment: (p) => cashier(p, 'requestOrderPayment'),
    checkBeforeAddOrder: opts.orderCheck
      ? (o) => setImmediate(() => o.success({ errMsg: 'checkBeforeAddOrder:ok', data: opts.orderCheck }))
      : undefined,
  };
}

module.exports = {
  REPO,
  START_TIMEOUT_MS,
  BUILD_TIMEOUT_MS,
  ensureBinary,
  serverSigning,
  paySign,
  cashierProblem,
  startWxlocal,
  stopWxlocal,
  postJson,
  sandboxWx,
};
