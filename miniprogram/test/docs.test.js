// The READMEs and docs/API.md against the sources they describe: each test reads both, so a
// change on one side that the other does not follow fails here. No server, no build.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');

const REPO = path.resolve(__dirname, '..', '..');
const read = (rel) => fs.readFileSync(path.join(REPO, rel), 'utf8');

/** The field names of `struct <name> { ... }` in Rust source `src`. */
function structFields(src, name) {
  const m = new RegExp(`struct ${name} \\{([\\s\\S]*?)\\n\\}`).exec(src);
  assert.ok(m, `struct ${name} not found`);
  return [...m[1].matchAll(/^\s*(?:pub\s+)?([a-z_][a-z0-9_]*)\s*:/gm)].map((f) => f[1]);
}

/** The section of docs/API.md under `## <heading>`, up to the next `## ` heading. */
function apiSection(heading) {
  const s = read('docs/API.md').split(/\n(?=## )/).find((x) => x.startsWith(`## ${heading}\n`));
  assert.ok(s, `no "## ${heading}" section in docs/API.md`);
  return s;
}

/** One part (`Request`, `Answer`, `Errors`) of an API.md section: from its bold label to the next. */
function apiPart(heading, part) {
  const labels = 'Request|Answer|Errors|Behaviour worth knowing';
  const m = new RegExp(`\\n\\*\\*${part}\\*\\*[\\s\\S]*?(?=\\n\\*\\*(?:${labels})\\*\\*|$)`).exec(apiSection(heading));
  assert.ok(m, `no **${part}** in docs/API.md's ${heading} section`);
  return m[0];
}

/** The table row of `text` whose first cell names `name` in backticks. */
function rowNaming(text, name) {
  return text.split('\n').find((l) => l.startsWith('| ') && l.split(' | ')[0].includes('`' + name + '`'));
}

test('docs/API.md\'s unifiedOrder request table has a row for every field the handler accepts, address parts included', () => {
  const handler = read('shared/src/handlers/unified_order.rs');
  const fields = structFields(handler, 'UnifiedOrderRequest');
  assert.ok(fields.includes('address'), `UnifiedOrderRequest fields: ${fields}`);
  const request = apiPart('unifiedOrder', 'Request');
  for (const f of fields) assert.ok(rowNaming(request, f), `unifiedOrder's Request table has no row for \`${f}\``);
  const address = rowNaming(request, 'address');
  for (const f of structFields(read('shared/src/domain/order.rs'), 'Address')) {
    assert.match(address, new RegExp(`\\b${f}\\b`), `the address row does not name \`${f}\``);
  }
  assert.ok(rowNaming(apiPart('unifiedOrder', 'Errors').replace(/^\| \d+ \| /gm, '| '), 'ADDRESS_REQUIRED'), 'the Errors table says what a missing address gets');
});

test('docs/API.md\'s login answer table has a row for every field login answers, which the client reads', () => {
  const fields = structFields(read('shared/src/handlers/login.rs'), 'LoginResult');
  for (const f of ['fund_type', 'trading_component']) assert.ok(fields.includes(f), `LoginResult fields: ${fields}`);
  const answer = apiPart('login', 'Answer');
  for (const f of fields) assert.ok(rowNaming(answer, f), `login's Answer table has no row for \`${f}\``);
  // What the client stores and holds against wx.checkBeforeAddOrder.
  const client = read('miniprogram/wxshop.js');
  for (const f of ['fund_type', 'trading_component']) assert.ok(client.includes(`body.${f}`), `wxshop.js does not read login's ${f}`);
});

test('docs/API.md gives every field of the order answers, freight included, and the client README the amounts', () => {
  const fields = (file, name) => structFields(read(file), name).filter((f) => f !== 'order_info').concat(name === 'UnifiedOrderResult' ? ['orderInfo'] : []);
  const sections = {
    UnifiedOrderResult: ['shared/src/handlers/unified_order.rs', 'unifiedOrder'],
    "OrderView<'a>": ['shared/src/handlers/query_order.rs', 'queryOrder'],
  };
  for (const [name, [file, heading]] of Object.entries(sections)) {
    const got = fields(file, name);
    assert.ok(got.includes('total_fee') && got.includes('freight'), `${name} fields: ${got}`);
    const answer = apiPart(heading, 'Answer');
    for (const f of got) assert.ok(rowNaming(answer, f), `${heading}'s Answer table has no row for \`${f}\``);
  }
  const client = read('miniprogram/README.md');
  const orders = client.split('\n- ').find((b) => b.startsWith('`shop.orders`'));
  assert.ok(orders, 'no shop.orders entry in miniprogram/README.md');
  for (const f of ['total_fee', 'freight', 'refunded_fee']) assert.ok(orders.includes(`\`${f}\``), `shop.orders does not name ${f}`);
});

test('every route in ROUTES has a section in docs/API.md and a row in the README\'s route table linking to it', () => {
  const src = read('shared/src/handlers/mod.rs');
  const table = /pub static ROUTES: &\[Route\] = &\[([\s\S]*?)\n\];/.exec(src);
  assert.ok(table, 'ROUTES not found in shared/src/handlers/mod.rs');
  const routes = [...table[1].matchAll(/route\(\s*"([A-Z]+)",\s*"([^"]+)"/g)].map((m) => `${m[1]} ${m[2]}`);
  for (const r of ['POST /fn/login', 'GET /callbacks/wechat', 'POST /admin/funds']) assert.ok(routes.includes(r), `the scan missed ${r}: ${routes}`);
  // A section names its routes in its first paragraph, e.g. "`POST /fn/login` · mini program · …".
  const sections = read('docs/API.md').split(/\n(?=## )/).filter((s) => s.startsWith('## '));
  const readme = read('README.md');
  const start = readme.indexOf('\n## API\n');
  assert.ok(start >= 0, 'no "## API" section in README.md');
  const rows = readme.slice(start, readme.indexOf('\n## ', start + 1)).split('\n').filter((l) => l.startsWith('| `'));
  // GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
  const anchor = (h) => h.toLowerCase().replace(/[^a-z0-9 _-]/g, '').replace(/ /g, '-');
  for (const r of routes) {
    const section = sections.find((s) => (s.split('\n\n')[1] || '').includes('`' + r + '`'));
    assert.ok(section, `docs/API.md has no section whose first paragraph names \`${r}\``);
    const row = rows.find((l) => l.split(' | ')[0].includes('`' + r + '`'));
    assert.ok(row, `README.md's route table has no row for \`${r}\``);
    const link = `(docs/API.md#${anchor(section.slice(3, section.indexOf('\n')))})`;
    assert.ok(row.includes(link), `README.md's row for \`${r}\` does not link ${link}: ${row}`);
  }
});

test('the miniprogram README tells phone users how to make wxlocal listen beyond loopback', () => {
  const main = read('local/src/main.rs');
  const m = /async fn serve[\s\S]*?parse_addr\([^,]*"--addr"[^,]*,\s*"([^"]+)"\)/.exec(main);
  assert.ok(m, 'wxlocal serve\'s default --addr not found in local/src/main.rs');
  const readme = read('miniprogram/README.md');
  const lan = readme.split('\n\n').find((p) => /LAN address/.test(p));
  assert.ok(lan, 'the README no longer mentions a LAN address');
  if (/^(127\.|localhost|\[::1\])/.test(m[1])) {
    assert.match(lan, /--addr 0\.0\.0\.0:\d+/, `serve listens on ${m[1]} by default: the LAN advice must say --addr 0.0.0.0`);
    assert.ok(lan.includes(m[1]), `the README should name the default address ${m[1]}`);
  }
});

test('the client and its README point the mini program at the filed domain, not execute-api', () => {
  // docs/DEPLOY.md: the mini program may only call an ICP-filed HTTPS domain (DomainName);
  // API Gateway's own URL cannot be filed, so devices refuse it.
  assert.match(read('docs/DEPLOY.md'), /ICP-filed/);
  const config = read('miniprogram/config.js');
  const base = /baseUrl:\s*'([^']+)'/.exec(config);
  assert.ok(base, 'no baseUrl in miniprogram/config.js');
  assert.doesNotMatch(base[1], /execute-api/, 'config.js baseUrl is an execute-api URL');
  const settings = read('miniprogram/README.md').split('\n\n').find((p) => /request legal domain/.test(p));
  assert.ok(settings, 'the README no longer says which request legal domain to add');
  assert.match(settings, /DomainName/);
});

test('the error codes the client README gives as examples are codes the server sends', () => {
  const readme = read('miniprogram/README.md');
  const line = readme.split('\n').find((l) => /`code` is the server's/.test(l));
  assert.ok(line, 'no example codes line in miniprogram/README.md');
  const sources = ['shared/src/handlers', 'shared/src']
    .flatMap((d) => fs.readdirSync(path.join(REPO, d)).filter((f) => f.endsWith('.rs')).map((f) => read(`${d}/${f}`)))
    .join('\n');
  for (const m of line.matchAll(/`([A-Z][A-Z_]+)`/g)) {
    assert.ok(sources.includes(`"${m[1]}"`), `README example code ${m[1]} is not a code the server sends`);
  }
});

test('the client README and wxshop.js state the unifiedOrder timeouts as the template sets them', () => {
  const template = read('infra/template.yaml');
  const fn = /UnifiedOrderFunction:[\s\S]*?Timeout:\s*(\d+)/.exec(template);
  assert.ok(fn, 'no UnifiedOrderFunction Timeout in infra/template.yaml');
  const fnSecs = Number(fn[1]);
  const client = read('miniprogram/wxshop.js');
  const ms = /requestTimeoutMs:\s*(\d+)/.exec(client);
  assert.ok(ms, 'no requestTimeoutMs default in wxshop.js');
  const clientSecs = Number(ms[1]) / 1000;
  assert.ok(clientSecs <= fnSecs, `the client's ${clientSecs} s outlasts the function's ${fnSecs} s`);
  const readme = read('miniprogram/README.md');
  assert.ok(readme.includes(`(${clientSecs} s)`), `the README does not give the client's ${clientSecs} s`);
  assert.ok(readme.includes(`${fnSecs} s`), `the README does not give unifiedOrder's ${fnSecs} s`);
  assert.doesNotMatch(readme + client, /timeout (\(\d+ s\) )?equals the (server )?function'?s/i);
});

/** Every `.rs` file under `dir` (relative to the repo), recursively. */
function rustSources(dir) {
  const out = [];
  for (const e of fs.readdirSync(path.join(REPO, dir), { withFileTypes: true })) {
    const rel = `${dir}/${e.name}`;
    if (e.isDirectory()) out.push(...rustSources(rel));
    else if (e.name.endsWith('.rs')) out.push({ rel, src: read(rel) });
  }
  return out;
}

test('the client retries exactly the server\'s transient 5xx codes: 503s yes, 502s never', () => {
  const { _internal } = require('../wxshop.js');
  const files = rustSources('shared/src').concat(rustSources('local/src'), rustSources('functions'));
  const unavailable = new Set();
  const badGateway = new Set();
  const otherFiveXx = [];
  for (const { rel, src } of files) {
    // `ApiError::unavailable("CODE", …)`: 503, "retrying later may work".
    for (const m of src.matchAll(/ApiError::unavailable\(\s*"([A-Z_]+)"/g)) unavailable.add(m[1]);
    // `ApiError::new(StatusCode::X, "CODE", …)` with a 5xx status.
    for (const m of src.matchAll(/ApiError::new\(\s*(?:http::)?StatusCode::([A-Z_]+),\s*"([A-Z_]+)"/g)) {
      if (m[1] === 'BAD_GATEWAY') badGateway.add(m[2]);
      else if (m[1] === 'SERVICE_UNAVAILABLE') unavailable.add(m[2]);
      else if (/INTERNAL|GATEWAY|SERVICE|INSUFFICIENT|NOT_IMPLEMENTED/.test(m[1])) otherFiveXx.push(`${rel}: ${m[1]} ${m[2]}`);
    }
  }
  // The three the review found; the scan must keep seeing them.
  for (const c of ['PAYMENT_REFUSED', 'WECHAT_REFUSED', 'SCENE_CHECK_REFUSED']) assert.ok(badGateway.has(c), `${c} no longer sent as 502?`);
  for (const c of ['STORE_UNAVAILABLE', 'WECHAT_UNAVAILABLE', 'PAYMENT_UNAVAILABLE']) assert.ok(unavailable.has(c), `${c} no longer sent as 503?`);
  // Decided 5xx codes other than 502/503: each is final, a person must look, and the client
  // never sends the request again for it. PRODUCT_UNREADABLE: the merchant's catalogSync `get`
  // of a stored product record that cannot be read (another version's, or damaged).
  const finalServerErrors = ['shared/src/handlers/catalog_sync.rs: INTERNAL_SERVER_ERROR PRODUCT_UNREADABLE'];
  assert.deepEqual(otherFiveXx, finalServerErrors, 'a new 5xx status: decide whether the client retries it');
  for (const code of ['PRODUCT_UNREADABLE']) {
    assert.equal(_internal.isRetryableOrderError({ code, statusCode: 500 }), false, `500 ${code} is final`);
    assert.equal(_internal.isRetryableApplyError({ code, statusCode: 500 }), false, `500 ${code} is final`);
  }
  for (const code of unavailable) {
    assert.equal(_internal.isRetryableOrderError({ code, statusCode: 503 }), true, `503 ${code} is "retry shortly"`);
  }
  for (const code of badGateway) {
    assert.equal(_internal.isRetryableOrderError({ code, statusCode: 502 }), false, `502 ${code} is WeChat's final refusal`);
  }
  // The codes the client gives answers that are not our server's must never be ours.
  const all = files.map((f) => f.src).join('\n');
  for (const mine of ['SERVER_ERROR', 'HTTP_ERROR', 'NETWORK_ERROR', 'ORDER_TYPE_UNSUPPORTED', 'ORDER_CHECK_FAILED']) {
    assert.ok(!all.includes(`"${mine}"`), `the server sends ${mine}, which the client reserves for answers not from it`);
  }
});

/**
 * The README's example page (`pages/buy/buy.js`), run as the mini program would run it: its
 * code block, with `require` of utils/wxshop and utils/config pointed at this directory's files
 * (config with fast retries and the fake `wx`), `Page` capturing the definition, and a fake `wx`
 * whose unifiedOrder keeps idempotency keys as the server does (claim → same answer; another
 * cart, address or scene → 422 IDEMPOTENCY_KEY_REUSED; order closed → 409 ORDER_CLOSED).
 */
function examplePage() {
  const vm = require('node:vm');
  const readme = read('miniprogram/README.md');
  const m = /## Example page: `pages\/buy\/buy\.js`[\s\S]*?```js\n([\s\S]*?)```/.exec(readme);
  assert.ok(m, 'no example page code block in miniprogram/README.md');
  const code = m[1];

  // `cancels`: how many of the next cashiers the user cancels; `fails`: how many fail
  // (`requestPayment:fail …`, not a cancel); `unconfirmed`: how many of the next that say paid
  // while the server does not see the payment (WeChat Pay's notification late); `paid`: order
  // numbers paid.
  const server = { orders: new Map(), namesHeldOrder: true, loseAnswers: false, scene: 1001, check: { requireOrder: 0, traceId: 'tr-0' }, cancels: 0, fails: 0, unconfirmed: 0, paid: new Set() };
  const addresses = [];
  const sent = []; // idempotency keys of every unifiedOrder call, in order
  const wx = {
    storage: new Map(),
    getStorageSync: (k) => (wx.storage.has(k) ? wx.storage.get(k) : ''),
    setStorageSync: (k, v) => wx.storage.set(k, v),
    removeStorageSync: (k) => wx.storage.delete(k),
    login: ({ success }) => setImmediate(() => success({ code: 'c1' })),
    getEnterOptionsSync: () => ({ scene: server.scene }),
    // WeChat's pre-order check answers `server.check`.
    checkBeforeAddOrder: (o) => setImmediate(() => o.success({ errMsg: 'checkBeforeAddOrder:ok', data: server.check })),
    chooseAddress: ({ success }) => setImmediate(() => success(addresses.shift())),
    showLoading: () => {},
    hideLoading: () => {},
    navigateTo: () => {},
    requestPayment: (p) =>
      setImmediate(() => {
        if (server.cancels > 0) {
          server.cancels -= 1;
          return p.fail({ errMsg: 'requestPayment:fail cancel' });
        }
        if (server.fails > 0) {
          server.fails -= 1;
          return p.fail({ errMsg: 'requestPayment:fail system error' });
        }
        if (server.unconfirmed > 0) {
          server.unconfirmed -= 1;
          return p.success({ errMsg: 'requestPayment:ok' });
        }
        server.paid.add(p.package.replace(/^prepay_id=/, ''));
        p.success({ errMsg: 'requestPayment:ok' });
      }),
    request: (opts) => {
      const name = opts.url.replace(/^.*\/fn\//, '');
      let out;
      if (name === 'login') out = { statusCode: 200, data: { token: 't', expires_at: Math.floor(Date.now() / 1000) + 3600, openid: 'o', fund_type: 0, trading_component: 'always' } };
      else if (name === 'queryOrder') {
        const no = opts.data.out_trade_no;
        const rec = [...server.orders.values()].find((o) => o.no === no);
        if (opts.data.action === 'close') {
          if (server.paid.has(no)) out = { statusCode: 409, data: { code: 'ORDER_PAID', message: 'the order is paid' } };
          else if (!rec) out = { statusCode: 404, data: { code: 'ORDER_NOT_FOUND', message: no } };
          else {
            rec.closed = true;
            out = { statusCode: 200, data: { order: { out_trade_no: no, status: 'CLOSED' } } };
          }
        } else out = { statusCode: 200, data: { order: { out_trade_no: no, status: server.paid.has(no) ? 'PAID' : rec && rec.closed ? 'CLOSED' : 'PREPAID' } } };
      }
      else if (name === 'unifiedOrder') {
        const d = opts.data;
        sent.push(d.idempotency_key);
        const what = JSON.stringify([d.items, d.address, d.scene]);
        const rec = server.orders.get(d.idempotency_key);
        // As the server: the refusal names the order the key holds (`server.namesHeldOrder`
        // false: as an older server, which does not).
        if (rec && rec.what !== what) {
          out = { statusCode: 422, data: { code: 'IDEMPOTENCY_KEY_REUSED', message: 'this idempotency key was used for a different cart, address or enter scene' } };
          if (server.namesHeldOrder) out.data.out_trade_no = rec.no;
        }
        else if (rec && rec.closed) out = { statusCode: 409, data: { code: 'ORDER_CLOSED', message: 'the order this idempotency key made was closed unpaid; order again with a new key' } };
        else {
          if (!rec) server.orders.set(d.idempotency_key, { what, closed: false, no: 'T' + (server.orders.size + 1) });
          const no = server.orders.get(d.idempotency_key).no;
          out = server.loseAnswers
            ? { fail: 'request:fail timeout' }
            : {
                statusCode: 200,
                data: {
                  out_trade_no: no,
                  total_fee: 1990,
                  status: server.paid.has(no) ? 'PAID' : 'PREPAID',
                  payment: { timeStamp: '1', nonceStr: 'n', package: 'prepay_id=' + no, signType: 'MD5', paySign: 'S' },
                },
              };
        }
      } else out = { statusCode: 404, data: { code: 'NOT_FOUND', message: name } };
      setImmediate(() => (out.fail ? opts.fail({ errMsg: out.fail }) : opts.success({ statusCode: out.statusCode, data: out.data })));
    },
  };
  const config = Object.assign({}, require('../config.js'), {
    wx,
    orderRetry: { attempts: 3, delayMs: 1, maxDelayMs: 2, budgetMs: 1000 },
    payPoll: { intervalMs: 5, timeoutMs: 200, failTimeoutMs: 50 },
  });
  let def = null;
  const modules = { '../../utils/wxshop': require('../wxshop.js'), '../../utils/config': config };
  vm.runInNewContext(code, {
    require: (p) => {
      assert.ok(p in modules, `the example requires ${p}`);
      return modules[p];
    },
    wx,
    Page: (d) => {
      def = d;
    },
    JSON,
    setTimeout,
  });
  assert.ok(def && typeof def.onBuyTap === 'function', 'the example calls Page({ onBuyTap })');
  let finished = null;
  const page = Object.assign({}, def, {
    data: Object.assign({}, def.data),
    setData(patch) {
      Object.assign(this.data, patch);
      if (patch.busy === false && finished) finished();
    },
  });
  /** The user picks `address` and taps Buy; resolves the page's message once it is idle. */
  function tap(address) {
    addresses.push(address);
    const before = sent.length;
    return new Promise((resolve) => {
      finished = resolve;
      page.onBuyTap();
    }).then(() => ({ message: page.data.message, keys: sent.slice(before) }));
  }
  return { server, tap, sent };
}

const HOME = { userName: 'Alice', telNumber: '13800000000', provinceName: '浙江省', cityName: '杭州市', countyName: '西湖区', detailInfo: '1 Tea St' };
const OFFICE = Object.assign({}, HOME, { detailInfo: '9 Office Rd' });

test('README example page: after a lost answer, the same address retries the same key (one order)', async () => {
  const { server, tap } = examplePage();
  server.loseAnswers = true;
  const first = await tap(HOME);
  assert.match(first.message, /Network problem/);
  server.loseAnswers = false;
  const second = await tap(HOME);
  assert.match(second.message, /^Paid/);
  assert.deepEqual(new Set(second.keys), new Set([first.keys[0]]), 'the retry sends the first tap\'s key');
  assert.equal(server.orders.size, 1, 'one order');
});

test('README example page: after a lost answer, another address is a new purchase with a new key, not a dead key', async () => {
  const { server, tap } = examplePage();
  server.loseAnswers = true;
  const first = await tap(HOME);
  assert.match(first.message, /Network problem/);
  server.loseAnswers = false;
  const second = await tap(OFFICE);
  assert.ok(!second.keys.includes(first.keys[0]), `the key made for the first address was sent for another: ${second.keys}`);
  assert.match(second.message, /^Paid/);
});

test('README example page: a key spent by a scene change (older server) or an expired order is dropped, the next tap buys', async () => {
  for (const spend of [
    (server) => {
      server.namesHeldOrder = false; // a server that does not say which order the key holds
      server.scene = 1175; // the user came back from another entry: the same cart, another scene
    },
    (server) => {
      for (const o of server.orders.values()) o.closed = true; // ORDER_TTL_SECS passed
    },
  ]) {
    const { server, tap } = examplePage();
    server.loseAnswers = true;
    const first = await tap(HOME);
    server.loseAnswers = false;
    spend(server);
    const second = await tap(HOME);
    const third = await tap(HOME);
    assert.ok(!third.keys.includes(first.keys[0]), `the spent key was sent again: ${third.keys}`);
    assert.match(third.message, /^Paid/, 'not stuck: the next tap buys');
    assert.match(second.message, /tap Buy again/i, 'the page told the user what to do');
  }
});

test('README example page: after a cancelled cashier and a return through another scene, the next tap closes that order and pays a new one', async () => {
  for (const before of ['cancel', 'lost']) {
    const { server, tap } = examplePage();
    if (before === 'cancel') server.cancels = 1;
    else server.loseAnswers = true;
    const first = await tap(HOME);
    server.loseAnswers = false;
    assert.match(first.message, before === 'cancel' ? /cancelled/i : /Network problem/);
    server.scene = 1089; // back from a share card: the same cart and address, another scene
    const second = await tap(HOME);
    assert.match(second.message, /^Paid: order T2/, `${before}: paid in one tap`);
    assert.equal(second.keys[0], first.keys[0], 'the first key was sent back');
    assert.notEqual(second.keys[second.keys.length - 1], first.keys[0], 'the new order under a new key');
    assert.equal(server.orders.get(first.keys[0]).closed, true, `${before}: the first order was closed, its stock back`);
    assert.deepEqual([...server.paid], ['T2'], 'one order paid');
  }
});

test('README example page: after a cancelled cashier, the next tap pays the same order (one order)', async () => {
  const { server, tap } = examplePage();
  server.cancels = 1;
  const first = await tap(HOME);
  assert.match(first.message, /cancelled/i);
  const second = await tap(HOME);
  assert.match(second.message, /^Paid: order T1/);
  assert.deepEqual(second.keys, first.keys, 'the second tap sends the first tap\'s key');
  assert.equal(server.orders.size, 1, 'one order');
  const third = await tap(HOME);
  assert.match(third.message, /^Paid: order T2/, 'once paid, the next tap is a new purchase');
});

test('README example page: each unpaid outcome gets its own words: cancelled, failed (tap Buy pays the same order), paid but not confirmed yet', async () => {
  // A failed cashier: nothing is coming from WeChat, and the next tap pays the same order.
  {
    const { server, tap } = examplePage();
    server.fails = 1;
    const failed = await tap(HOME);
    assert.match(failed.message, /did not go through/i, failed.message);
    assert.match(failed.message, /tap Buy/i, 'the user is told to tap Buy again');
    assert.match(failed.message, /same order/i, 'and that it pays the same order');
    assert.doesNotMatch(failed.message, /we will update|when WeChat confirms|confirming/i, 'nothing is coming after a failed cashier');
    const again = await tap(HOME);
    assert.deepEqual(again.keys, failed.keys, 'the tap after a failure sends the same key');
    assert.match(again.message, /^Paid: order T1/);
    assert.equal(server.orders.size, 1, 'one order');
  }
  // A cancelled cashier: said so, and Buy pays this order.
  {
    const { server, tap } = examplePage();
    server.cancels = 1;
    const cancelled = await tap(HOME);
    assert.match(cancelled.message, /cancelled/i);
    assert.match(cancelled.message, /tap Buy/i);
  }
  // The cashier said paid and the server has not seen it: made, being confirmed; not a failure,
  // and not a prompt to pay again.
  {
    const { server, tap } = examplePage();
    server.unconfirmed = 1;
    const made = await tap(HOME);
    assert.match(made.message, /payment made/i, made.message);
    assert.match(made.message, /confirm/i, made.message);
    assert.match(made.message, /T1/, 'the order is named, to check it');
    assert.doesNotMatch(made.message, /not paid|did not go through|cancel|tap Buy/i, made.message);
  }
});

test('README example page: an order type the shop does not make is explained, and nothing is ordered', async () => {
  const { server, tap, sent } = examplePage();
  server.check = { requireOrder: 1, requiredFundType: 1, traceId: 'tr-1' };
  const refused = await tap(HOME);
  assert.match(refused.message, /cannot take orders from here/);
  assert.deepEqual(sent, [], 'no unifiedOrder was sent');
  server.check = { requireOrder: 1, requiredFundType: 0, traceId: 'tr-2' };
  const bought = await tap(HOME);
  assert.match(bought.message, /^Paid/);
});

test('aftersale.apply retries what the server\'s apply can answer, as the client README says', () => {
  const { _internal } = require('../wxshop.js');
  const handler = read('shared/src/handlers/aftersale_sync.rs');
  const apply = /UserAction::Apply \{[\s\S]*?\n        UserAction::/.exec(handler);
  assert.ok(apply, 'the apply arm of aftersale_sync.rs not found');
  // apply writes through the store only (with_retries → STORE_UNAVAILABLE); no idempotency claim.
  assert.ok(!apply[0].includes('REQUEST_IN_PROGRESS') && !handler.includes('"REQUEST_IN_PROGRESS"'), 'apply answers REQUEST_IN_PROGRESS now: retry it and say so');
  assert.ok(apply[0].includes('"IDEMPOTENCY_KEY_REUSED"'));
  const bullet = read('miniprogram/README.md').split('\n- ').concat(read('miniprogram/README.md').split('\n  - ')).find((p) => p.startsWith('`apply('));
  assert.ok(bullet, 'no apply bullet in miniprogram/README.md');
  assert.match(bullet, /never answers\s+`REQUEST_IN_PROGRESS`/);
  assert.match(bullet, /503\s+`STORE_UNAVAILABLE`/);
  assert.match(bullet, /`IDEMPOTENCY_KEY_REUSED`[\s\S]*carries none/);
  assert.equal(_internal.isRetryableApplyError({ code: 'STORE_UNAVAILABLE', statusCode: 503 }), true);
  assert.equal(_internal.isRetryableApplyError({ code: 'REQUEST_IN_PROGRESS', statusCode: 409 }), false);
  assert.equal(_internal.isRetryableApplyError({ code: 'INTERNAL', statusCode: 500 }), false);
});

test('the deploy steps build with sam build --beta-features and deploy the template it wrote', () => {
  const template = read('infra/template.yaml');
  assert.match(template, /BuildMethod: rust-cargolambda/, 'the functions no longer build with rust-cargolambda: revisit this test');
  const docs = { 'README.md': read('README.md'), 'docs/DEPLOY.md': read('docs/DEPLOY.md') };
  for (const [name, text] of Object.entries(docs)) {
    // Commands as written: lines of ```sh blocks (comments cut), and `inline code` with flags
    // (a bare `sam build` in prose names the tool).
    const blocks = [...text.matchAll(/```sh\n([\s\S]*?)```/g)].flatMap((m) => m[1].split('\n')).map((l) => l.replace(/#.*/, '').trim());
    const inline = [...text.matchAll(/`(sam (?:build|deploy)\s+-[^`]*)`/g)].map((m) => m[1].replace(/\s+/g, ' ').trim());
    const commands = blocks.concat(inline).filter((c) => /^sam /.test(c));
    const builds = commands.filter((c) => /^sam build\b/.test(c));
    const deploys = commands.filter((c) => /^sam deploy\b/.test(c));
    assert.ok(builds.length > 0 && deploys.length > 0, `${name} gives no sam build / sam deploy command`);
    for (const c of builds) assert.match(c, /--beta-features/, `${name}: \`${c}\` stops to ask without --beta-features (rust-cargolambda is a SAM beta)`);
    for (const c of deploys) {
      for (const part of c.split('&&').map((p) => p.trim()).filter((p) => p.startsWith('sam deploy'))) {
        assert.match(part, /-t \.aws-sam\/build\/template\.yaml/, `${name}: \`${part}\` must deploy the template sam build wrote`);
      }
    }
    assert.doesNotMatch(text, /same result/i, `${name} calls cargo lambda build the same as sam build, but only sam build writes what step 3 deploys`);
  }
});

test('the root README\'s Configuration table has a row for every variable the server and wxlocal read, with its default', () => {
  const config = read('shared/src/config.rs');
  const body = /pub fn from_lookup[\s\S]*?\n    \}\n/.exec(config);
  assert.ok(body, 'Config::from_lookup not found in shared/src/config.rs');
  const src = body[0];
  const read_ = (re) => new Set([...src.matchAll(re)].map((m) => m[1]));
  const required = read_(/\brequired\(\s*"([A-Z][A-Z0-9_]+)"/g);
  const all = read_(/\b(?:get|required|num|url)\(\s*"([A-Z][A-Z0-9_]+)"/g);
  // What else reads the environment: wxlocal (RUST_LOG) and the Lambda entry point (the secret).
  for (const f of rustSources('local/src')) for (const m of f.src.matchAll(/env::var\(\s*"([A-Z][A-Z0-9_]+)"/g)) all.add(m[1]);
  const lambda = read('shared/src/lambda.rs');
  const secretVar = /const SECRET_ARN_VAR: &str = "([A-Z_]+)"/.exec(lambda);
  assert.ok(secretVar, 'SECRET_ARN_VAR not found in shared/src/lambda.rs');
  all.add(secretVar[1]);
  for (const v of ['WX_APPID', 'STORE', 'WX_TRADING_COMPONENT', 'WXPAY_CERT_P12_PASSWORD', 'RUST_LOG']) assert.ok(all.has(v), `the scan missed ${v}`);

  const readme = read('README.md');
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 1));
  const rows = section.split('\n').filter((l) => l.startsWith('| `'));
  const rowOf = (v) => rows.find((r) => r.split(' | ')[0].includes(`\`${v}\``));
  const missing = [...all].filter((v) => !rowOf(v)).sort();
  assert.deepEqual(missing, [], 'variables read but without a row in README.md\'s Configuration table');
  for (const v of all) {
    const row = rowOf(v);
    if (required.has(v)) assert.match(row, /required/, `${v} is required: its row should say so`);
    else assert.match(row, /default|unset/i, `${v}: its row does not say what happens when it is unset`);
  }
  // Defaults written in config.rs as `None | Some("x") =>` or `unwrap_or_else(|| "x".into())`.
  const defaults = [
    ...src.matchAll(/get\("([A-Z_]+)"\)\.as_deref\(\)\s*\{\s*None \| Some\("([^"]+)"\)/g),
    ...src.matchAll(/get\("([A-Z_]+)"\)\s*\.unwrap_or_else\(\|\| "([^"]+)"\.into\(\)\)/g),
  ];
  assert.ok(defaults.some((m) => m[1] === 'WX_TRADING_COMPONENT' && m[2] === 'off'), 'the default scan missed WX_TRADING_COMPONENT');
  for (const [, v, d] of defaults) {
    const row = rowOf(v);
    assert.ok(new RegExp(`\`${d}\`[^|]*\\(?default|[Dd]efault[^|]*\`${d}\``).test(row), `${v}'s row does not give its default \`${d}\`: ${row}`);
  }
  // Derived defaults the review found missing.
  assert.match(rowOf('WXPAY_REFUND_NOTIFY_URL'), /Default: `WXPAY_NOTIFY_URL`/);
  assert.match(rowOf('WXPAY_CERT_P12_PASSWORD'), /defaults to the merchant id/);
});

test('the client README names every after-sale status and kind the server answers', () => {
  const src = read('shared/src/domain/aftersale.rs');
  const statuses = [...src.matchAll(/AfterSaleStatus::\w+ => "([A-Z_]+)"/g)].map((m) => m[1]);
  assert.ok(statuses.length >= 9, `found only ${statuses} in aftersale.rs`);
  const kinds = ['REFUND_ONLY', 'RETURN_AND_REFUND'];
  assert.match(src, /pub enum AfterSaleKind \{\s*RefundOnly,\s*ReturnAndRefund,\s*\}/, 'AfterSaleKind changed: update this test and the README');
  const para = read('miniprogram/README.md').split('\n- ').find((p) => p.startsWith('`shop.aftersale` calls'));
  assert.ok(para, 'no shop.aftersale bullet in miniprogram/README.md');
  for (const s of new Set(statuses.concat(kinds))) assert.ok(para.includes('`' + s + '`'), `the README does not name ${s}`);
});

test('the client README\'s example section describes every page of example/app.json, and how to refresh its copy of the client', () => {
  const { pages } = JSON.parse(read('miniprogram/example/app.json'));
  const readme = read('miniprogram/README.md');
  const section = /## Example mini program\n([\s\S]*?)\n## /.exec(readme);
  assert.ok(section, 'no "Example mini program" section in miniprogram/README.md');
  const described = [...section[1].matchAll(/^\| `(pages\/[^`]+)` \|/gm)].map((m) => m[1]);
  assert.deepEqual(described.sort(), [...pages].sort(), 'the README\'s page table and app.json list different pages');
  const pkg = JSON.parse(read('miniprogram/package.json'));
  assert.ok(section[1].includes('npm run example:sync') && section[1].includes(pkg.scripts['example:sync']), 'the README does not say how to refresh example/utils/wxshop.js');
  assert.ok(section[1].includes('cargo run -p wxlocal -- serve --seed'));
});
