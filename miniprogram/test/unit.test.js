// Pure unit tests: a fully stubbed `wx`, no server. Retry-once, error mapping, pay routing.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { createClient, addressFromWx, formatFen, PAID_STATUSES, _internal } = require('../wxshop.js');

/**
 * A fake wx. `routes[name]` is a function (data, header, call#) returning
 * { statusCode, data } or { fail: errMsg }, answered at once, or after `delayMs` if given: like
 * wx.request, a call whose answer takes longer than its `timeout` fails with a timeout then.
 */
function fakeWx(routes, extra) {
  const storage = new Map();
  const calls = [];
  let loginCount = 0;
  const wx = Object.assign(
    {
      storage,
      calls,
      get loginCount() {
        return loginCount;
      },
      getStorageSync: (k) => (storage.has(k) ? storage.get(k) : ''),
      setStorageSync: (k, v) => storage.set(k, v),
      removeStorageSync: (k) => storage.delete(k),
      login: ({ success }) => {
        loginCount += 1;
        setImmediate(() => success({ code: 'code-' + loginCount, errMsg: 'login:ok' }));
      },
      getEnterOptionsSync: () => ({ scene: 1175 }),
      request: (opts) => {
        const name = opts.url.replace(/^.*\/fn\//, '');
        const n = calls.filter((c) => c.name === name).length;
        calls.push({ name, url: opts.url, method: opts.method, data: opts.data, header: opts.header, timeout: opts.timeout });
        const route = routes[name];
        const out = route ? route(opts.data, opts.header, n) : { statusCode: 404, data: { code: 'NOT_FOUND', message: 'no route' } };
        const answer = () => {
          if (out.fail) opts.fail({ errMsg: out.fail });
          else opts.success({ statusCode: out.statusCode, data: out.data, header: {} });
        };
        if (out.delayMs === undefined) setImmediate(answer);
        else if (opts.timeout && out.delayMs > opts.timeout) setTimeout(() => opts.fail({ errMsg: 'request:fail timeout' }), opts.timeout);
        else setTimeout(answer, out.delayMs);
      },
    },
    extra || {}
  );
  return wx;
}

const future = () => Math.floor(Date.now() / 1000) + 3600;
const loginRoute = (data) => ({ statusCode: 200, data: { token: 'tok-' + data.code, expires_at: future(), openid: 'o-alice' } });
const bearer = (h) => (h && h.Authorization) || '';

test('login stores the session and later calls send the bearer token', async () => {
  const wx = fakeWx({
    login: loginRoute,
    queryOrder: (d, h) => ({ statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status: 'PAID' }, auth: bearer(h) } }),
  });
  const c = createClient({ baseUrl: 'http://x/', wx });
  const r = await c.callFunction({ name: 'queryOrder', data: { out_trade_no: 'T1' } });
  assert.equal(r.result.auth, 'Bearer tok-code-1');
  assert.equal(wx.loginCount, 1);
  assert.equal(wx.storage.get('wxshop.session').token, 'tok-code-1');
  assert.equal(wx.calls[0].url, 'http://x/fn/login');
  assert.deepEqual(wx.calls[0].data, { code: 'code-1' });
  assert.equal(wx.calls[0].header.Authorization, undefined, 'login carries no token');
  assert.equal(wx.calls[1].method, 'POST');
  // A second call reuses the stored token.
  await c.callFunction({ name: 'queryOrder', data: { out_trade_no: 'T1' } });
  assert.equal(wx.loginCount, 1);
});

test('an expired stored token is refreshed before the call', async () => {
  const wx = fakeWx({ login: loginRoute, ping: (d, h) => ({ statusCode: 200, data: { auth: bearer(h) } }) });
  wx.storage.set('wxshop.session', { token: 'old', expires_at: Math.floor(Date.now() / 1000) - 10 });
  const c = createClient({ baseUrl: 'http://x', wx });
  const r = await c.callFunction({ name: 'ping' });
  assert.equal(r.result.auth, 'Bearer tok-code-1');
  assert.deepEqual(wx.calls.map((x) => x.name), ['login', 'ping']);
});

test('a 401 logs in again and retries exactly once', async () => {
  const wx = fakeWx({
    login: loginRoute,
    ping: (d, h) =>
      bearer(h) === 'Bearer bogus'
        ? { statusCode: 401, data: { code: 'UNAUTHENTICATED', message: 'bad token' } }
        : { statusCode: 200, data: { ok: true, auth: bearer(h) } },
  });
  wx.storage.set('wxshop.session', { token: 'bogus', expires_at: future() });
  const c = createClient({ baseUrl: 'http://x', wx });
  const r = await c.callFunction({ name: 'ping', data: { a: 1 } });
  assert.deepEqual(r, { result: { ok: true, auth: 'Bearer tok-code-1' } });
  assert.deepEqual(wx.calls.map((x) => x.name), ['ping', 'login', 'ping']);
  assert.deepEqual(wx.calls[2].data, { a: 1 });
  assert.equal(wx.storage.get('wxshop.session').token, 'tok-code-1');
});

test('a second 401 is not retried again and surfaces as UNAUTHENTICATED', async () => {
  const wx = fakeWx({ login: loginRoute, ping: () => ({ statusCode: 401, data: { code: 'UNAUTHENTICATED', message: 'nope' } }) });
  wx.storage.set('wxshop.session', { token: 'bogus', expires_at: future() });
  const c = createClient({ baseUrl: 'http://x', wx });
  await assert.rejects(c.callFunction({ name: 'ping' }), { code: 'UNAUTHENTICATED', message: 'nope', statusCode: 401 });
  assert.deepEqual(wx.calls.map((x) => x.name), ['ping', 'login', 'ping']);
  assert.equal(wx.loginCount, 1);
});

test('a bare-string token in storage is accepted and refreshed on 401', async () => {
  const wx = fakeWx({
    login: loginRoute,
    ping: (d, h) => (bearer(h) === 'Bearer legacy' ? { statusCode: 401, data: { code: 'UNAUTHENTICATED', message: 'x' } } : { statusCode: 200, data: {} }),
  });
  wx.storage.set('wxshop.session', 'legacy');
  const c = createClient({ baseUrl: 'http://x', wx });
  await c.callFunction({ name: 'ping' });
  assert.deepEqual(wx.calls.map((x) => x.name), ['ping', 'login', 'ping']);
});

test('concurrent calls without a session share one login', async () => {
  const wx = fakeWx({ login: loginRoute, ping: () => ({ statusCode: 200, data: {} }) });
  const c = createClient({ baseUrl: 'http://x', wx });
  await Promise.all([c.callFunction({ name: 'ping' }), c.callFunction({ name: 'ping' }), c.callFunction({ name: 'ping' })]);
  assert.equal(wx.loginCount, 1);
});

test('error mapping: {code,message} bodies, non-JSON bodies, network failures', async () => {
  const wx = fakeWx({
    login: loginRoute,
    bad: () => ({ statusCode: 400, data: { code: 'PRODUCT_NOT_FOUND', message: 'no such product' } }),
    boom: () => ({ statusCode: 502, data: '<html>Bad Gateway</html>' }),
    jsonText: () => ({ statusCode: 409, data: '{"code":"CONFLICT","message":"busy"}' }),
    down: () => ({ fail: 'request:fail timeout' }),
  });
  const c = createClient({ baseUrl: 'http://x', wx });
  await assert.rejects(c.callFunction({ name: 'bad' }), (e) => {
    assert.deepEqual(e, { code: 'PRODUCT_NOT_FOUND', message: 'no such product', statusCode: 400 });
    return true;
  });
  await assert.rejects(c.callFunction({ name: 'boom' }), { code: 'SERVER_ERROR', statusCode: 502 });
  await assert.rejects(c.callFunction({ name: 'jsonText' }), { code: 'CONFLICT', message: 'busy', statusCode: 409 });
  await assert.rejects(c.callFunction({ name: 'down' }), { code: 'NETWORK_ERROR', message: 'request:fail timeout', statusCode: 0 });
  // A network failure is not retried (only 401 is).
  assert.equal(wx.calls.filter((x) => x.name === 'down').length, 1);
});

test('a failing login surfaces its own error', async () => {
  const wx = fakeWx({ login: () => ({ statusCode: 400, data: { code: 'INVALID_CODE', message: 'code been used' } }) });
  const c = createClient({ baseUrl: 'http://x', wx });
  await assert.rejects(c.callFunction({ name: 'ping' }), { code: 'INVALID_CODE', statusCode: 400 });
  const wx2 = fakeWx({}, { login: ({ fail }) => fail({ errMsg: 'login:fail no network' }) });
  const c2 = createClient({ baseUrl: 'http://x', wx: wx2 });
  await assert.rejects(c2.login(), { code: 'WX_LOGIN_FAILED', message: 'login:fail no network' });
});

function payFixture(extra) {
  return Object.assign(
    {
      out_trade_no: 'T100',
      total_fee: 1990,
      payment: { timeStamp: 1700000000, nonceStr: 'n', package: 'prepay_id=wx1', signType: 'MD5', paySign: 'S' },
    },
    extra || {}
  );
}

test('pay: success cashier, then polls until PAID', async () => {
  let paidCalls = null;
  const wx = fakeWx(
    {
      login: loginRoute,
      queryOrder: (d, h, n) => ({ statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status: n < 2 ? 'PREPAID' : 'PAID' } } }),
    },
    {
      requestPayment: (p) => {
        paidCalls = p;
        setImmediate(() => p.success({ errMsg: 'requestPayment:ok' }));
      },
      requestOrderPayment: () => assert.fail('requestOrderPayment must not be used'),
    }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 2000 } });
  const r = await c.pay(payFixture());
  assert.equal(r.paid, true);
  assert.equal(r.cashier, 'ok');
  assert.equal(r.order.status, 'PAID');
  assert.equal(paidCalls.timeStamp, '1700000000', 'timeStamp is passed as a string');
  assert.equal(paidCalls.package, 'prepay_id=wx1');
  assert.equal(paidCalls.orderInfo, undefined);
  assert.equal(wx.calls.filter((x) => x.name === 'queryOrder').length, 3);
  assert.deepEqual(wx.calls.find((x) => x.name === 'queryOrder').data, { out_trade_no: 'T100' });
});

test('pay: ticket/orderInfo/fund_type 1 use requestOrderPayment with orderInfo', async () => {
  for (const extra of [{ ticket: 'tk', orderInfo: { out_order_id: 'T100' } }, { fund_type: 1 }, { ticket: 'tk' }]) {
    let used = null;
    const wx = fakeWx(
      { login: loginRoute, queryOrder: () => ({ statusCode: 200, data: { order: { status: 'PAID' } } }) },
      {
        requestPayment: () => assert.fail('requestPayment must not be used'),
        requestOrderPayment: (p) => {
          used = p;
          setImmediate(() => p.success({ errMsg: 'requestOrderPayment:ok' }));
        },
      }
    );
    const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
    const r = await c.pay(payFixture(extra));
    assert.equal(r.paid, true);
    assert.equal(used.paySign, 'S');
    assert.deepEqual(used.orderInfo, extra.orderInfo);
  }
  assert.equal(_internal.needsOrderPayment({}), false);
});

test('pay: a cancelled cashier resolves paid:false within the bound', async () => {
  const wx = fakeWx(
    { login: loginRoute, queryOrder: () => ({ statusCode: 200, data: { order: { status: 'PREPAID' } } }) },
    { requestPayment: (p) => setImmediate(() => p.fail({ errMsg: 'requestPayment:fail cancel' })) }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 20, timeoutMs: 5000, failTimeoutMs: 100 } });
  const t0 = Date.now();
  const r = await c.pay(payFixture());
  const took = Date.now() - t0;
  assert.equal(r.paid, false);
  assert.equal(r.cashier, 'cancel');
  assert.equal(r.order.status, 'PREPAID');
  assert.ok(took < 1000, `took ${took} ms`);
  assert.ok(wx.calls.filter((x) => x.name === 'queryOrder').length >= 2);
});

test('pay: a failed cashier whose order turns out paid still reports paid', async () => {
  const wx = fakeWx(
    { login: loginRoute, queryOrder: () => ({ statusCode: 200, data: { order: { status: 'PAID' } } }) },
    { requestPayment: (p) => setImmediate(() => p.fail({ errMsg: 'requestPayment:fail system error' })) }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  const r = await c.pay(payFixture());
  assert.deepEqual([r.paid, r.cashier], [true, 'fail']);
});

test('pay: polling stops at the bound when the server keeps failing', async () => {
  const wx = fakeWx(
    { login: loginRoute, queryOrder: () => ({ fail: 'request:fail' }) },
    { requestPayment: (p) => setImmediate(() => p.success({})) }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 10, timeoutMs: 150 } });
  const t0 = Date.now();
  const r = await c.pay(payFixture());
  assert.ok(Date.now() - t0 < 1000);
  assert.equal(r.paid, false);
  assert.equal(r.order, null);
  assert.equal(r.error.code, 'NETWORK_ERROR');
});

test('pay: a slow queryOrder cannot hold pay() past its bound', async () => {
  // The order query hangs (a slow store, WeChat's orderquery behind it) for 3 s, far more than
  // the 300 ms bound and less than the 15 s request timeout.
  for (const cashier of ['ok', 'cancel']) {
    const wx = fakeWx(
      { login: loginRoute, queryOrder: () => ({ delayMs: 3000, statusCode: 200, data: { order: { status: 'PAID' } } }) },
      {
        requestPayment: (p) =>
          setImmediate(() => (cashier === 'ok' ? p.success({}) : p.fail({ errMsg: 'requestPayment:fail cancel' }))),
      }
    );
    wx.storage.set('wxshop.session', { token: 't', expires_at: future() });
    const c = createClient({ baseUrl: 'http://x', wx, requestTimeoutMs: 15000, payPoll: { intervalMs: 50, timeoutMs: 300, failTimeoutMs: 300 } });
    const t0 = Date.now();
    const r = await c.pay(payFixture());
    const took = Date.now() - t0;
    assert.ok(took < 600, `pay() took ${took} ms with a 300 ms bound (${cashier})`);
    assert.equal(r.paid, false);
    assert.equal(r.error.code, 'NETWORK_ERROR');
    for (const q of wx.calls.filter((x) => x.name === 'queryOrder')) {
      assert.ok(q.timeout <= 300, `a query was given ${q.timeout} ms with at most 300 left`);
    }
  }
});

test('pay: a CLOSED order stops polling early', async () => {
  const wx = fakeWx(
    { login: loginRoute, queryOrder: () => ({ statusCode: 200, data: { order: { status: 'CLOSED' } } }) },
    { requestPayment: (p) => setImmediate(() => p.success({})) }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 10, timeoutMs: 5000 } });
  const r = await c.pay(payFixture());
  assert.equal(r.paid, false);
  assert.equal(wx.calls.filter((x) => x.name === 'queryOrder').length, 1);
});

test('buy: sends items, enter scene and an idempotency key, then pays', async () => {
  const wx = fakeWx(
    {
      login: loginRoute,
      unifiedOrder: (d) => ({ statusCode: 200, data: payFixture({ echo: d }) }),
      queryOrder: () => ({ statusCode: 200, data: { order: { status: 'PAID' } } }),
    },
    { requestPayment: (p) => setImmediate(() => p.success({})) }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  const r = await c.buy({ items });
  assert.equal(r.paid, true);
  const sent = wx.calls.find((x) => x.name === 'unifiedOrder').data;
  assert.deepEqual(sent.items, items);
  assert.equal(sent.scene, 1175);
  assert.match(sent.idempotency_key, /^[0-9a-f]{32}$/);
  await c.buy({ items, idempotencyKey: 'k-1' });
  assert.equal(wx.calls.filter((x) => x.name === 'unifiedOrder')[1].data.idempotency_key, 'k-1');
  assert.notEqual(_internal.newIdempotencyKey(), _internal.newIdempotencyKey());
});

test('buy: forwards the delivery address only when given', async () => {
  const wx = fakeWx(
    {
      login: loginRoute,
      unifiedOrder: () => ({ statusCode: 200, data: payFixture() }),
      queryOrder: () => ({ statusCode: 200, data: { order: { status: 'PAID' } } }),
    },
    { requestPayment: (p) => setImmediate(() => p.success({})) }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  const address = { receiver_name: 'Alice', detailed_address: '1 Tea St', tel_number: '13800000000' };
  await c.buy({ items, address, traceId: 'tr-1' });
  await c.buy({ items });
  const sent = wx.calls.filter((x) => x.name === 'unifiedOrder').map((x) => x.data);
  assert.deepEqual(sent[0].address, address);
  assert.equal(sent[0].trace_id, 'tr-1', 'the pre-order check\'s traceId is forwarded');
  assert.equal('address' in sent[1], false);
  assert.equal('trace_id' in sent[1], false);
});

test('addressFromWx maps a wx.chooseAddress result', () => {
  const a = addressFromWx({
    userName: '张三', telNumber: '020-81167888', provinceName: '广东省', cityName: '广州市',
    countyName: '海珠区', detailInfo: '新港中路397号', postalCode: '510000', errMsg: 'chooseAddress:ok',
  });
  assert.deepEqual(a, {
    receiver_name: '张三', detailed_address: '广东省广州市海珠区新港中路397号', tel_number: '020-81167888',
    province: '广东省', city: '广州市', town: '海珠区',
  });
  assert.equal(addressFromWx(null), null);
});

test('buy: the same idempotency key is reused on the 401 retry', async () => {
  const wx = fakeWx(
    {
      login: loginRoute,
      unifiedOrder: (d, h) =>
        bearer(h) === 'Bearer bogus' ? { statusCode: 401, data: { code: 'UNAUTHENTICATED', message: 'x' } } : { statusCode: 200, data: payFixture() },
      queryOrder: () => ({ statusCode: 200, data: { order: { status: 'PAID' } } }),
    },
    { requestPayment: (p) => setImmediate(() => p.success({})) }
  );
  wx.storage.set('wxshop.session', { token: 'bogus', expires_at: future() });
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  await c.buy({ items: [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }] });
  const keys = wx.calls.filter((x) => x.name === 'unifiedOrder').map((x) => x.data.idempotency_key);
  assert.equal(keys.length, 2);
  assert.equal(keys[0], keys[1]);
});

const TEA = { product_id: 'tea', sku_id: 'tea-250g', quantity: 1 };
const FAST_RETRY = { attempts: 5, delayMs: 1, maxDelayMs: 4, budgetMs: 5000 };
const paidRoutes = (unifiedOrder) => ({
  login: loginRoute,
  unifiedOrder,
  queryOrder: () => ({ statusCode: 200, data: { order: { status: 'PAID' } } }),
});
const payOk = { requestPayment: (p) => setImmediate(() => p.success({})) };
const orderKeys = (wx) => wx.calls.filter((x) => x.name === 'unifiedOrder').map((x) => x.data.idempotency_key);

test('buy: a timed-out or failed order call is retried with the same key and resolves', async () => {
  for (const first of ['request:fail timeout', 'request:fail net::ERR_CONNECTION_RESET']) {
    const wx = fakeWx(paidRoutes((d, h, n) => (n === 0 ? { fail: first } : { statusCode: 200, data: payFixture() })), payOk);
    const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY, payPoll: { intervalMs: 5, timeoutMs: 500 } });
    const r = await c.buy({ items: [TEA] });
    assert.equal(r.paid, true);
    const keys = orderKeys(wx);
    assert.equal(keys.length, 2, first);
    assert.equal(new Set(keys).size, 1, `one idempotency key for both calls: ${keys}`);
  }
});

test('buy: 409 REQUEST_IN_PROGRESS and 503 are retried with the same key', async () => {
  const transient = [
    { statusCode: 409, data: { code: 'REQUEST_IN_PROGRESS', message: 'the same order request is being processed; retry in a moment' } },
    { statusCode: 503, data: { code: 'STORE_UNAVAILABLE', message: 'storage is unavailable; retry shortly' } },
    { statusCode: 503, data: { message: 'Service Unavailable' } },
  ];
  for (const answer of transient) {
    const wx = fakeWx(paidRoutes((d, h, n) => (n === 0 ? answer : { statusCode: 200, data: payFixture() })), payOk);
    const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY, payPoll: { intervalMs: 5, timeoutMs: 500 } });
    const r = await c.buy({ items: [TEA] });
    assert.equal(r.paid, true, JSON.stringify(answer));
    const keys = orderKeys(wx);
    assert.equal(keys.length, 2, JSON.stringify(answer));
    assert.equal(new Set(keys).size, 1);
  }
});

test('buy: a 502 WeChat refusal is final: one call, no retries', async () => {
  // A wrong API key, no permission for the scene check, a refused shop/order/add: asking again
  // only repeats the refusal (and each try made and released an order).
  for (const code of ['PAYMENT_REFUSED', 'WECHAT_REFUSED', 'SCENE_CHECK_REFUSED']) {
    const answer = { statusCode: 502, data: { code, message: 'refused' } };
    const wx = fakeWx(paidRoutes(() => answer), payOk);
    const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY });
    const err = await c.buy({ items: [TEA] }).catch((e) => e);
    assert.equal(err.code, code);
    assert.equal(err.statusCode, 502);
    assert.equal(orderKeys(wx).length, 1, `${code} must be sent exactly once`);
  }
});

test('buy: a gateway\'s own 502/504 (not our JSON) is retried with the same key', async () => {
  const gateway = [
    { statusCode: 502, data: '<html><body>502 Bad Gateway</body></html>' },
    { statusCode: 502, data: { message: 'Internal Server Error' } },
    { statusCode: 504, data: { message: 'Endpoint request timed out' } },
  ];
  for (const answer of gateway) {
    const wx = fakeWx(paidRoutes((d, h, n) => (n === 0 ? answer : { statusCode: 200, data: payFixture() })), payOk);
    const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY, payPoll: { intervalMs: 5, timeoutMs: 500 } });
    const r = await c.buy({ items: [TEA] });
    assert.equal(r.paid, true, JSON.stringify(answer));
    const keys = orderKeys(wx);
    assert.equal(keys.length, 2, JSON.stringify(answer));
    assert.equal(new Set(keys).size, 1);
  }
});

test('buy: when the retries give up, the rejection carries the key and a later buy with it sends the same key', async () => {
  let down = true;
  const wx = fakeWx(paidRoutes(() => (down ? { fail: 'request:fail timeout' } : { statusCode: 200, data: payFixture() })), payOk);
  const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  let err = null;
  await c.buy({ items: [TEA] }).catch((e) => {
    err = e;
  });
  assert.ok(err, 'buy must reject while the server cannot be reached');
  assert.equal(err.code, 'NETWORK_ERROR');
  assert.equal(err.statusCode, 0);
  const sent = orderKeys(wx);
  assert.equal(sent.length, FAST_RETRY.attempts, 'bounded attempts');
  assert.equal(new Set(sent).size, 1);
  assert.equal(err.idempotencyKey, sent[0]);
  // The page retries the same purchase with the key from the error.
  down = false;
  const r = await c.buy({ items: [TEA], idempotencyKey: err.idempotencyKey });
  assert.equal(r.paid, true);
  assert.deepEqual(new Set(orderKeys(wx)), new Set([err.idempotencyKey]));
});

test('buy: the order retries stop at the time budget', async () => {
  const wx = fakeWx(paidRoutes(() => ({ statusCode: 503, data: { code: 'WECHAT_UNAVAILABLE', message: 'x' } })), payOk);
  // Waits 50 ms, then would wait 100 ms: past the 120 ms budget, so two calls only.
  const c = createClient({ baseUrl: 'http://x', wx, orderRetry: { attempts: 10, delayMs: 50, maxDelayMs: 1000, budgetMs: 120 } });
  await assert.rejects(c.buy({ items: [TEA] }), (e) => e.code === 'WECHAT_UNAVAILABLE' && e.statusCode === 503 && typeof e.idempotencyKey === 'string');
  assert.equal(orderKeys(wx).length, 2);
});

test('buy: a refusal is not retried and still carries the key', async () => {
  const refusals = [
    { statusCode: 404, data: { code: 'NO_SUCH_SKU', message: 'nope' } },
    { statusCode: 409, data: { code: 'SOLD_OUT', message: 'sold out' } },
    { statusCode: 500, data: { code: 'INTERNAL', message: 'bug' } },
  ];
  for (const answer of refusals) {
    const wx = fakeWx(paidRoutes(() => answer), payOk);
    const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY });
    await assert.rejects(c.buy({ items: [TEA], idempotencyKey: 'k-7' }), (e) => {
      assert.deepEqual(e, { code: answer.data.code, message: answer.data.message, statusCode: answer.statusCode, idempotencyKey: 'k-7' });
      return true;
    });
    assert.equal(orderKeys(wx).length, 1, answer.data.code);
  }
});

test('buy: an order error rejects with the error shape and never opens the cashier', async () => {
  const wx = fakeWx(
    { login: loginRoute, unifiedOrder: () => ({ statusCode: 404, data: { code: 'PRODUCT_NOT_FOUND', message: 'nope' } }) },
    { requestPayment: () => assert.fail('cashier must not open') }
  );
  const c = createClient({ baseUrl: 'http://x', wx });
  await assert.rejects(c.buy({ items: [{ product_id: 'x', sku_id: 'y', quantity: 1 }] }), { code: 'PRODUCT_NOT_FOUND', statusCode: 404 });
  await assert.rejects(c.buy({ items: [] }), { code: 'INVALID_ARGUMENT' });
});

/** The statuses `OrderStatus::is_paid` matches in the server's order.rs, as sent on the wire. */
function serverPaidStatuses() {
  const src = fs.readFileSync(path.join(__dirname, '..', '..', 'shared', 'src', 'domain', 'order.rs'), 'utf8');
  const body = /pub fn is_paid\(self\) -> bool \{\s*matches!\(\s*self,([^)]*)\)/.exec(src);
  assert.ok(body, 'OrderStatus::is_paid (a matches! over self) not found in order.rs');
  const arms = body[1].split('|').map((a) => a.trim()).filter(Boolean);
  return arms.map((arm) => {
    const m = /^OrderStatus::([A-Za-z]+)$/.exec(arm);
    assert.ok(m, `unexpected is_paid arm: ${arm}`);
    return m[1].replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase(); // serde SCREAMING_SNAKE_CASE
  });
}

test('PAID_STATUSES is the server\'s OrderStatus::is_paid', () => {
  const server = serverPaidStatuses();
  assert.ok(server.includes('PAID') && server.includes('PARTIALLY_REFUNDED'), server.join());
  assert.deepEqual([...PAID_STATUSES].sort(), [...server].sort());
});

test('pay: a refunded or partly refunded order counts as paid, as on the server', async () => {
  for (const status of ['PARTIALLY_REFUNDED', 'REFUNDED']) {
    const wx = fakeWx(
      { login: loginRoute, queryOrder: () => ({ statusCode: 200, data: { order: { status } } }) },
      { requestPayment: (p) => setImmediate(() => p.success({})) }
    );
    const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 10, timeoutMs: 5000 } });
    const r = await c.pay(payFixture());
    assert.equal(r.paid, true, status);
    assert.equal(wx.calls.filter((x) => x.name === 'queryOrder').length, 1, 'polling stops at once');
  }
});

test('createClient validates its options', () => {
  assert.throws(() => createClient({ wx: {} }), /baseUrl/);
  assert.throws(() => createClient({ baseUrl: 'http://x' }), /wx/);
});

test('aftersale helpers send the actions aftersaleSync takes and refuse missing fields locally', async () => {
  const wx = fakeWx({
    login: loginRoute,
    aftersaleSync: (d) => {
      if (d.action === 'list') return { statusCode: 200, data: { aftersales: [{ aftersale_id: 'AS1', status: 'AWAITING_RETURN' }] } };
      return { statusCode: 200, data: { aftersale: { aftersale_id: d.aftersale_id || 'AS1', sent: d } } };
    },
  });
  const c = createClient({ baseUrl: 'http://x', wx });
  const applied = await c.aftersale.apply({ out_trade_no: 'T1', type: 'return', reason: 'too big' });
  const { idempotency_key: appliedKey, ...appliedRest } = applied.aftersale.sent;
  assert.ok(typeof appliedKey === 'string' && appliedKey.length > 0, 'an application carries its key');
  assert.deepEqual(appliedRest, { action: 'apply', out_trade_no: 'T1', reason: 'too big', type: 'return' });
  const sent = await c.aftersale.sendBack({ aftersale_id: 'AS1', delivery_id: 'SF', delivery_name: 'SF Express', waybill_id: 'SF1' });
  assert.deepEqual(sent.aftersale.sent, { action: 'return', aftersale_id: 'AS1', delivery_id: 'SF', delivery_name: 'SF Express', waybill_id: 'SF1' });
  const cancelled = await c.aftersale.cancel('AS1');
  assert.deepEqual(cancelled.aftersale.sent, { action: 'cancel', aftersale_id: 'AS1' });
  assert.deepEqual(await c.aftersale.list('T1'), [{ aftersale_id: 'AS1', status: 'AWAITING_RETURN' }]);

  const before = wx.calls.length;
  await assert.rejects(c.aftersale.sendBack({ aftersale_id: 'AS1', delivery_id: 'SF', delivery_name: 'SF' }), (e) => e.code === 'INVALID_ARGUMENT' && /waybill_id/.test(e.message));
  await assert.rejects(c.aftersale.apply({ out_trade_no: 'T1', type: 'exchange' }), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(c.aftersale.apply({}), (e) => e.code === 'INVALID_ARGUMENT');
  assert.equal(wx.calls.length, before, 'nothing was sent for invalid arguments');
});

test('aftersale.apply sends the product line it is about, and refuses a half-named or bad one locally', async () => {
  const wx = fakeWx({
    login: loginRoute,
    aftersaleSync: (d) => ({ statusCode: 200, data: { aftersale: { aftersale_id: 'AS1', product_id: d.product_id, sku_id: d.sku_id, quantity: d.quantity, sent: d } } }),
  });
  const c = createClient({ baseUrl: 'http://x', wx });
  const applied = await c.aftersale.apply({ out_trade_no: 'T1', product_id: 'cup', sku_id: 'cup-1', quantity: 1, reason: 'cracked' });
  const { idempotency_key: key, ...rest } = applied.aftersale.sent;
  assert.ok(key);
  assert.deepEqual(rest, { action: 'apply', out_trade_no: 'T1', product_id: 'cup', sku_id: 'cup-1', quantity: 1, reason: 'cracked' });
  assert.deepEqual([applied.aftersale.product_id, applied.aftersale.sku_id, applied.aftersale.quantity], ['cup', 'cup-1', 1]);
  // The whole line: no quantity sent, the server takes all of it.
  const whole = await c.aftersale.apply({ out_trade_no: 'T1', product_id: 'cup', sku_id: 'cup-1' });
  assert.equal('quantity' in whole.aftersale.sent, false);
  // No line: none sent (an order with one item, or the server says LINE_REQUIRED).
  const none = await c.aftersale.apply({ out_trade_no: 'T1' });
  assert.equal('product_id' in none.aftersale.sent || 'sku_id' in none.aftersale.sent, false);

  const before = wx.calls.length;
  const invalid = (params, field) =>
    assert.rejects(c.aftersale.apply(Object.assign({ out_trade_no: 'T1' }, params)), (e) => e.code === 'INVALID_ARGUMENT' && new RegExp(field).test(e.message) && e.idempotencyKey === undefined);
  await invalid({ product_id: 'cup' }, 'sku_id');
  await invalid({ sku_id: 'cup-1' }, 'product_id');
  await invalid({ product_id: 7, sku_id: 'cup-1' }, 'product_id');
  await invalid({ product_id: 'cup', sku_id: ' ' }, 'sku_id');
  await invalid({ quantity: 1 }, 'product_id');
  for (const quantity of [0, -1, 1.5, '2', null]) {
    await invalid({ product_id: 'cup', sku_id: 'cup-1', quantity }, 'quantity');
  }
  assert.equal(wx.calls.length, before, 'nothing was sent for invalid arguments');
});

test('aftersale.apply: an application whose answer was lost is sent again with its key, and a rejection carries it', async () => {
  const applyKeys = (wx) => wx.calls.filter((x) => x.name === 'aftersaleSync').map((x) => x.data.idempotency_key);
  // What the server's apply can answer that may pass on a second send: no answer, its 503
  // STORE_UNAVAILABLE, or a gateway's own 5xx (it never answers REQUEST_IN_PROGRESS).
  for (const first of [
    { fail: 'request:fail timeout' },
    { statusCode: 503, data: { code: 'STORE_UNAVAILABLE', message: 'storage is unavailable; retry shortly' } },
    { statusCode: 503, data: { message: 'Service Unavailable' } },
    { statusCode: 502, data: '<html>Bad Gateway</html>' },
  ]) {
    const wx = fakeWx({
      login: loginRoute,
      aftersaleSync: (d, h, n) => (n === 0 ? first : { statusCode: 200, data: { aftersale: { aftersale_id: 'AS1' } } }),
    });
    const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY });
    const r = await c.aftersale.apply({ out_trade_no: 'T1', amount: 500 });
    assert.equal(r.aftersale.aftersale_id, 'AS1');
    const keys = applyKeys(wx);
    assert.equal(keys.length, 2, JSON.stringify(first));
    assert.equal(new Set(keys).size, 1, `one key for both sends: ${keys}`);
  }
  // A refusal is final (not sent again) and still names the key; so does giving up.
  const refusing = fakeWx({
    login: loginRoute,
    aftersaleSync: () => ({ statusCode: 409, data: { code: 'NOT_REFUNDABLE', message: 'nothing left' } }),
  });
  const c = createClient({ baseUrl: 'http://x', wx: refusing, orderRetry: FAST_RETRY });
  const err = await c.aftersale.apply({ out_trade_no: 'T1', idempotencyKey: 'tap-1' }).catch((e) => e);
  assert.equal(err.code, 'NOT_REFUNDABLE');
  assert.equal(err.idempotencyKey, 'tap-1');
  assert.deepEqual(applyKeys(refusing), ['tap-1']);
});

test('buy: a key the server says is spent is not handed back for a retry', async () => {
  for (const answer of [
    { statusCode: 422, data: { code: 'IDEMPOTENCY_KEY_REUSED', message: 'this idempotency key was used for a different cart; use a new key' } },
    { statusCode: 409, data: { code: 'ORDER_CLOSED', message: 'the order this idempotency key made was closed unpaid; order again with a new key' } },
    // Closed while this call opened it at WeChat: the same key would be ORDER_CLOSED next.
    { statusCode: 409, data: { code: 'ORDER_NOT_OPEN', message: 'order closed while opening it' } },
  ]) {
    const wx = fakeWx(paidRoutes(() => answer), payOk);
    const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY });
    const err = await c.buy({ items: [TEA], idempotencyKey: 'old-key' }).catch((e) => e);
    assert.equal(err.code, answer.data.code);
    assert.equal(err.idempotencyKey, undefined, 'the next tap must use a new key');
    assert.equal(orderKeys(wx).length, 1, 'not sent again');
  }
});

test('aftersale.apply: a key the server says is spent is not handed back for a retry', async () => {
  const applyKeys = (wx) => wx.calls.filter((x) => x.name === 'aftersaleSync').map((x) => x.data.idempotency_key);
  const wx = fakeWx({
    login: loginRoute,
    aftersaleSync: () => ({ statusCode: 422, data: { code: 'IDEMPOTENCY_KEY_REUSED', message: 'this idempotency key was used for another application; use a new key' } }),
  });
  const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY });
  const err = await c.aftersale.apply({ out_trade_no: 'T1', amount: 100, idempotencyKey: 'tap-1' }).catch((e) => e);
  assert.equal(err.code, 'IDEMPOTENCY_KEY_REUSED');
  assert.equal(err.idempotencyKey, undefined, 'the next application must use a new key');
  assert.deepEqual(applyKeys(wx), ['tap-1'], 'not sent again');
});

// ---- buy: WeChat's pre-order check (wx.checkBeforeAddOrder) --------------------------------

/** A login answer from a server that makes `fund_type` orders with `trading_component`. */
const shopLogin = (fund_type, trading_component) => (data) => ({
  statusCode: 200,
  data: { token: 'tok-' + data.code, expires_at: future(), openid: 'o-alice', fund_type, trading_component },
});
/** wx.checkBeforeAddOrder answering `data` (as `res.data`, the shape public integrations read). */
const checkSays = (data, seen) => (opts) => {
  if (seen) seen.push(opts);
  setImmediate(() => opts.success({ errMsg: 'checkBeforeAddOrder:ok', data }));
};
const sentOrders = (wx) => wx.calls.filter((x) => x.name === 'unifiedOrder').map((x) => x.data);
/** console.warn captured while `f` runs. */
async function warnings(f) {
  const seen = [];
  const orig = console.warn;
  console.warn = (...a) => seen.push(a.join(' '));
  try {
    return { result: await f(), seen };
  } finally {
    console.warn = orig;
  }
}

test('buy: the pre-order check\'s traceId reaches unifiedOrder as trace_id, and buy reports what it said', async () => {
  const seen = [];
  for (const [check, shop] of [
    [{ requireOrder: 0, requiredFundType: 0, traceId: 'tr-plain' }, shopLogin(0, 'off')],
    [{ requireOrder: 1, requiredFundType: 0, traceId: 'tr-ordinary' }, shopLogin(0, 'always')],
    [{ requireOrder: 1, requiredFundType: 2, traceId: 'tr-either' }, shopLogin(1, 'always')],
    [{ requireOrder: 1, requiredFundType: 1, traceId: 'tr-secondary' }, shopLogin(1, 'always')],
    [{ requireOrder: 1, requiredFundType: 0, traceId: 'tr-scene' }, shopLogin(0, 'scene')],
  ]) {
    const wx = fakeWx(Object.assign(paidRoutes(() => ({ statusCode: 200, data: payFixture() })), { login: shop }), Object.assign({ checkBeforeAddOrder: checkSays(check, seen) }, payOk));
    const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
    const r = await c.buy({ items: [TEA] });
    assert.equal(r.paid, true, JSON.stringify(check));
    assert.equal(sentOrders(wx)[0].trace_id, check.traceId, JSON.stringify(check));
    assert.equal(sentOrders(wx)[0].require_order, check.requireOrder, 'the verdict goes with it (scene mode decides by it)');
    assert.deepEqual(r.orderCheck, Object.assign({ status: 'ok' }, check));
    assert.equal(wx.loginCount, 1, 'one login, which also said what the shop makes');
  }
  assert.equal(typeof seen[0].success, 'function');
  assert.equal(typeof seen[0].fail, 'function');
});

test('buy: an order WeChat requires and the shop does not make is refused before anything is made', async () => {
  const cases = [
    // [what the check says, the server's login, why]
    [{ requireOrder: 1, requiredFundType: 1, traceId: 't' }, shopLogin(0, 'always'), /secondary-merchant[\s\S]*this shop makes ordinary/],
    [{ requireOrder: 1, requiredFundType: 0, traceId: 't' }, shopLogin(1, 'always'), /ordinary[\s\S]*this shop makes secondary-merchant/],
    [{ requireOrder: 1, requiredFundType: 2, traceId: 't' }, shopLogin(0, 'off'), /WX_TRADING_COMPONENT=off/],
    [{ requireOrder: 1, requiredFundType: 0, traceId: 't' }, shopLogin(0, 'off'), /WX_TRADING_COMPONENT=off/],
    [{ requireOrder: 1, requiredFundType: 4, traceId: 't' }, shopLogin(1, 'always'), /does not know requiredFundType 4/],
    [{ requireOrder: 1, traceId: 't' }, shopLogin(0, 'always'), /gave no requiredFundType/],
    [{ requireOrder: 1, requiredFundType: 1, traceId: 't' }, loginRoute, /server did not say/],
  ];
  for (const [check, login, why] of cases) {
    const wx = fakeWx(Object.assign(paidRoutes(() => assert.fail('unifiedOrder must not be called')), { login }), {
      checkBeforeAddOrder: checkSays(check),
      requestPayment: () => assert.fail('cashier must not open'),
    });
    const c = createClient({ baseUrl: 'http://x', wx });
    const err = await c.buy({ items: [TEA], idempotencyKey: 'k-1' }).catch((e) => e);
    assert.equal(err.code, 'ORDER_TYPE_UNSUPPORTED', JSON.stringify([check, err]));
    assert.equal(err.statusCode, 0);
    assert.match(err.message, why);
    assert.equal(err.requiredFundType, check.requiredFundType);
    assert.deepEqual(err.orderCheck, Object.assign({ status: 'ok' }, check));
    // A key passed back may hold an earlier attempt's unpaid order: it is handed back.
    assert.equal(err.idempotencyKey, 'k-1', 'the passed-back key is kept for the next try');
    // A fresh key was never sent: nothing was made, no key to pick up.
    const fresh = await c.buy({ items: [TEA] }).catch((e) => e);
    assert.equal(fresh.code, 'ORDER_TYPE_UNSUPPORTED', JSON.stringify(fresh));
    assert.equal(fresh.idempotencyKey, undefined, 'nothing was made: no key to pick up');
    assert.deepEqual(sentOrders(wx), [], 'no order was asked for');
  }
  const err = _internal.orderTypeRefusal({ status: 'ok', requireOrder: 1, requiredFundType: 1 }, { fund_type: 0, trading_component: 'always' });
  assert.deepEqual([err.fundType, err.tradingComponent], [0, 'always']);
});

test('buy: without wx.checkBeforeAddOrder (older base library) it orders as before, without a trace id', async () => {
  const wx = fakeWx(paidRoutes(() => ({ statusCode: 200, data: payFixture() })), payOk);
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  const r = await c.buy({ items: [TEA] });
  assert.equal(r.paid, true);
  assert.deepEqual(r.orderCheck, { status: 'unavailable' });
  assert.equal('trace_id' in sentOrders(wx)[0], false);
  assert.equal('require_order' in sentOrders(wx)[0], false, 'no verdict: the server asks scene/check');
});

test('buy: a page that ran its own pre-order check passes its traceId and requireOrder', async () => {
  const wx = fakeWx(paidRoutes(() => ({ statusCode: 200, data: payFixture() })), Object.assign({ checkBeforeAddOrder: () => assert.fail('buy must not check again') }, payOk));
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  await c.buy({ items: [TEA], traceId: 'tr-page', requireOrder: 1 });
  await c.buy({ items: [TEA], traceId: 'tr-page2', requireOrder: 'yes' });
  const sent = sentOrders(wx);
  assert.deepEqual([sent[0].trace_id, sent[0].require_order], ['tr-page', 1]);
  assert.deepEqual([sent[1].trace_id, 'require_order' in sent[1]], ['tr-page2', false], 'only 0 or 1 is sent');
});

test('buy: a failing pre-order check is logged and reported, and the purchase goes on without a trace id', async () => {
  const failing = [
    [(o) => setImmediate(() => o.fail({ errMsg: 'checkBeforeAddOrder:fail system error' })), /system error/],
    [() => {
      throw new Error('not supported');
    }, /threw: not supported/],
    [() => {}, /no answer within 50 ms/], // never calls back
    [(o) => setImmediate(() => o.success({ errMsg: 'checkBeforeAddOrder:ok', data: {} })), /without requireOrder/],
  ];
  for (const [api, errMsg] of failing) {
    const wx = fakeWx(paidRoutes(() => ({ statusCode: 200, data: payFixture() })), Object.assign({ checkBeforeAddOrder: api }, payOk));
    const c = createClient({ baseUrl: 'http://x', wx, orderCheck: { timeoutMs: 50 }, payPoll: { intervalMs: 5, timeoutMs: 500 } });
    const { result: r, seen } = await warnings(() => c.buy({ items: [TEA] }));
    assert.equal(r.paid, true, String(errMsg));
    assert.equal(r.orderCheck.status, 'failed');
    assert.match(r.orderCheck.errMsg, errMsg);
    assert.equal('trace_id' in sentOrders(wx)[0], false);
    assert.equal(seen.length, 1, 'logged once');
    assert.match(seen[0], errMsg);
  }
});

test('buy: with orderCheck.required a missing or failing check refuses before anything is made', async () => {
  for (const extra of [{}, { checkBeforeAddOrder: (o) => setImmediate(() => o.fail({ errMsg: 'checkBeforeAddOrder:fail auth deny' })) }]) {
    const wx = fakeWx(paidRoutes(() => assert.fail('unifiedOrder must not be called')), extra);
    const c = createClient({ baseUrl: 'http://x', wx, orderCheck: { required: true } });
    const err = await c.buy({ items: [TEA] }).catch((e) => e);
    assert.equal(err.code, 'ORDER_CHECK_FAILED', JSON.stringify(err));
    assert.equal(err.idempotencyKey, undefined);
    assert.deepEqual(wx.calls, [], 'nothing was sent');
  }
});

test('buy: orderCheck: false, or a traceId from the caller, runs no check', async () => {
  const never = () => assert.fail('checkBeforeAddOrder must not be called');
  const wx = fakeWx(paidRoutes(() => ({ statusCode: 200, data: payFixture() })), Object.assign({ checkBeforeAddOrder: never }, payOk));
  const off = createClient({ baseUrl: 'http://x', wx, orderCheck: false, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  assert.deepEqual((await off.buy({ items: [TEA] })).orderCheck, { status: 'off' });
  const on = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  assert.deepEqual((await on.buy({ items: [TEA], traceId: 'page-trace' })).orderCheck, { status: 'caller' });
  const sent = sentOrders(wx);
  assert.equal('trace_id' in sent[0], false);
  assert.equal(sent[1].trace_id, 'page-trace');
});

test('buy: a session stored before the server said what it makes is renewed before the check is judged', async () => {
  const wx = fakeWx(
    Object.assign(paidRoutes(() => ({ statusCode: 200, data: payFixture() })), { login: shopLogin(1, 'always') }),
    Object.assign({ checkBeforeAddOrder: checkSays({ requireOrder: 1, requiredFundType: 1, traceId: 'tr-9' }) }, payOk)
  );
  wx.storage.set('wxshop.session', { token: 'old-but-valid', expires_at: future(), openid: 'o-alice' });
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  const r = await c.buy({ items: [TEA] });
  assert.equal(r.paid, true);
  assert.equal(wx.loginCount, 1);
  assert.deepEqual([c.session().fund_type, c.session().trading_component], [1, 'always']);
  // The next purchase needs no login: the session says it now.
  await c.buy({ items: [TEA] });
  assert.equal(wx.loginCount, 1);
});

test('buy: a traceId the server would refuse (BAD_TRACE_ID) is dropped, not sent', async () => {
  for (const traceId of ['has space', 'x'.repeat(129), 42, '追踪']) {
    const wx = fakeWx(paidRoutes(() => ({ statusCode: 200, data: payFixture() })), Object.assign({ checkBeforeAddOrder: checkSays({ requireOrder: 0, traceId }) }, payOk));
    const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
    const r = await c.buy({ items: [TEA] });
    assert.equal(r.paid, true);
    assert.equal('trace_id' in sentOrders(wx)[0], false, String(traceId));
    assert.equal(r.orderCheck.traceIdDropped, true);
  }
  assert.equal(_internal.usableTraceId('tr-3f9a-77'), true);
});

/**
 * A unifiedOrder that keeps idempotency keys as the server does: a repeated key answers the
 * same order, with its status as it is now (`orders` maps out_trade_no → status).
 */
function keyedUnifiedOrder(orders) {
  const byKey = new Map();
  return (d) => {
    if (!byKey.has(d.idempotency_key)) {
      const no = 'T' + (byKey.size + 1);
      byKey.set(d.idempotency_key, no);
      orders.set(no, 'PREPAID');
    }
    const no = byKey.get(d.idempotency_key);
    return { statusCode: 200, data: payFixture({ out_trade_no: no, status: orders.get(no) }) };
  };
}

test('buy: after a cancelled cashier the result hands back the key, and buying again with it pays the same order', async () => {
  const orders = new Map();
  const cashier = [];
  const wx = fakeWx(
    {
      login: loginRoute,
      unifiedOrder: keyedUnifiedOrder(orders),
      queryOrder: (d) => ({ statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status: orders.get(d.out_trade_no) } } }),
    },
    {
      requestPayment: (p) => {
        cashier.push(p.package);
        if (cashier.length === 1) return setImmediate(() => p.fail({ errMsg: 'requestPayment:fail cancel' }));
        orders.set('T1', 'PAID');
        setImmediate(() => p.success({ errMsg: 'requestPayment:ok' }));
      },
    }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500, failTimeoutMs: 20 } });
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  const first = await c.buy({ items });
  assert.equal(first.paid, false);
  assert.equal(first.cashier, 'cancel');
  const sentKey = wx.calls.find((x) => x.name === 'unifiedOrder').data.idempotency_key;
  assert.equal(first.idempotencyKey, sentKey, 'an unpaid result hands back the key it sent');
  const second = await c.buy({ items, idempotencyKey: first.idempotencyKey });
  assert.equal(second.paid, true);
  assert.equal(second.out_trade_no, 'T1', 'the same order was paid');
  assert.equal(orders.size, 1, 'no second order');
  assert.equal(second.idempotencyKey, undefined, 'a paid order hands back no key: the next buy is a new purchase');
});

test('buy: a passed-back key refused by the pre-order check is handed back, and buying again with it (check allowing) pays the same order', async () => {
  // The user cancelled the cashier, left, and came back through a scene where WeChat requires a
  // secondary-merchant order (this shop makes ordinary ones): buy refuses before anything is
  // sent. The unpaid order still holds its stock: the key must survive the refusal, or the
  // next tap (from a scene that allows it) makes a second order.
  for (const refusal of ['ORDER_TYPE_UNSUPPORTED', 'ORDER_CHECK_FAILED']) {
    const orders = new Map();
    const cashier = [];
    let says = { requireOrder: 0, traceId: 't-1' };
    const wx = fakeWx(
      {
        login: shopLogin(0, 'always'),
        unifiedOrder: keyedUnifiedOrder(orders),
        queryOrder: (d) => ({ statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status: orders.get(d.out_trade_no) } } }),
      },
      {
        checkBeforeAddOrder: (o) => {
          if (says === 'fail') return setImmediate(() => o.fail({ errMsg: 'checkBeforeAddOrder:fail system error' }));
          setImmediate(() => o.success({ errMsg: 'checkBeforeAddOrder:ok', data: says }));
        },
        requestPayment: (p) => {
          cashier.push(p.package);
          if (cashier.length === 1) return setImmediate(() => p.fail({ errMsg: 'requestPayment:fail cancel' }));
          orders.set('T1', 'PAID');
          setImmediate(() => p.success({ errMsg: 'requestPayment:ok' }));
        },
      }
    );
    const c = createClient({
      baseUrl: 'http://x',
      wx,
      orderCheck: { required: refusal === 'ORDER_CHECK_FAILED' },
      payPoll: { intervalMs: 5, timeoutMs: 500, failTimeoutMs: 20 },
    });
    const first = await c.buy({ items: [TEA] });
    assert.equal(first.paid, false);
    assert.ok(first.idempotencyKey, 'an unpaid result hands back its key');

    says = refusal === 'ORDER_CHECK_FAILED' ? 'fail' : { requireOrder: 1, requiredFundType: 1, traceId: 't-2' };
    const err = await c.buy({ items: [TEA], idempotencyKey: first.idempotencyKey }).then(
      (r) => assert.fail(`bought: ${JSON.stringify(r)}`),
      (e) => e
    );
    assert.equal(err.code, refusal, JSON.stringify(err));
    assert.equal(err.idempotencyKey, first.idempotencyKey, `${refusal}: the key of the unpaid order is handed back`);
    assert.equal(sentOrders(wx).length, 1, 'nothing sent for the refused try');

    says = { requireOrder: 0, traceId: 't-3' };
    const again = await c.buy({ items: [TEA], idempotencyKey: err.idempotencyKey });
    assert.equal(again.paid, true, JSON.stringify(again));
    assert.equal(again.out_trade_no, first.out_trade_no, 'the same order was paid');
    assert.equal(orders.size, 1, 'no second order');
    assert.deepEqual(sentOrders(wx).map((d) => d.idempotency_key), [first.idempotencyKey, first.idempotencyKey]);
  }
});

test('buy: a passed-back key is handed back on a refusal made before anything is sent, and on a failed login', async () => {
  const bad = await createClient({ baseUrl: 'http://x', wx: fakeWx({}) })
    .buy({ items: [], idempotencyKey: 'k-kept' })
    .catch((e) => e);
  assert.equal(bad.code, 'INVALID_ARGUMENT');
  assert.equal(bad.idempotencyKey, 'k-kept');
  // The check asks login what the shop makes, and login fails (offline): nothing was sent.
  const wx = fakeWx({ login: () => ({ fail: 'request:fail timeout' }) }, { checkBeforeAddOrder: checkSays({ requireOrder: 1, requiredFundType: 0 }) });
  const c = createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY });
  const offline = await c.buy({ items: [TEA], idempotencyKey: 'k-kept' }).catch((e) => e);
  assert.equal(offline.code, 'NETWORK_ERROR', JSON.stringify(offline));
  assert.equal(offline.idempotencyKey, 'k-kept');
  const fresh = await c.buy({ items: [TEA] }).catch((e) => e);
  assert.equal(fresh.code, 'NETWORK_ERROR');
  assert.equal(fresh.idempotencyKey, undefined, 'a fresh key never sent holds nothing');
});

test('pay: an order the server already reports paid opens no cashier', async () => {
  const wx = fakeWx(
    { login: loginRoute, queryOrder: (d) => ({ statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status: 'PAID' } } }) },
    {
      requestPayment: () => assert.fail('the cashier must not open for a paid order'),
      requestOrderPayment: () => assert.fail('the cashier must not open for a paid order'),
    }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  const r = await c.pay(payFixture({ status: 'PAID' }));
  assert.equal(r.paid, true);
  assert.equal(r.cashier, 'none');
  assert.equal(r.order.status, 'PAID', 'the server was still asked');
});

test('pay: a paid order answered with an empty payment (a resumed idempotency key) opens no cashier', async () => {
  const wx = fakeWx(
    { login: loginRoute, queryOrder: (d) => ({ statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status: 'PAID' } } }) },
    {
      requestPayment: () => assert.fail('the cashier must not open for a paid order'),
      requestOrderPayment: () => assert.fail('the cashier must not open for a paid order'),
    }
  );
  const c = createClient({ baseUrl: 'http://x', wx, payPoll: { intervalMs: 5, timeoutMs: 500 } });
  const r = await c.pay(payFixture({ status: 'PAID', fund_type: 1, payment: {} }));
  assert.equal(r.paid, true);
  assert.equal(r.cashier, 'none');
});

test('orders: list, get, close and confirmReceipt send what queryOrder takes and read what it answers', async () => {
  const wx = fakeWx({
    login: loginRoute,
    queryOrder: (d) => {
      if (d.out_trade_no === undefined) return { statusCode: 200, data: { orders: [{ out_trade_no: 'T2' }, { out_trade_no: 'T1' }], next: d.cursor ? null : 'c1' } };
      if (d.out_trade_no === 'NOPE') return { statusCode: 404, data: { code: 'ORDER_NOT_FOUND', message: 'no order NOPE' } };
      const status = { close: 'CLOSED', confirm: 'RECEIVED' }[d.action] || 'PAID';
      return { statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status, total_fee: 1990 } } };
    },
  });
  const c = createClient({ baseUrl: 'http://x', wx });
  const page1 = await c.orders.list();
  assert.deepEqual(page1, { orders: [{ out_trade_no: 'T2' }, { out_trade_no: 'T1' }], next: 'c1' });
  const page2 = await c.orders.list({ limit: 10, cursor: page1.next });
  assert.equal(page2.next, null);
  assert.deepEqual((await c.orders.get('T1')).status, 'PAID');
  assert.deepEqual((await c.orders.close('T1')).status, 'CLOSED');
  assert.deepEqual((await c.orders.confirmReceipt('T1')).status, 'RECEIVED');
  const sent = wx.calls.filter((x) => x.name === 'queryOrder').map((x) => x.data);
  assert.deepEqual(sent, [
    {},
    { limit: 10, cursor: 'c1' },
    { out_trade_no: 'T1' },
    { out_trade_no: 'T1', action: 'close' },
    { out_trade_no: 'T1', action: 'confirm' },
  ]);
  await assert.rejects(c.orders.get('NOPE'), { code: 'ORDER_NOT_FOUND', statusCode: 404 });
  const before = wx.calls.length;
  await assert.rejects(c.orders.get(''), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(c.orders.close(), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(c.orders.list({ limit: 0 }), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(c.orders.list({ limit: 101 }), (e) => e.code === 'INVALID_ARGUMENT');
  assert.equal(wx.calls.length, before, 'nothing was sent for invalid arguments');
});

test('aftersale.apply: an amount that is not whole fen is refused locally', async () => {
  const wx = fakeWx({ login: loginRoute, aftersaleSync: (d) => ({ statusCode: 200, data: { aftersale: { amount: d.amount } } }) });
  const c = createClient({ baseUrl: 'http://x', wx });
  for (const amount of [19.9, '1990', 0, -5, NaN]) {
    await assert.rejects(c.aftersale.apply({ out_trade_no: 'T1', amount }), (e) => e.code === 'INVALID_ARGUMENT' && /fen/.test(e.message), `amount ${amount}`);
  }
  assert.equal(wx.calls.length, 0, 'nothing was sent');
  assert.equal((await c.aftersale.apply({ out_trade_no: 'T1', amount: 1990 })).aftersale.amount, 1990);
});

test('a 401 that arrives after another call already logged in again uses that session: one login', async () => {
  const wx = fakeWx({
    login: loginRoute,
    // The stale token's refusal: the first at once, the second only after the first call's login.
    ping: (d, h, n) =>
      bearer(h) === 'Bearer stale'
        ? { statusCode: 401, data: { code: 'UNAUTHENTICATED', message: 'expired' }, delayMs: n === 0 ? 0 : 100 }
        : { statusCode: 200, data: { auth: bearer(h) } },
  });
  wx.storage.set('wxshop.session', { token: 'stale', expires_at: future() });
  const c = createClient({ baseUrl: 'http://x', wx });
  const [a, b] = await Promise.all([c.callFunction({ name: 'ping' }), c.callFunction({ name: 'ping' })]);
  assert.equal(a.result.auth, 'Bearer tok-code-1');
  assert.equal(b.result.auth, 'Bearer tok-code-1');
  assert.equal(wx.loginCount, 1, 'the late 401 neither cleared the fresh session nor logged in again');
  assert.equal(wx.storage.get('wxshop.session').token, 'tok-code-1');
});

test('a 2xx that is not a JSON object (a Wi-Fi login page) rejects BAD_RESPONSE instead of reading as empty', async () => {
  const portal = () => ({ statusCode: 200, data: '<html>Please log in to the hotel Wi-Fi</html>' });
  const wx = fakeWx({ login: loginRoute, queryOrder: portal, aftersaleSync: portal });
  const c = createClient({ baseUrl: 'http://x', wx });
  await assert.rejects(c.orders.list(), (e) => e.code === 'BAD_RESPONSE' && e.statusCode === 200 && /hotel Wi-Fi/.test(e.message));
  await assert.rejects(c.aftersale.list('T1'), (e) => e.code === 'BAD_RESPONSE');
  await assert.rejects(c.callFunction({ name: 'queryOrder', data: { out_trade_no: 'T1' } }), (e) => e.code === 'BAD_RESPONSE');
});

// ---- the phone's clock against the server's ------------------------------------------------

/**
 * Runs `f` with the phone's clock (Date.now, which the client reads) `offsetMs` away from the
 * real one, which stands for the server's; restores it whatever happens.
 */
async function withPhoneClock(offsetMs, f) {
  const real = Date.now;
  Date.now = () => real() + offsetMs;
  try {
    return await f(real);
  } finally {
    Date.now = real;
  }
}

/** login as the server answers it: its own clock, a token for `ttl` seconds. */
const serverLogin = (serverNow, ttl) => (data) => {
  const now = Math.floor(serverNow() / 1000);
  return { statusCode: 200, data: { token: 'tok-' + data.code, expires_at: now + ttl, issued_at: now, openid: 'o-alice' } };
};

test('a phone clock hours ahead of the server\'s does not log in before every call', async () => {
  await withPhoneClock(3 * 3600 * 1000, async (serverNow) => {
    const wx = fakeWx({ login: serverLogin(serverNow, 3600), ping: (d, h) => ({ statusCode: 200, data: { auth: bearer(h) } }) });
    const c = createClient({ baseUrl: 'http://x', wx });
    for (let i = 0; i < 3; i++) await c.callFunction({ name: 'ping' });
    assert.deepEqual(wx.calls.map((x) => x.name), ['login', 'ping', 'ping', 'ping'], 'one login for three calls');
    assert.equal(wx.loginCount, 1);
    const s = c.session();
    assert.ok(Math.abs(s.clock_offset_ms - 3 * 3600 * 1000) < 1000, `clock_offset_ms ${s.clock_offset_ms}`);
    // A new client on the same storage (the mini program restarted) keeps the session too.
    await createClient({ baseUrl: 'http://x', wx }).callFunction({ name: 'ping' });
    assert.equal(wx.loginCount, 1);
  });
});

test('a phone clock behind the server\'s does not send a token the server has expired: it logs in first', async () => {
  let serverShift = 0; // how far the server's time has moved on
  await withPhoneClock(-3 * 3600 * 1000, async (real) => {
    const serverNow = () => real() + serverShift;
    const wx = fakeWx({
      login: serverLogin(serverNow, 60),
      ping: (d, h) =>
        bearer(h) === 'Bearer tok-code-1' && serverShift > 0
          ? { statusCode: 401, data: { code: 'UNAUTHENTICATED', message: 'session expired' } }
          : { statusCode: 200, data: { auth: bearer(h) } },
    });
    const c = createClient({ baseUrl: 'http://x', wx });
    await c.callFunction({ name: 'ping' });
    // Both clocks move on 120 s: the 60 s token has expired by the server's clock, though by
    // the phone's, three hours behind, it would have hours to go.
    serverShift = 120 * 1000;
    const phone = Date.now;
    Date.now = () => phone() + serverShift;
    const r = await c.callFunction({ name: 'ping' });
    assert.equal(r.result.auth, 'Bearer tok-code-2');
    assert.deepEqual(wx.calls.map((x) => `${x.name}`), ['login', 'ping', 'login', 'ping'], 'no call with the dead token');
  });
});

test('a session without a clock offset (an older client or server) is judged by the phone\'s clock, as before', async () => {
  const wx = fakeWx({ login: loginRoute, ping: (d, h) => ({ statusCode: 200, data: { auth: bearer(h) } }) });
  wx.storage.set('wxshop.session', { token: 'kept', expires_at: Math.floor(Date.now() / 1000) + 600 });
  const c = createClient({ baseUrl: 'http://x', wx });
  assert.equal((await c.callFunction({ name: 'ping' })).result.auth, 'Bearer kept');
  wx.storage.set('wxshop.session', { token: 'old', expires_at: Math.floor(Date.now() / 1000) + 10 });
  assert.equal((await c.callFunction({ name: 'ping' })).result.auth, 'Bearer tok-code-1', 'within the 30 s margin: renewed');
  assert.equal(c.session().clock_offset_ms, undefined, 'loginRoute answers no issued_at');
});

// ---- a passed-back key refused after the enter scene changed -----------------------------

/**
 * A server for buy's key handling: unifiedOrder keeps each key's order and the scene it was
 * sent from, and answers another scene under a key 422 IDEMPOTENCY_KEY_REUSED naming the
 * order (`named: false`: as an older server, naming none; `busy: n`: the first n such calls
 * 409 REQUEST_IN_PROGRESS, as while the key's first request still runs); queryOrder closes (`close`:
 * a route overriding the close) and reads orders. `orders`: out_trade_no → status.
 */
function sceneServer(opts) {
  opts = opts || {};
  const orders = new Map();
  const byKey = new Map(); // key → { no, scene }
  let scene = 1001;
  const wx = fakeWx(
    {
      login: loginRoute,
      unifiedOrder: (d) => {
        const held = byKey.get(d.idempotency_key);
        if (held && held.scene !== d.scene && opts.busy > 0) {
          // The key's first request still running: the server names no order yet.
          opts.busy -= 1;
          return { statusCode: 409, data: { code: 'REQUEST_IN_PROGRESS', message: 'this idempotency key\'s first request is still being processed; retry in a moment' } };
        }
        if (held && held.scene !== d.scene) {
          const data = { code: 'IDEMPOTENCY_KEY_REUSED', message: `this idempotency key was used for a different cart, address or enter scene, and holds order ${held.no}` };
          if (opts.named !== false) data.out_trade_no = held.no;
          return { statusCode: 422, data };
        }
        if (!held) {
          const no = 'T' + (byKey.size + 1);
          byKey.set(d.idempotency_key, { no, scene: d.scene });
          orders.set(no, 'PREPAID');
        }
        const no = byKey.get(d.idempotency_key).no;
        return { statusCode: 200, data: payFixture({ out_trade_no: no, status: orders.get(no), payment: Object.assign({}, payFixture().payment, { package: 'prepay_id=' + no }) }) };
      },
      queryOrder: (d, h, n) => {
        if (d.action === 'close') {
          if (opts.close) {
            const out = opts.close(d, n);
            if (out) return out;
          }
          if (['PAID', 'SHIPPED'].includes(orders.get(d.out_trade_no))) return { statusCode: 409, data: { code: 'ORDER_PAID', message: 'the order is paid' } };
          orders.set(d.out_trade_no, 'CLOSED');
        }
        return { statusCode: 200, data: { order: { out_trade_no: d.out_trade_no, status: orders.get(d.out_trade_no), total_fee: 1990, freight: 0 } } };
      },
    },
    {
      getEnterOptionsSync: () => ({ scene }),
      requestPayment: (p) => {
        const no = p.package.replace(/^prepay_id=/, '');
        if (opts.cashier === 'cancel') return setImmediate(() => p.fail({ errMsg: 'requestPayment:fail cancel' }));
        orders.set(no, 'PAID');
        setImmediate(() => p.success({ errMsg: 'requestPayment:ok' }));
      },
    }
  );
  return {
    wx,
    orders,
    setScene: (s) => {
      scene = s;
    },
    names: () => wx.calls.filter((x) => x.name !== 'login').map((x) => (x.data.action ? `${x.name}:${x.data.action}` : x.name)),
  };
}

const FAST_POLL = { intervalMs: 5, timeoutMs: 200, failTimeoutMs: 20 };

test('buy: a passed-back key whose first request still runs is sent again until the refusal names its order, then closed', async () => {
  // The server answers 409 REQUEST_IN_PROGRESS (no order named) while the key's first request
  // may not have written its order: closing a number before its order exists would leave that
  // order open. buy retries as for any in-progress key, and closes once the 422 names it.
  const srv = sceneServer({ cashier: 'cancel', busy: 2 });
  const c = createClient({ baseUrl: 'http://x', wx: srv.wx, orderRetry: FAST_RETRY, payPoll: FAST_POLL });
  const first = await c.buy({ items: [TEA] });
  srv.setScene(1089);
  const before = srv.wx.calls.length;
  const second = await c.buy({ items: [TEA], idempotencyKey: first.idempotencyKey });
  const sent = srv.wx.calls.slice(before).filter((x) => x.name !== 'login');
  const names = sent.map((x) => (x.data.action ? `${x.name}:${x.data.action}` : x.name));
  assert.deepEqual(names.slice(0, 5), ['unifiedOrder', 'unifiedOrder', 'unifiedOrder', 'queryOrder:close', 'unifiedOrder']);
  assert.ok(sent.slice(0, 3).every((x) => x.data.idempotency_key === first.idempotencyKey), 'the same key while busy');
  assert.equal(sent[3].data.out_trade_no, first.out_trade_no);
  assert.equal(srv.orders.get(first.out_trade_no), 'CLOSED');
  assert.deepEqual(second.previousOrder, { out_trade_no: first.out_trade_no, outcome: 'closed' });
});

test('buy: a passed-back key refused after the user came back through another scene closes its order and buys afresh', async () => {
  const srv = sceneServer({ cashier: 'cancel' });
  const c = createClient({ baseUrl: 'http://x', wx: srv.wx, orderRetry: FAST_RETRY, payPoll: FAST_POLL });
  const first = await c.buy({ items: [TEA] });
  assert.equal(first.paid, false);
  assert.ok(first.idempotencyKey);
  srv.setScene(1089); // back from a share card
  const before = srv.wx.calls.length;
  const second = await c.buy({ items: [TEA], idempotencyKey: first.idempotencyKey });
  const sent = srv.wx.calls.slice(before).filter((x) => x.name !== 'login');
  assert.deepEqual(
    sent.map((x) => (x.data.action ? `${x.name}:${x.data.action}` : x.name)).filter((n, i, a) => n !== 'queryOrder' || a[i - 1] !== 'queryOrder'),
    ['unifiedOrder', 'queryOrder:close', 'unifiedOrder', 'queryOrder'],
    'refused, the first order closed, a new one made, then asked about'
  );
  assert.equal(sent[1].data.out_trade_no, first.out_trade_no, 'the order the refusal named is the one closed');
  assert.equal(srv.orders.get(first.out_trade_no), 'CLOSED', 'the first order no longer holds its stock');
  const keys = sent.filter((x) => x.name === 'unifiedOrder').map((x) => x.data.idempotency_key);
  assert.equal(keys[0], first.idempotencyKey);
  assert.notEqual(keys[1], first.idempotencyKey, 'the new order under a new key');
  assert.equal(sent[2].data.scene, 1089);
  assert.equal(second.out_trade_no, 'T2');
  assert.deepEqual(second.previousOrder, { out_trade_no: first.out_trade_no, outcome: 'closed' });
  assert.equal(second.idempotencyKey, keys[1], 'still unpaid (cancelled again): the new order\'s key to pay it');
  // The user pays it on the next tap: the new key pays the new order, no third one.
  srv.wx.requestPayment = (p) => {
    srv.orders.set(p.package.replace(/^prepay_id=/, ''), 'PAID');
    setImmediate(() => p.success({ errMsg: 'requestPayment:ok' }));
  };
  const third = await c.buy({ items: [TEA], idempotencyKey: second.idempotencyKey });
  assert.equal(third.paid, true);
  assert.equal(third.out_trade_no, 'T2');
  assert.deepEqual([...srv.orders.entries()], [['T1', 'CLOSED'], ['T2', 'PAID']]);
});

test('buy: when the order a refused key holds turns out paid, nothing new is made and the result is that order, paid', async () => {
  const srv = sceneServer({ cashier: 'cancel' });
  const c = createClient({ baseUrl: 'http://x', wx: srv.wx, orderRetry: FAST_RETRY, payPoll: FAST_POLL });
  const first = await c.buy({ items: [TEA] });
  srv.orders.set(first.out_trade_no, 'PAID'); // paid after all (the notification was late)
  srv.setScene(1089);
  let cashiers = 0;
  srv.wx.requestPayment = () => {
    cashiers += 1;
  };
  const before = srv.wx.calls.length;
  const r = await c.buy({ items: [TEA], idempotencyKey: first.idempotencyKey });
  assert.equal(r.paid, true);
  assert.equal(r.cashier, 'none');
  assert.equal(r.out_trade_no, first.out_trade_no);
  assert.deepEqual(r.previousOrder, { out_trade_no: first.out_trade_no, outcome: 'paid' });
  assert.equal(r.idempotencyKey, undefined);
  assert.equal(cashiers, 0, 'no cashier: it is paid');
  const unified = srv.wx.calls.slice(before).filter((x) => x.name === 'unifiedOrder');
  assert.equal(unified.length, 1, 'no second order');
  assert.equal(srv.orders.size, 1);
});

test('buy: when the order a refused key holds cannot be closed, buy rejects with the key passed in, and the next try closes it', async () => {
  let down = true;
  const srv = sceneServer({ cashier: 'cancel', close: () => (down ? { fail: 'request:fail timeout' } : null) });
  const c = createClient({ baseUrl: 'http://x', wx: srv.wx, orderRetry: FAST_RETRY, payPoll: FAST_POLL });
  const first = await c.buy({ items: [TEA] });
  srv.setScene(1089);
  const err = await c.buy({ items: [TEA], idempotencyKey: first.idempotencyKey }).then(
    (x) => assert.fail(`bought: ${JSON.stringify(x)}`),
    (e) => e
  );
  assert.equal(err.code, 'NETWORK_ERROR');
  assert.equal(err.idempotencyKey, first.idempotencyKey);
  assert.deepEqual(err.previousOrder, { out_trade_no: first.out_trade_no, outcome: 'open' });
  assert.equal(srv.wx.calls.filter((x) => x.data && x.data.action === 'close').length, FAST_RETRY.attempts, 'the close was retried within orderRetry');
  assert.equal(srv.orders.size, 1, 'nothing new made while the first is open');
  down = false;
  const again = await c.buy({ items: [TEA], idempotencyKey: err.idempotencyKey });
  assert.deepEqual(again.previousOrder, { out_trade_no: first.out_trade_no, outcome: 'closed' });
  assert.equal(srv.orders.get(first.out_trade_no), 'CLOSED');
  assert.equal(again.out_trade_no, 'T2');
});

test('buy: a refusal that names no order (an older server), or a key buy made itself, is not acted on', async () => {
  const old = sceneServer({ cashier: 'cancel', named: false });
  const c = createClient({ baseUrl: 'http://x', wx: old.wx, orderRetry: FAST_RETRY, payPoll: FAST_POLL });
  const first = await c.buy({ items: [TEA] });
  old.setScene(1089);
  const err = await c.buy({ items: [TEA], idempotencyKey: first.idempotencyKey }).catch((e) => e);
  assert.equal(err.code, 'IDEMPOTENCY_KEY_REUSED');
  assert.equal(err.idempotencyKey, undefined, 'spent: the next tap buys with a new key');
  assert.ok(!old.names().includes('queryOrder:close'), 'no order closed');

  // A fresh key cannot meet the refusal; should a server answer it anyway, buy closes nothing.
  const wx = fakeWx(
    paidRoutes(() => ({ statusCode: 422, data: { code: 'IDEMPOTENCY_KEY_REUSED', message: 'x', out_trade_no: 'T9' } })),
    payOk
  );
  const fresh = await createClient({ baseUrl: 'http://x', wx, orderRetry: FAST_RETRY }).buy({ items: [TEA] }).catch((e) => e);
  assert.equal(fresh.code, 'IDEMPOTENCY_KEY_REUSED');
  assert.equal(fresh.out_trade_no, 'T9', 'the error shape keeps the order the refusal names');
  assert.ok(!wx.calls.some((x) => x.name === 'queryOrder'));
});

const TEA_PRODUCT = {
  product_id: 'tea',
  title: 'Longjing green tea 250 g',
  head_img: ['https://img/tea.jpg'],
  skus: [{ sku_id: 'tea-250g', price: 1990, market_price: 2590, stock: 1000, attrs: [] }],
};

test('products: pages through catalogSync products, and refuses a bad limit or cursor before sending', async () => {
  const wx = fakeWx({
    login: loginRoute,
    catalogSync: (d) =>
      d.cursor
        ? { statusCode: 200, data: { products: [TEA_PRODUCT], next: null } }
        : { statusCode: 200, data: { products: [], next: 'p2' } },
  });
  const c = createClient({ baseUrl: 'http://x', wx });
  const first = await c.products();
  assert.deepEqual(first, { products: [], next: 'p2' }, 'a page may be empty and still have a next one');
  const second = await c.products({ limit: 5, cursor: first.next });
  assert.deepEqual(second, { products: [TEA_PRODUCT], next: null });
  assert.deepEqual(
    wx.calls.filter((x) => x.name === 'catalogSync').map((x) => x.data),
    [{ action: 'products' }, { action: 'products', limit: 5, cursor: 'p2' }]
  );
  assert.equal(wx.calls.filter((x) => x.name === 'catalogSync')[0].header.Authorization, 'Bearer tok-code-1', 'a session is sent');
  const before = wx.calls.length;
  for (const bad of [{ limit: 0 }, { limit: 101 }, { limit: 2.5 }, { limit: '10' }, { cursor: '' }, { cursor: 7 }]) {
    await assert.rejects(c.products(bad), (e) => e.code === 'INVALID_ARGUMENT' && e.statusCode === 0, JSON.stringify(bad));
  }
  assert.equal(wx.calls.length, before, 'nothing was sent for invalid arguments');
});

test('product: reads one product through catalogSync get; an unknown one rejects NO_SUCH_PRODUCT', async () => {
  const wx = fakeWx({
    login: loginRoute,
    catalogSync: (d) =>
      d.product_id === 'tea'
        ? { statusCode: 200, data: { product: TEA_PRODUCT } }
        : d.product_id === 'empty'
          ? { statusCode: 200, data: {} }
          : { statusCode: 404, data: { code: 'NO_SUCH_PRODUCT', message: `no product ${d.product_id} for sale` } },
  });
  const c = createClient({ baseUrl: 'http://x', wx });
  assert.deepEqual(await c.product('tea'), TEA_PRODUCT);
  assert.deepEqual(wx.calls.find((x) => x.name === 'catalogSync').data, { action: 'get', product_id: 'tea' });
  await assert.rejects(c.product('gone'), { code: 'NO_SUCH_PRODUCT', message: 'no product gone for sale', statusCode: 404 });
  await assert.rejects(c.product('empty'), { code: 'BAD_RESPONSE', statusCode: 200 });
  const before = wx.calls.length;
  await assert.rejects(c.product(''), (e) => e.code === 'INVALID_ARGUMENT');
  await assert.rejects(c.product(), (e) => e.code === 'INVALID_ARGUMENT');
  assert.equal(wx.calls.length, before);
});

test('formatFen shows fen as yuan by digits, and refuses what is not whole fen', () => {
  assert.equal(formatFen(1999), '19.99');
  assert.equal(formatFen(1990), '19.90');
  assert.equal(formatFen(5), '0.05');
  assert.equal(formatFen(50), '0.50');
  assert.equal(formatFen(0), '0.00');
  assert.equal(formatFen(100), '1.00');
  // Exact where a float would not be: 2^53 - 1 fen.
  assert.equal(formatFen(Number.MAX_SAFE_INTEGER), '90071992547409.91');
  assert.equal(formatFen(2147483647), '21474836.47');
  for (const bad of [-1, 19.9, 0.5, '1999', null, undefined, NaN, Infinity, Number.MAX_SAFE_INTEGER + 1, 10n]) {
    assert.throws(() => formatFen(bad), TypeError, String(bad));
  }
});
