// Integration tests: the real client against a real `wxlocal serve` on 127.0.0.1.
//
// The stubbed `wx` does real HTTP for `wx.request`, and drives the wxlocal WeChat sandbox for
// what the user would do: `wx.login` gets a code from /sandbox/_control/login, a successful
// `wx.requestPayment` is /sandbox/_control/pay (the sandbox then notifies the back end
// asynchronously, like WeChat Pay does). Like WeChat's cashier, the stub first checks the
// payment parameters, paySign included, and fails the payment when they are wrong.
//
// The binary and the stub `wx` are test/support/wxlocal.js's (shared with example.test.js). If
// the binary cannot serve, every test here fails with the reason; they are never skipped silently.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { createClient } = require('../wxshop.js');
const support = require('./support/wxlocal.js');

const { START_TIMEOUT_MS, BUILD_TIMEOUT_MS, paySign, cashierProblem, startWxlocal } = support;
const TEST_TIMEOUT_MS = 15000;
const PAID = ['PAID', 'SHIPPED', 'RECEIVED', 'COMPLETED'];
const ADDRESS = { receiver_name: 'Alice', detailed_address: '1 Tea Street, Hangzhou', tel_number: '13800000000' };
const TEA = { product_id: 'tea', sku_id: 'tea-250g', quantity: 1 };
const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let server = null; // { child, baseUrl, stderr(), signing }
let startError = null;

/** Stops `which`, or the shared server when none is given. */
function stopWxlocal(which) {
  const s = which || server;
  if (!which) server = null;
  return support.stopWxlocal(s);
}

/**
 * support.sandboxWx, its cashier checking paySign with the shared server's key unless told.
 * `opts` is handed on as it is (a test changes `opts.cashier` as the user changes their mind).
 */
function sandboxWx(baseUrl, opts) {
  opts = opts || {};
  if (!opts.signing) opts.signing = server && server.signing;
  return support.sandboxWx(baseUrl, opts);
}

function client(wx, extra) {
  return createClient(
    Object.assign({ baseUrl: server.baseUrl, wx, payPoll: { intervalMs: 200, timeoutMs: 10000, failTimeoutMs: 1000 } }, extra || {})
  );
}

test.before(
  async () => {
    try {
      server = await startWxlocal();
    } catch (e) {
      startError = e;
    }
  },
  { timeout: BUILD_TIMEOUT_MS + START_TIMEOUT_MS }
);

test.after(() => stopWxlocal(), { timeout: 5000 });

/** Every test fails with the start-up reason when wxlocal is not serving. */
function requireServer() {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
}

test('the stub cashier\'s paySign matches the documented vectors', () => {
  // WECHAT_PAY_V2.md §4.1: the old wx.requestPayment doc example (MD5), and the same with HMAC-SHA256.
  const p = { timeStamp: '1490840662', nonceStr: '5K8264ILTKCH16CQ2502SI8ZNMTM67VS', package: 'prepay_id=wx2017033010242291fcfe0db70013231072' };
  const appId = 'wxd678efh567hg6787';
  const key = 'qazwsxedcrfvtgbyhnujmikolp111111';
  assert.equal(paySign(Object.assign({ signType: 'MD5' }, p), appId, key), '22D9B4E54AB1950F51E0649E8810ACD6');
  assert.equal(paySign(Object.assign({ signType: 'HMAC-SHA256' }, p), appId, key), 'FB9D1EFB5C509131BBFF729F88A99CA2DE9B724D06D3B3262832A53083862BC0');
  const good = Object.assign({ signType: 'MD5', paySign: '22D9B4E54AB1950F51E0649E8810ACD6' }, p);
  const signing = { appId, apiKey: key };
  assert.equal(cashierProblem(good, { fund_type: 0 }, signing), null);
  assert.match(cashierProblem(Object.assign({}, good, { timeStamp: 1490840662 }), { fund_type: 0 }, signing), /timeStamp/);
  assert.match(cashierProblem(Object.assign({}, good, { nonceStr: 'x' }), { fund_type: 0 }, signing), /签名/);
  assert.match(cashierProblem(Object.assign({}, good, { package: 'wx2017' }), { fund_type: 0 }, signing), /package/);
  assert.match(cashierProblem(Object.assign({}, good, { signType: 'HMAC-SHA256' }), { fund_type: 0 }, signing), /签名/);
  assert.match(cashierProblem(good, { fund_type: 0 }, { appId: 'wx0000000000000001', apiKey: key }), /签名/);
});

test('a full purchase of the seeded tea is paid', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl, { cashier: 'pay' });
  const shop = client(wx);
  const r = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(r.cashier, 'ok', `cashier: ${r.errMsg}`);
  assert.equal(r.paid, true, `order: ${JSON.stringify(r.order)} error: ${JSON.stringify(r.error)}`);
  assert.ok(PAID.includes(r.order.status), r.order.status);
  assert.equal(r.order.out_trade_no, r.out_trade_no);
  assert.equal(r.order.total_fee, 1990);
  assert.equal(r.order.freight, 0, 'the order gives its freight (none charged)');
  assert.equal(wx.logins, 1);
  const session = wx.storage.get('wxshop.session');
  assert.ok(session && session.token && session.openid, JSON.stringify(session));
  assert.equal(typeof session.expires_at, 'number');
});

/** The sandbox's recorded calls of WeChat APIs whose path ends with `path` (all with ''). */
async function sandboxCalls(path) {
  const res = await fetch(`${server.baseUrl}/sandbox/_control/calls?path=${encodeURIComponent(path)}`, { signal: AbortSignal.timeout(10000) });
  return (await res.json()).calls;
}

/** The sandbox's pay/unifiedorder calls so far (each is one order at WeChat Pay). */
async function prepays() {
  const res = await fetch(`${server.baseUrl}/sandbox/_control/calls`, { signal: AbortSignal.timeout(10000) });
  const body = await res.json();
  return body.calls.filter((c) => c.trade_type === 'JSAPI').map((c) => c.out_trade_no);
}

test('with WXPAY_SIGN_TYPE=HMAC-SHA256 the cashier accepts the HMAC paySign and the purchase is paid', { timeout: TEST_TIMEOUT_MS + START_TIMEOUT_MS }, async () => {
  requireServer();
  const hmac = await startWxlocal({ WXPAY_SIGN_TYPE: 'HMAC-SHA256' });
  try {
    let seen = null;
    const wx = sandboxWx(hmac.baseUrl, { cashier: 'pay', signing: hmac.signing });
    for (const api of ['requestPayment', 'requestOrderPayment']) {
      const open = wx[api];
      wx[api] = (p) => {
        seen = p;
        return open(p);
      };
    }
    const r = await createClient({ baseUrl: hmac.baseUrl, wx, payPoll: { intervalMs: 200, timeoutMs: 10000 } }).buy({ items: [TEA], address: ADDRESS });
    assert.equal(r.cashier, 'ok', `cashier: ${r.errMsg}`);
    assert.equal(seen.signType, 'HMAC-SHA256');
    assert.match(seen.paySign, /^[0-9A-F]{64}$/);
    assert.equal(r.paid, true, JSON.stringify(r.order));
  } finally {
    await stopWxlocal(hmac);
  }
});

test('a unifiedOrder answer lost to a timeout is retried with the same key: one order, paid', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl, { cashier: 'pay', loseAnswer: (name, n) => name === 'unifiedOrder' && n === 0 });
  const shop = client(wx, { orderRetry: { attempts: 3, delayMs: 50, maxDelayMs: 200, budgetMs: 5000 } });
  const before = await prepays();
  const r = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(r.paid, true, `order: ${JSON.stringify(r.order)} error: ${JSON.stringify(r.error)}`);
  assert.deepEqual(
    wx.log.filter((x) => x.name === 'unifiedOrder').map((x) => x.status),
    [0, 200]
  );
  const made = (await prepays()).slice(before.length);
  assert.deepEqual(made, [r.out_trade_no], 'the retry got the first call\'s order back, not a second one');
});

test('a bogus stored token is refreshed once via login and the call succeeds', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl);
  wx.storage.set('wxshop.session', { token: 'bogus.token.value', expires_at: Math.floor(Date.now() / 1000) + 3600, openid: 'o-x' });
  const shop = client(wx);
  const r = await shop.callFunction({ name: 'unifiedOrder', data: { items: [TEA], address: ADDRESS, scene: 1001, idempotency_key: `it-${Date.now()}` } });
  assert.ok(r.result.out_trade_no, JSON.stringify(r.result));
  assert.equal(r.result.total_fee, 1990);
  assert.ok(r.result.payment && r.result.payment.package && r.result.payment.paySign);
  assert.deepEqual(
    wx.log.map((x) => `${x.name} ${x.status}`),
    ['unifiedOrder 401', 'login 200', 'unifiedOrder 200']
  );
  assert.equal(wx.logins, 1);
  assert.notEqual(wx.storage.get('wxshop.session').token, 'bogus.token.value');
  // The refreshed token works for the next call without another login.
  const q = await shop.callFunction({ name: 'queryOrder', data: { out_trade_no: r.result.out_trade_no } });
  assert.equal(q.result.order.out_trade_no, r.result.out_trade_no);
  assert.equal(wx.logins, 1);
});

test('an expired stored token is replaced before the call', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl);
  wx.storage.set('wxshop.session', { token: 'old', expires_at: Math.floor(Date.now() / 1000) - 60 });
  const shop = client(wx);
  // Whatever the server says about an unknown order, it must not be a 401: the client logged in first.
  await shop.callFunction({ name: 'queryOrder', data: { out_trade_no: 'NO_SUCH_ORDER_0001' } }).catch((e) => {
    assert.notEqual(e.statusCode, 401, JSON.stringify(e));
    assert.match(e.code, /^[A-Z][A-Z0-9_]*$/, JSON.stringify(e));
  });
  assert.deepEqual(wx.log.map((x) => x.name), ['login', 'queryOrder']);
  assert.equal(wx.logins, 1);
});

test('a server error surfaces as {code, message, statusCode}', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl, { cashier: 'pay' });
  const shop = client(wx);
  let caught = null;
  try {
    await shop.buy({ items: [{ product_id: 'no-such-product', sku_id: 'nope', quantity: 1 }], address: ADDRESS });
  } catch (e) {
    caught = e;
  }
  assert.ok(caught, 'buy of an unknown product must reject');
  assert.match(caught.code, /^[A-Z][A-Z0-9_]*$/, JSON.stringify(caught));
  assert.equal(typeof caught.message, 'string');
  assert.ok(caught.statusCode >= 400 && caught.statusCode < 500, JSON.stringify(caught));
  assert.ok(!wx.log.some((x) => x.name === 'queryOrder'), 'no polling after a failed order');
});

test('a cancelled cashier resolves paid:false via polling within the bound', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl, { cashier: 'cancel' });
  const shop = client(wx, { payPoll: { intervalMs: 200, timeoutMs: 10000, failTimeoutMs: 1000 } });
  const t0 = Date.now();
  const r = await shop.buy({ items: [TEA], address: ADDRESS });
  const took = Date.now() - t0;
  assert.equal(r.cashier, 'cancel');
  assert.equal(r.paid, false);
  assert.ok(r.order, `polling returned no order: ${JSON.stringify(r.error)}`);
  assert.ok(!PAID.includes(r.order.status), r.order.status);
  assert.ok(wx.log.some((x) => x.name === 'queryOrder' && x.status === 200));
  assert.ok(took < 5000, `took ${took} ms`);
});

test('a return and refund through the client: return accepted, parcel sent back, refunded', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl, { cashier: 'pay' });
  const shop = client(wx);
  const bought = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(bought.paid, true, JSON.stringify(bought.order));
  const admin = async (body) => {
    const res = await fetch(`${server.baseUrl}/admin/aftersaleSync`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${process.env.ADMIN_TOKEN || 'local-admin-token'}` },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  };
  const until = async (what, f) => {
    const end = Date.now() + 10000;
    for (;;) {
      const v = await f();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await delay(100);
    }
  };
  const applied = await shop.aftersale.apply({ out_trade_no: bought.out_trade_no, type: 'return', reason: 'too big' });
  const id = applied.aftersale.aftersale_id;
  const address = { receiver_name: 'Returns desk', detailed_address: '8 Warehouse Road', tel_number: '021-5555-0101' };
  const accepted = await admin({ action: 'approve', aftersale_id: id, return_address: address });
  assert.equal(accepted.status, 200, JSON.stringify(accepted.body));
  const [mine] = await shop.aftersale.list(bought.out_trade_no);
  assert.equal(mine.status, 'AWAITING_RETURN');
  assert.equal(mine.goods_return.address.detailed_address, '8 Warehouse Road');
  const sent = await shop.aftersale.sendBack({ aftersale_id: id, delivery_id: 'SF', delivery_name: 'SF Express', waybill_id: 'SF1234567890' });
  assert.equal(sent.aftersale.status, 'RETURNING');
  const refunding = await admin({ action: 'approve', aftersale_id: id });
  assert.equal(refunding.status, 200, JSON.stringify(refunding.body));
  await until('REFUNDED', async () => (await shop.aftersale.list(bought.out_trade_no))[0].status === 'REFUNDED');
});

test('aftersale.apply names the product line: the server records it, and refuses one the order does not have', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const wx = sandboxWx(server.baseUrl, { cashier: 'pay' });
  const shop = client(wx);
  const bought = await shop.buy({ items: [Object.assign({}, TEA, { quantity: 2 })], address: ADDRESS });
  assert.equal(bought.paid, true, JSON.stringify(bought.order));
  const err = await shop.aftersale.apply({ out_trade_no: bought.out_trade_no, product_id: 'kettle', sku_id: 'kettle-1l' }).catch((e) => e);
  assert.equal(err.code, 'UNKNOWN_LINE', JSON.stringify(err));
  assert.equal(err.statusCode, 400);
  assert.ok(err.idempotencyKey, 'a refusal carries the key');
  const applied = await shop.aftersale.apply({ out_trade_no: bought.out_trade_no, product_id: 'tea', sku_id: 'tea-250g', quantity: 1, reason: 'one tin dented' });
  const a = applied.aftersale;
  assert.deepEqual([a.product_id, a.sku_id, a.quantity], ['tea', 'tea-250g', 1], JSON.stringify(a));
  const [listed] = await shop.aftersale.list(bought.out_trade_no);
  assert.equal(listed.quantity, 1, JSON.stringify(listed));
});

test('the pre-order check\'s traceId reaches shop/order/add; an order type the shop does not make is refused before anything is made', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const traceId = `it-trace-${Date.now()}`;
  const wx = sandboxWx(server.baseUrl, { cashier: 'pay', orderCheck: { requireOrder: 1, requiredFundType: 0, traceId } });
  const r = await client(wx).buy({ items: [TEA], address: ADDRESS });
  assert.equal(r.paid, true, `order: ${JSON.stringify(r.order)} error: ${JSON.stringify(r.error)}`);
  assert.deepEqual(r.orderCheck, { status: 'ok', requireOrder: 1, requiredFundType: 0, traceId });
  const added = (await sandboxCalls('shop/order/add')).filter((c) => c.out_order_id === r.out_trade_no);
  assert.ok(added.length > 0, 'the order went through the trading component');
  for (const a of added) assert.equal(a.trace_id, traceId, JSON.stringify(a));
  // login told the client what this wxlocal makes: its defaults.
  const session = wx.storage.get('wxshop.session');
  assert.deepEqual([session.fund_type, session.trading_component], [0, 'always'], JSON.stringify(session));

  // WeChat requires a secondary-merchant order in this scene; this wxlocal makes ordinary ones.
  const prepaysBefore = (await prepays()).length;
  const addsBefore = (await sandboxCalls('shop/order/add')).length;
  const refused = sandboxWx(server.baseUrl, { cashier: 'pay', orderCheck: { requireOrder: 1, requiredFundType: 1, traceId: 'it-refused' } });
  const err = await client(refused).buy({ items: [TEA], address: ADDRESS }).then(
    (x) => assert.fail(`bought: ${JSON.stringify(x)}`),
    (e) => e
  );
  assert.equal(err.code, 'ORDER_TYPE_UNSUPPORTED', JSON.stringify(err));
  assert.deepEqual([err.requiredFundType, err.fundType, err.tradingComponent], [1, 0, 'always']);
  assert.deepEqual(refused.log.map((x) => x.name), ['login'], 'no unifiedOrder was sent');
  assert.equal((await prepays()).length, prepaysBefore, 'nothing asked of WeChat Pay');
  assert.equal((await sandboxCalls('shop/order/add')).length, addsBefore, 'no component order');
});

test('a cancelled cashier, then buy again with the key the result hands back: the same order, paid, one prepay', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const user = { cashier: 'cancel' };
  const wx = sandboxWx(server.baseUrl, user);
  const shop = client(wx);
  const first = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(first.cashier, 'cancel');
  assert.equal(first.paid, false);
  assert.ok(first.idempotencyKey, 'an unpaid result hands back its key');
  user.cashier = 'pay';
  const second = await shop.buy({ items: [TEA], address: ADDRESS, idempotencyKey: first.idempotencyKey });
  assert.equal(second.cashier, 'ok', `cashier: ${second.errMsg}`);
  assert.equal(second.paid, true, JSON.stringify(second.order));
  assert.equal(second.out_trade_no, first.out_trade_no, 'the same order was paid');
  assert.equal(second.idempotencyKey, undefined);
  assert.equal((await prepays()).filter((no) => no === first.out_trade_no).length, 1, 'one prepay order at WeChat Pay');
  // Asked once more (a double tap after it went through): no cashier for a paid order.
  const third = await shop.buy({ items: [TEA], address: ADDRESS, idempotencyKey: first.idempotencyKey });
  assert.equal(third.cashier, 'none');
  assert.equal(third.paid, true);
  assert.equal(third.out_trade_no, first.out_trade_no);
});

test('a cancelled cashier, then a scene whose pre-order check the shop cannot serve: the key is handed back, and buy with it from an allowed scene pays that order', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const user = { cashier: 'cancel', user: 'refused-check-' + Date.now(), orderCheck: { requireOrder: 0, traceId: 'it-allowed-1' } };
  const wx = sandboxWx(server.baseUrl, user);
  const shop = client(wx);
  const first = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(first.paid, false);
  assert.ok(first.idempotencyKey, 'an unpaid result hands back its key');
  const start = await teaStock();

  // Back through an entry where WeChat requires a secondary-merchant order (this wxlocal makes
  // ordinary ones): refused before anything is sent, and the key of the unpaid order kept.
  user.orderCheck = { requireOrder: 1, requiredFundType: 1, traceId: 'it-refused-2' };
  const refused = await shop.buy({ items: [TEA], address: ADDRESS, idempotencyKey: first.idempotencyKey }).then(
    (x) => assert.fail(`bought: ${JSON.stringify(x)}`),
    (e) => e
  );
  assert.equal(refused.code, 'ORDER_TYPE_UNSUPPORTED', JSON.stringify(refused));
  assert.equal(refused.idempotencyKey, first.idempotencyKey, 'the key of the unpaid order is handed back');

  // From an entry that allows it: the same order, paid; no second order, no stock held twice.
  user.orderCheck = { requireOrder: 0, traceId: 'it-allowed-3' };
  user.cashier = 'pay';
  const again = await shop.buy({ items: [TEA], address: ADDRESS, idempotencyKey: refused.idempotencyKey });
  assert.equal(again.paid, true, `order: ${JSON.stringify(again.order)} error: ${JSON.stringify(again.error)} cashier: ${again.errMsg}`);
  assert.equal(again.out_trade_no, first.out_trade_no, 'the same order was paid');
  assert.equal(await teaStock(), start, 'no more stock held');
  const mine = await shop.orders.list();
  assert.deepEqual(mine.orders.map((o) => o.out_trade_no), [first.out_trade_no], 'one order');
  assert.equal((await prepays()).filter((no) => no === first.out_trade_no).length, 1, 'one prepay order at WeChat Pay');
});

test('shop.orders: the user lists and reads orders, closes an unpaid one, confirms receipt of a shipped one', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const user = { cashier: 'cancel', user: 'orders-' + Date.now() };
  const wx = sandboxWx(server.baseUrl, user);
  const shop = client(wx);
  const unpaid = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(unpaid.paid, false);
  user.cashier = 'pay';
  const paid = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(paid.paid, true, JSON.stringify(paid.order));

  const page = await shop.orders.list({ limit: 1 });
  assert.deepEqual(page.orders.map((o) => o.out_trade_no), [paid.out_trade_no], 'newest first, one a page');
  assert.ok(page.next, 'a second page');
  const rest = await shop.orders.list({ cursor: page.next });
  assert.deepEqual(rest.orders.map((o) => o.out_trade_no), [unpaid.out_trade_no]);
  assert.equal(rest.next, null);
  const got = await shop.orders.get(paid.out_trade_no);
  assert.equal(got.total_fee, 1990);
  assert.equal(got.freight, 0);
  assert.ok(page.orders.every((o) => o.freight === 0), JSON.stringify(page.orders));
  assert.ok(PAID.includes(got.status), got.status);

  await assert.rejects(shop.orders.close(paid.out_trade_no), { code: 'ORDER_PAID', statusCode: 409 });
  const closed = await shop.orders.close(unpaid.out_trade_no);
  assert.equal(closed.status, 'CLOSED');
  // Its key is spent now: buying again with it is refused and hands no key back.
  await assert.rejects(shop.buy({ items: [TEA], address: ADDRESS, idempotencyKey: unpaid.idempotencyKey }), (e) => e.code === 'ORDER_CLOSED' && e.idempotencyKey === undefined);

  await assert.rejects(shop.orders.confirmReceipt(paid.out_trade_no), { code: 'ORDER_NOT_SHIPPED', statusCode: 409 });
  const ship = await fetch(`${server.baseUrl}/admin/orderSync`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${process.env.ADMIN_TOKEN || 'local-admin-token'}` },
    body: JSON.stringify({ action: 'ship', out_trade_no: paid.out_trade_no, delivery_id: 'OTHERS', waybill_id: 'W123' }),
  });
  assert.equal(ship.status, 200, await ship.text());
  const received = await shop.orders.confirmReceipt(paid.out_trade_no);
  assert.equal(received.status, 'RECEIVED');
});

/** The seeded tea's stock, as the merchant reads it. */
async function teaStock() {
  const res = await fetch(`${server.baseUrl}/admin/catalogSync`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${process.env.ADMIN_TOKEN || 'local-admin-token'}` },
    body: JSON.stringify({ action: 'get', product_id: 'tea' }),
    signal: AbortSignal.timeout(10000),
  });
  const body = await res.json();
  assert.equal(res.status, 200, JSON.stringify(body));
  return body.product.skus.find((k) => k.sku_id === 'tea-250g').stock;
}

test('a cancelled cashier, then back through another enter scene: buy with the key closes that order (stock back) and pays a new one', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const user = { cashier: 'cancel', scene: 1001, user: 'scene-' + Date.now() };
  const wx = sandboxWx(server.baseUrl, user);
  const shop = client(wx);
  const start = await teaStock();
  const first = await shop.buy({ items: [TEA], address: ADDRESS });
  assert.equal(first.paid, false);
  assert.ok(first.idempotencyKey, 'an unpaid result hands back its key');
  assert.equal(first.order.freight, 0);
  assert.equal(await teaStock(), start - 1, 'the first order holds its tin');

  // The user leaves, comes back from a share card (another scene) and taps Buy again.
  user.scene = 1007;
  user.cashier = 'pay';
  const second = await shop.buy({ items: [TEA], address: ADDRESS, idempotencyKey: first.idempotencyKey });
  assert.equal(second.cashier, 'ok', `cashier: ${second.errMsg}`);
  assert.equal(second.paid, true, `order: ${JSON.stringify(second.order)} error: ${JSON.stringify(second.error)}`);
  assert.notEqual(second.out_trade_no, first.out_trade_no, 'a new order for the new scene');
  assert.deepEqual(second.previousOrder, { out_trade_no: first.out_trade_no, outcome: 'closed' });
  assert.equal(second.idempotencyKey, undefined);
  assert.deepEqual(
    wx.log.filter((x) => x.name === 'unifiedOrder').map((x) => x.status),
    [200, 422, 200],
    'the key refused once for the new scene, then a new key'
  );
  assert.equal((await shop.orders.get(first.out_trade_no)).status, 'CLOSED', 'the first order is closed');
  assert.equal(await teaStock(), start - 1, 'one tin held, by the paid order: the first one\'s is back');
  const mine = await shop.orders.list();
  assert.deepEqual(
    mine.orders.map((o) => [o.out_trade_no, PAID.includes(o.status) ? 'paid' : o.status]),
    [[second.out_trade_no, 'paid'], [first.out_trade_no, 'CLOSED']],
    'one paid order, nothing left open'
  );
  // The first key, sent again from the first scene, is still that (closed) order's: never a second payment.
  user.scene = 1001;
  await assert.rejects(shop.buy({ items: [TEA], address: ADDRESS, idempotencyKey: first.idempotencyKey }), (e) => e.code === 'ORDER_CLOSED');
});

test('a phone clock hours ahead of the server\'s logs in once, not before every call', { timeout: TEST_TIMEOUT_MS }, async () => {
  requireServer();
  const real = Date.now;
  Date.now = () => real() + 5 * 3600 * 1000; // past the token's whole life (SESSION_TTL_SECS)
  try {
    const wx = sandboxWx(server.baseUrl, { cashier: 'pay', user: 'clock-' + real() });
    const shop = client(wx);
    const r = await shop.buy({ items: [TEA], address: ADDRESS });
    assert.equal(r.paid, true, `order: ${JSON.stringify(r.order)} error: ${JSON.stringify(r.error)}`);
    await shop.orders.list();
    await shop.orders.get(r.out_trade_no);
    assert.equal(wx.logins, 1, `logins: ${wx.log.map((x) => x.name)}`);
    assert.ok(!wx.log.some((x) => x.status === 401), 'no call was refused');
    const s = wx.storage.get('wxshop.session');
    assert.ok(Math.abs(s.clock_offset_ms - 5 * 3600 * 1000) < 5000, JSON.stringify(s));
  } finally {
    Date.now = real;
  }
});
