// The example's pages when WeChat's cashier reports success but the server has not seen the
// payment yet (WeChat Pay's notification is late and its order query does not show it): the
// user has paid, so the page must not tell them the payment "did not go through", nor offer to
// pay again, which invites a second purchase. First with a stubbed server, then against
// `wxlocal serve` (test/support/wxlocal.js) with the sandbox holding the notification back and
// WeChat Pay's `pay/orderquery` failing. Then the pages around it: Pay on the product page for
// an order that closed meanwhile (ORDER_CLOSED), and the order page right after a Pay whose
// cashier said paid (no Pay or Close until a pull-down reads the order again). Then a purchase
// neither lost nor made twice: the key of an order buy made to replace one, whose answer was
// lost; a key handed back on a network failure, over a reload; the same cart bought for another
// address (the old order closed first), stubbed and against wxlocal. Then the closed order's
// page after a failed replacement (it points to the new order), the new order's page, and a
// changed quantity or SKU of the same product (the old unpaid order closed first). Then an
// unanswered key matched by the server's answer, not by items; older unanswered keys of a
// product closed before a changed cart; Pay the new order answered ORDER_CLOSED; my orders'
// "Replaced by order …".
//
// The pages run as in example.test.js: each page's .js loaded with a fake `App`, `Page`,
// `getApp` and `wx`, requires resolved inside example/, handlers called as taps would.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const support = require('./support/wxlocal.js');

const ROOT = path.join(__dirname, '..', 'example');
const clone = (v) => JSON.parse(JSON.stringify(v));

// ---- the runtime (as in example.test.js, reduced to what these tests use) --------------------

function pageInstance(def) {
  const page = { data: clone(def.data || {}) };
  for (const [k, v] of Object.entries(def)) {
    if (k !== 'data') page[k] = typeof v === 'function' ? v : v === undefined ? v : clone(v);
  }
  page.setData = function (patch) {
    for (const [k, v] of Object.entries(patch)) if (v !== undefined) this.data[k] = clone(v);
  };
  return page;
}

/** The example with `wx` as its global; its app's client made with `clientOptions`. */
function miniProgram(wx, clientOptions) {
  const modules = new Map();
  const defs = new Map();
  let app = null;
  let loading = null;
  function load(file) {
    if (modules.has(file)) return modules.get(file).exports;
    const module = { exports: {} };
    modules.set(file, module);
    const fn = vm.runInThisContext(`(function (require, module, exports, wx, App, Page, getApp) {${fs.readFileSync(file, 'utf8')}\n})`, { filename: file });
    const req = (p) => {
      const target = path.resolve(path.dirname(file), p);
      return load(target.endsWith('.js') ? target : target + '.js');
    };
    fn(req, module, module.exports, wx, (def) => (app = def), (def) => defs.set(loading, def), () => app);
    return module.exports;
  }
  const { createClient } = load(path.join(ROOT, 'utils', 'wxshop.js'));
  load(path.join(ROOT, 'app.js'));
  app.shop = createClient(Object.assign({}, load(path.join(ROOT, 'utils', 'config.js')), clientOptions, { wx }));
  return {
    page(route) {
      if (!defs.has(route)) {
        loading = route;
        load(path.join(ROOT, route + '.js'));
        loading = null;
      }
      return pageInstance(defs.get(route));
    },
  };
}

/** What the user sees and picks beyond the pages, added onto `wx`. */
function withUser(wx) {
  const user = { toasts: [], addresses: [] };
  Object.assign(wx, {
    showToast: (o) => user.toasts.push(o.title),
    showLoading: () => {},
    hideLoading: () => {},
    showModal: (o) => setImmediate(() => o.success({ confirm: true, content: '' })),
    chooseAddress: (o) => {
      const a = user.addresses.shift();
      setImmediate(() => (a ? o.success(Object.assign({ errMsg: 'chooseAddress:ok' }, a)) : o.fail({ errMsg: 'chooseAddress:fail cancel' })));
    },
    navigateTo: () => {},
    redirectTo: () => {},
    stopPullDownRefresh: () => {},
  });
  return user;
}

const WX_ADDRESS = { userName: 'Alice', telNumber: '13800000000', provinceName: '浙江省', cityName: '杭州市', countyName: '西湖区', detailInfo: '1 Tea Street' };
const FAST = { payPoll: { intervalMs: 5, timeoutMs: 100, failTimeoutMs: 20 }, orderRetry: { attempts: 1, delayMs: 1, maxDelayMs: 1, budgetMs: 100 } };

// ---- a stubbed server whose payments are not confirmed yet -------------------------------------

/**
 * A shop whose cashier always succeeds, while the server keeps answering the order PREPAID
 * until `confirm()`: WeChat Pay's notification has not come and its order query shows nothing.
 */
function unconfirmedShop() {
  const orders = new Map(); // idempotency key → order
  const byNo = new Map();
  const calls = [];
  const cashierOpened = [];
  const storage = new Map();
  const cashierWill = []; // what the user does in the next cashiers ('cancel'); then they pay
  const refused = new Set();
  const naming = new Set(); // keys refused 422 IDEMPOTENCY_KEY_REUSED naming their order
  let lose = () => false; // (name, data) → true: the call is served, its answer lost (a timeout)
  let closeAnswer = null; // (out_trade_no) → an answer instead of the close, or null
  const answer = {
    login: () => ({ statusCode: 200, data: { token: 'tok', expires_at: Math.floor(Date.now() / 1000) + 3600, openid: 'o-alice', fund_type: 0, trading_component: 'always' } }),
    catalogSync: () => ({ statusCode: 200, data: { product: { product_id: 'tea', title: 'Tea', head_img: [], skus: [{ sku_id: 'tea-250g', price: 1990, stock: 10, attrs: [] }, { sku_id: 'tea-500g', price: 3590, stock: 10, attrs: [] }] } } }),
    unifiedOrder: (d) => {
      let o = orders.get(d.idempotency_key);
      // As the server: a key whose order closed unpaid is refused (ORDER_CLOSED); `refused`
      // keys get 422 IDEMPOTENCY_KEY_REUSED naming no order (a server older than the client).
      if (o && o.status === 'CLOSED') return { statusCode: 409, data: { code: 'ORDER_CLOSED', message: 'the order this idempotency key made was closed unpaid; order again with a new key' } };
      if (refused.has(d.idempotency_key)) return { statusCode: 422, data: { code: 'IDEMPOTENCY_KEY_REUSED', message: 'this idempotency key was used for a different cart, address or enter scene' } };
      // As the server: the key stands for its first request (cart, address; the scene is the
      // same here); another under it, or one refused so (`naming`: the user came back through
      // another entry), is 422 naming the order the key holds.
      const request = JSON.stringify({ items: d.items, address: d.address || null });
      if (o && (naming.has(d.idempotency_key) || o.request !== request)) {
        return { statusCode: 422, data: { code: 'IDEMPOTENCY_KEY_REUSED', message: 'this idempotency key was used for a different cart, address or enter scene', out_trade_no: o.out_trade_no } };
      }
      if (!o) {
        o = { out_trade_no: 'T' + (orders.size + 1), status: 'PREPAID', total_fee: 1990, freight: 0, refunded_fee: 0, items: d.items.map((i) => Object.assign({ title: 'Tea', unit_price: 1990 }, i)), created_at: 0 };
        Object.defineProperty(o, 'request', { value: request }); // not part of the answer
        orders.set(d.idempotency_key, o);
        byNo.set(o.out_trade_no, o);
      }
      return { statusCode: 200, data: { out_trade_no: o.out_trade_no, total_fee: o.total_fee, freight: 0, status: o.status, fund_type: 0, payment: { timeStamp: '1', nonceStr: 'n', package: 'prepay_id=' + o.out_trade_no, signType: 'MD5', paySign: 'S' } } };
    },
    queryOrder: (d) => {
      // My orders: every order, newest first, on one page.
      if (d.out_trade_no === undefined && !d.action) return { statusCode: 200, data: { orders: [...byNo.values()].reverse(), next: null } };
      const o = byNo.get(d.out_trade_no);
      const instead = d.action === 'close' && closeAnswer && closeAnswer(d.out_trade_no);
      if (instead) return instead;
      if (d.action === 'close' && o && o.status === 'PAID') return { statusCode: 409, data: { code: 'ORDER_PAID', message: 'the order is paid: apply for a refund instead' } };
      if (d.action === 'close' && o && o.status === 'PREPAID') o.status = 'CLOSED';
      return { statusCode: 200, data: { order: o } };
    },
    aftersaleSync: () => ({ statusCode: 200, data: { aftersales: [] } }),
  };
  const wx = {
    getStorageSync: (k) => (storage.has(k) ? storage.get(k) : ''),
    setStorageSync: (k, v) => storage.set(k, v),
    removeStorageSync: (k) => storage.delete(k),
    getEnterOptionsSync: () => ({ scene: 1001 }),
    login: ({ success }) => setImmediate(() => success({ code: 'c', errMsg: 'login:ok' })),
    request: (o) => {
      const name = o.url.replace(/^.*\/fn\//, '');
      calls.push({ name, data: clone(o.data) });
      const out = answer[name](o.data);
      if (lose(name, o.data)) return setImmediate(() => o.fail({ errMsg: 'request:fail timeout' }));
      setImmediate(() => o.success({ statusCode: out.statusCode, data: clone(out.data), header: {} }));
    },
    requestPayment: (p) => {
      cashierOpened.push(p.package);
      if (cashierWill.shift() === 'cancel') return setImmediate(() => p.fail({ errMsg: 'requestPayment:fail cancel' }));
      setImmediate(() => p.success({ errMsg: 'requestPayment:ok' }));
    },
  };
  return {
    wx,
    byNo,
    cashierOpened,
    sent: (name) => calls.filter((c) => c.name === name),
    confirm: (no) => (byNo.get(no).status = 'PAID'),
    cashierWill,
    close: (no) => (byNo.get(no).status = 'CLOSED'),
    refuse: (key) => refused.add(key),
    refuseNaming: (key) => naming.add(key),
    loseAnswers: (pred) => (lose = pred),
    closeAnswers: (fn) => (closeAnswer = fn),
    keyOf: (no) => [...orders.entries()].find((e) => e[1].out_trade_no === no)[0],
    place: (key, items, address) => answer.unifiedOrder({ idempotency_key: key, items, address }),
  };
}

test('product: the cashier said paid but the server has not seen it yet: not "did not go through", and no Pay offered', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  const product = miniProgram(shop.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  await product.onBuyTap();

  assert.equal(shop.cashierOpened.length, 1);
  assert.doesNotMatch(product.data.message, /did not go through|cancel/i, product.data.message);
  assert.match(product.data.message, /confirm/i, 'the user is told the payment is being confirmed');
  assert.notEqual(product.data.outcome, 'unpaid', 'no Pay button: the user paid already');
  assert.equal(product.data.orderNo, 'T1', 'the order can be opened to check it');

  // A tap where the button was opens no second cashier for this order, and makes no new one.
  await product.onBuyTap();
  assert.equal(shop.sent('unifiedOrder').length, 1);
  assert.equal(shop.cashierOpened.length, 1);

  // The order page reads it paid once the server has seen the payment.
  shop.confirm('T1');
  const mp = miniProgram(shop.wx, FAST);
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  assert.equal(detail.data.order.statusText, 'Paid, to be shipped');
});

test('order page: Pay whose cashier said paid, not yet seen by the server: not "did not go through"', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  const mp = miniProgram(shop.wx, FAST);
  // An unpaid purchase this phone kept (the product page's cashier was cancelled).
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  const key = 'k-unpaid-1';
  shop.place(key, items); // order T1, under that key
  shop.wx.setStorageSync('example.unpaid', { T1: { key, items, address: null } });

  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  assert.equal(detail.data.canPay, true);
  await detail.onPayTap();
  assert.equal(shop.cashierOpened.length, 1);
  assert.deepEqual(shop.sent('unifiedOrder').map((c) => c.data.idempotency_key), [key], 'the same order');
  assert.equal(user.toasts.length, 1, user.toasts.join(' | '));
  assert.doesNotMatch(user.toasts[0], /did not go through|cancel/i, user.toasts[0]);
  assert.match(user.toasts[0], /confirm/i);
});

// ---- against wxlocal --------------------------------------------------------------------------

let server = null;
let startError = null;

test.before(
  async () => {
    try {
      server = await support.startWxlocal();
    } catch (e) {
      startError = e;
    }
  },
  { timeout: support.BUILD_TIMEOUT_MS + support.START_TIMEOUT_MS }
);

test.after(() => support.stopWxlocal(server), { timeout: 5000 });

const control = (what, body) => support.postJson(`${server.baseUrl}/sandbox/_control/${what}`, body);

test('against wxlocal: paid in the cashier while WeChat Pay is slow to say so: the page waits for the confirmation, then reads paid', { timeout: 20000 }, async () => {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
  // WeChat Pay's order query fails, and the payment notification is held back (up to 2 s):
  // for a while the server cannot know the order was paid.
  const fault = await control('faults', { path: 'pay/orderquery', mode: 'http500' });
  assert.equal(fault.status, 200, JSON.stringify(fault.body));
  const held = await control('notifications', { reorder: true });
  assert.equal(held.status, 200, JSON.stringify(held.body));

  const wx = support.sandboxWx(server.baseUrl, { signing: server.signing, user: 'hunt-' + Date.now(), cashier: 'pay' });
  const user = withUser(wx);
  user.addresses.push(WX_ADDRESS);
  const mp = miniProgram(wx, { baseUrl: server.baseUrl, payPoll: { intervalMs: 100, timeoutMs: 500, failTimeoutMs: 200 } });
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  await product.onBuyTap();
  const no = product.data.orderNo;
  assert.ok(no, product.data.message);
  assert.doesNotMatch(product.data.message, /did not go through/i, product.data.message);
  assert.notEqual(product.data.outcome, 'unpaid', `Pay offered for an order paid in the cashier: ${product.data.message}`);

  // WeChat Pay answers again and the notification goes out: the order page reads it paid.
  await fetch(`${server.baseUrl}/sandbox/_control/faults`, { method: 'DELETE', signal: AbortSignal.timeout(5000) });
  await control('notifications', { reorder: false });
  const detail = mp.page('pages/order/detail');
  for (let i = 0; i < 50; i++) {
    await detail.onLoad({ out_trade_no: no });
    if (detail.data.order && detail.data.order.paid) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(detail.data.order.statusText, 'Paid, to be shipped');
  assert.deepEqual(user.toasts, []);
});

// ---- after a cancelled cashier, the order closes before Pay; after a Pay not confirmed yet ------

test('product: Pay on an order that closed unpaid meanwhile (ORDER_CLOSED) says so and offers Buy; the next tap is a new purchase', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  const product = miniProgram(shop.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', 'Pay offered after the cancel');
  const key = shop.keyOf('T1');

  shop.close('T1'); // it expired unpaid (ORDER_TTL_SECS) while the user was away
  await product.onBuyTap();
  assert.deepEqual(shop.sent('unifiedOrder').map((c) => c.data.idempotency_key), [key, key], 'Pay sent that order\'s key');
  assert.equal(shop.cashierOpened.length, 1, 'no cashier for a closed order');
  assert.notEqual(product.data.outcome, 'unpaid', 'the button still says Pay, though the next tap is a new purchase');
  assert.equal(product.data.outcome, 'closed');
  assert.match(product.data.message, /closed unpaid/i, product.data.message);
  assert.match(product.data.message, /tap Buy/i, product.data.message);
  assert.equal(product.data.orderNo, 'T1', 'the closed order can still be opened');
  assert.ok(!('T1' in (shop.wx.getStorageSync('example.unpaid') || {})), 'the closed order is not kept to be paid');

  // The next tap (Buy) is a new purchase: a new key, a new order, its cashier.
  await product.onBuyTap();
  const keys = shop.sent('unifiedOrder').map((c) => c.data.idempotency_key);
  assert.equal(keys.length, 3);
  assert.notEqual(keys[2], key, 'a new key');
  assert.equal(product.data.orderNo, 'T2');
  assert.equal(shop.cashierOpened.length, 2);
});

test('product: Pay whose key the server refuses without naming its order (an older server): the button says Buy, not Pay', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  const product = miniProgram(shop.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid');
  shop.refuse(shop.keyOf('T1'));
  await product.onBuyTap();
  assert.equal(user.toasts.length, 1, user.toasts.join(' | '));
  assert.match(user.toasts[0], /^IDEMPOTENCY_KEY_REUSED: /);
  assert.notEqual(product.data.outcome, 'unpaid', 'Pay offered though buy handed back no key: the next tap is a new purchase');
  await product.onBuyTap();
  const keys = shop.sent('unifiedOrder').map((c) => c.data.idempotency_key);
  assert.equal(keys.length, 3);
  assert.notEqual(keys[2], keys[0], 'the next tap is a new purchase');
});

test('order page: after a Pay whose cashier said paid, not yet seen by the server: no Pay or Close, "confirming", until a pull-down reads the order again', async () => {
  const shop = unconfirmedShop();
  withUser(shop.wx);
  const mp = miniProgram(shop.wx, FAST);
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  const key = 'k-unpaid-2';
  shop.place(key, items); // order T1, PREPAID, under that key
  shop.wx.setStorageSync('example.unpaid', { T1: { key, items, address: null } });

  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  assert.equal(detail.data.canPay, true);
  await detail.onPayTap();
  assert.equal(shop.cashierOpened.length, 1);
  assert.equal(detail.data.order.unpaid, true, 'the server still reads it PREPAID');
  assert.equal(detail.data.canPay, false, 'Pay offered again for an order the cashier said was paid');
  assert.equal(detail.data.confirming, true);

  // Taps where the buttons were do nothing: no second cashier, no close of a paid order.
  await detail.onPayTap();
  await detail.onCloseTap();
  assert.equal(shop.cashierOpened.length, 1);
  assert.equal(shop.sent('unifiedOrder').length, 1);
  assert.deepEqual(shop.sent('queryOrder').filter((c) => c.data.action === 'close'), []);

  // The view shows the confirming line instead of the Pay / Close card.
  const wxml = fs.readFileSync(path.join(ROOT, 'pages', 'order', 'detail.wxml'), 'utf8');
  const line = wxml.split('\n').find((l) => l.includes('confirming}}'));
  assert.ok(line && /wx:if="\{\{order\.unpaid && confirming\}\}"/.test(line) && /confirming…/.test(line), line);
  assert.match(wxml, /wx:elif="\{\{order\.unpaid\}\}"/, 'the Pay / Close card only when not confirming');

  // A pull-down reads the order again: still unpaid a while later, so Pay is offered again.
  await detail.onPullDownRefresh();
  assert.equal(detail.data.confirming, false);
  assert.equal(detail.data.canPay, true);
  // Once the server has seen the payment, it reads paid.
  shop.confirm('T1');
  await detail.onPullDownRefresh();
  assert.equal(detail.data.order.statusText, 'Paid, to be shipped');
  assert.equal(detail.data.canPay, false);
});

/** wxlocal's sandbox as it starts: WeChat Pay answering, notifications sent at once. */
async function sandboxNormal() {
  await fetch(`${server.baseUrl}/sandbox/_control/faults`, { method: 'DELETE', signal: AbortSignal.timeout(5000) });
  const r = await control('notifications', { reorder: false });
  assert.equal(r.status, 200, JSON.stringify(r.body));
}

test('against wxlocal: cancelled in the cashier, the order closed on its page, then Pay on the product page: says it closed, offers Buy, which buys anew', { timeout: 20000 }, async () => {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
  await sandboxNormal();
  const opts = { signing: server.signing, user: 'hunt-closed-' + Date.now(), cashier: 'cancel' };
  const wx = support.sandboxWx(server.baseUrl, opts);
  const user = withUser(wx);
  user.addresses.push(WX_ADDRESS);
  const mp = miniProgram(wx, { baseUrl: server.baseUrl, payPoll: { intervalMs: 100, timeoutMs: 5000, failTimeoutMs: 200 } });
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  const first = product.data.orderNo;

  // View order → Close (confirmed in the modal); back on the product page, its state is as it was.
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: first });
  await detail.onCloseTap();
  assert.equal(detail.data.order.statusText, 'Closed unpaid');

  await product.onBuyTap(); // the button says Pay: the server refuses the key (ORDER_CLOSED)
  assert.equal(product.data.outcome, 'closed', `still offers Pay for a closed order: ${product.data.message}`);
  assert.match(product.data.message, /closed unpaid/i, product.data.message);
  assert.equal(product.data.orderNo, first);

  opts.cashier = 'pay';
  await product.onBuyTap(); // the button says Buy: a new purchase, paid
  assert.equal(product.data.outcome, 'paid', product.data.message);
  assert.notEqual(product.data.orderNo, first);
  assert.deepEqual(user.toasts, ['Order closed']);
});

test('against wxlocal: Pay on the order page, paid in the cashier while WeChat Pay is slow to say so: no Pay until a pull-down, then paid', { timeout: 20000 }, async () => {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
  await sandboxNormal();
  const opts = { signing: server.signing, user: 'hunt-confirming-' + Date.now(), cashier: 'cancel' };
  const wx = support.sandboxWx(server.baseUrl, opts);
  const user = withUser(wx);
  user.addresses.push(WX_ADDRESS);
  const mp = miniProgram(wx, { baseUrl: server.baseUrl, payPoll: { intervalMs: 100, timeoutMs: 500, failTimeoutMs: 200 } });
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  const no = product.data.orderNo;
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: no });
  assert.equal(detail.data.canPay, true);

  // WeChat Pay's order query fails and the notification is held back: the user pays in the
  // cashier, and for a while the server cannot know.
  try {
    const fault = await control('faults', { path: 'pay/orderquery', mode: 'http500' });
    assert.equal(fault.status, 200, JSON.stringify(fault.body));
    const held = await control('notifications', { reorder: true });
    assert.equal(held.status, 200, JSON.stringify(held.body));
    opts.cashier = 'pay';
    await detail.onPayTap();
    assert.equal(detail.data.confirming, true, user.toasts.join(' | '));
    assert.equal(detail.data.canPay, false, 'Pay offered for an order paid in the cashier');
    await detail.onPayTap();
    assert.equal(wx.log.filter((c) => c.name === 'unifiedOrder').length, 2, 'no second payment from a tap where Pay was');
  } finally {
    await sandboxNormal();
  }
  for (let i = 0; i < 50; i++) {
    await detail.onPullDownRefresh();
    if (detail.data.order && detail.data.order.paid) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(detail.data.order.statusText, 'Paid, to be shipped');
  assert.equal(detail.data.confirming, false);
  assert.equal(detail.data.canPay, false);
});

// ---- a purchase the user already made survives a reload and a refused pre-order check ----------

/**
 * utils/unpaid.js loaded on its own with `wx` as its global: a fresh module instance each
 * time, as after the mini program was killed and reopened (only the storage outlives it).
 */
function loadUnpaid(wx) {
  const file = path.join(ROOT, 'utils', 'unpaid.js');
  const module = { exports: {} };
  const fn = vm.runInThisContext(`(function (require, module, exports, wx) {${fs.readFileSync(file, 'utf8')}\n})`, { filename: file });
  fn(() => assert.fail('unpaid.js requires nothing'), module, module.exports, wx);
  return module.exports;
}

/** wx.checkBeforeAddOrder answering `says()` (res.data), as the base library with the component. */
function checkBeforeAddOrder(says) {
  return (o) => setImmediate(() => o.success({ errMsg: 'checkBeforeAddOrder:ok', data: says() }));
}

test('product: an unpaid purchase is offered as Pay again after the mini program reloads, and Pay pays that order (no second one)', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  const before = miniProgram(shop.wx, FAST).page('pages/product/product');
  await before.onLoad({ product_id: 'tea' });
  before.onPlus(); // two tins
  shop.cashierWill.push('cancel');
  await before.onBuyTap();
  assert.equal(before.data.outcome, 'unpaid', before.data.message);
  const key = shop.keyOf('T1');

  // Killed and reopened: a fresh app, its modules loaded again; only the storage is the same.
  const product = miniProgram(shop.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  assert.equal(product.data.outcome, 'unpaid', `no Pay offered for the unpaid order after a reload: ${product.data.message}`);
  assert.equal(product.data.orderNo, 'T1');
  assert.match(product.data.message, /T1[\s\S]*Tap Pay/, product.data.message);
  assert.equal(product.data.quantity, 2, 'the quantity it was bought with');
  await product.onBuyTap();
  assert.deepEqual(shop.sent('unifiedOrder').map((c) => c.data.idempotency_key), [key, key], 'Pay sent the kept key: the same order');
  assert.equal(shop.byNo.size, 1, 'no second order');
  assert.equal(product.data.orderNo, 'T1');
  assert.equal(shop.cashierOpened.length, 2, 'the cashier opened for that order');
  assert.equal(user.addresses.length, 0, 'no address asked for again');

  // A Buy of the same cart after another reload (the button reset by a change and back) sends that key too.
  const again = miniProgram(shop.wx, FAST).page('pages/product/product');
  shop.cashierWill.push('cancel');
  await again.onLoad({ product_id: 'tea' });
  again.onMinus();
  again.onPlus();
  assert.equal(again.data.outcome, '', 'the quantity changed and back: the button says Buy');
  await again.onBuyTap();
  assert.deepEqual(shop.sent('unifiedOrder').map((c) => c.data.idempotency_key), [key, key, key], 'Buy of the same cart pays the kept order');
  assert.equal(shop.byNo.size, 1, 'still one order');
});

test('product: after a reload, a kept purchase paid or closed meanwhile is not offered as Pay, and is forgotten', async () => {
  for (const meanwhile of ['confirm', 'close']) {
    const shop = unconfirmedShop();
    const user = withUser(shop.wx);
    user.addresses.push(WX_ADDRESS);
    const before = miniProgram(shop.wx, FAST).page('pages/product/product');
    await before.onLoad({ product_id: 'tea' });
    shop.cashierWill.push('cancel');
    await before.onBuyTap();
    assert.equal(before.data.outcome, 'unpaid');
    shop[meanwhile]('T1'); // paid in WeChat's order centre, or expired
    const product = miniProgram(shop.wx, FAST).page('pages/product/product');
    await product.onLoad({ product_id: 'tea' });
    assert.equal(product.data.outcome, '', `${meanwhile}: ${product.data.message}`);
    assert.ok(!('T1' in (shop.wx.getStorageSync('example.unpaid') || {})), `${meanwhile}: forgotten`);
  }
});

test('pages: a kept key survives WeChat\'s pre-order check refusing this entry: Pay stays offered and, once allowed, pays the same order', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  let says = { requireOrder: 0, traceId: 't-1' };
  shop.wx.checkBeforeAddOrder = checkBeforeAddOrder(() => says);
  const mp = miniProgram(shop.wx, FAST);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel', 'cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid');
  const key = shop.keyOf('T1');

  // The user comes back through an entry where WeChat requires a secondary-merchant order;
  // this shop makes ordinary ones: refused before anything is sent.
  says = { requireOrder: 1, requiredFundType: 1, traceId: 't-2' };
  await product.onBuyTap();
  assert.match(user.toasts.pop() || '', /^ORDER_TYPE_UNSUPPORTED: /);
  assert.equal(product.data.outcome, 'unpaid', 'Pay is still offered: the order is still there to pay');
  assert.equal(shop.sent('unifiedOrder').length, 1, 'nothing sent');
  says = { requireOrder: 0, traceId: 't-3' };
  await product.onBuyTap();
  assert.deepEqual(shop.sent('unifiedOrder').map((c) => c.data.idempotency_key), [key, key], 'the same key: the same order');
  assert.equal(shop.byNo.size, 1, 'no second order');

  // The order page, the same: refused, the key kept (Pay still offered, also after a reload).
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  assert.equal(detail.data.canPay, true);
  says = { requireOrder: 1, requiredFundType: 1, traceId: 't-4' };
  await detail.onPayTap();
  assert.match(user.toasts.pop() || '', /^ORDER_TYPE_UNSUPPORTED: /);
  assert.equal(detail.data.canPay, true, 'Pay still offered on the order page');
  const reloaded = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await reloaded.onLoad({ out_trade_no: 'T1' });
  assert.equal(reloaded.data.canPay, true, 'and after a reload');
  says = { requireOrder: 0, traceId: 't-5' };
  await reloaded.onPayTap();
  assert.deepEqual(shop.sent('unifiedOrder').map((c) => c.data.idempotency_key), [key, key, key]);
  assert.equal(shop.byNo.size, 1, 'still one order');
});

test('order page: an unpaid order this phone holds no key for offers Buy again, which closes it (stock back) and opens its product', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  const navigations = [];
  shop.wx.navigateTo = (o) => navigations.push(o.url);
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  shop.place('k-other-phone', items); // T1, bought on another phone: no key here
  const detail = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  assert.equal(detail.data.canPay, false);
  const wxml = fs.readFileSync(path.join(ROOT, 'pages', 'order', 'detail.wxml'), 'utf8');
  assert.match(wxml, /wx:if="\{\{!canPay\}\}"[^>]*bindtap="onBuyAgainTap"/, 'Buy again offered when the key is gone');
  await detail.onBuyAgainTap();
  assert.equal(shop.byNo.get('T1').status, 'CLOSED', 'the old order is closed: its stock goes back');
  assert.equal(detail.data.order.statusText, 'Closed unpaid');
  assert.deepEqual(navigations, ['/pages/product/product?product_id=tea&sku_id=tea-250g']);
  assert.deepEqual(user.toasts, []);
});

test('utils/unpaid: a kept key is read back by a fresh module (a reload); old entries expire and at most MAX_ENTRIES are kept', () => {
  const shop = unconfirmedShop();
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  loadUnpaid(shop.wx).remember('T1', { key: 'k-1', items, address: null });
  const fresh = loadUnpaid(shop.wx);
  assert.equal(fresh.find('T1').key, 'k-1', 'read back after a reload');
  assert.equal(fresh.latestFor('tea').out_trade_no, 'T1');
  assert.equal(fresh.findPurchase(items, null).key, 'k-1');
  assert.equal(fresh.findPurchase([{ product_id: 'tea', sku_id: 'tea-250g', quantity: 2 }], null), null, 'another cart');

  // Kept longer than an order lives: forgotten.
  const map = shop.wx.getStorageSync('example.unpaid');
  map.T1.at = Date.now() - fresh.MAX_AGE_MS - 1000;
  shop.wx.setStorageSync('example.unpaid', map);
  assert.equal(loadUnpaid(shop.wx).find('T1'), null, 'an entry older than any order lives is gone');

  // Bounded: the newest MAX_ENTRIES stay.
  const many = loadUnpaid(shop.wx);
  for (let i = 0; i < many.MAX_ENTRIES + 5; i++) many.remember('N' + i, { key: 'k-' + i, items, address: null });
  const kept = Object.keys(shop.wx.getStorageSync('example.unpaid'));
  assert.equal(kept.length, many.MAX_ENTRIES);
  assert.ok(kept.includes('N' + (many.MAX_ENTRIES + 4)), 'the newest is kept');
  assert.ok(!kept.includes('N0'), 'the oldest is dropped');
});

// ---- a purchase neither lost nor made twice: a replaced order's key, a lost answer, a new address

const WX_ADDRESS_2 = { userName: 'Alice', telNumber: '13800000000', provinceName: '浙江省', cityName: '杭州市', countyName: '上城区', detailInfo: '9 Office Road' };
const unifiedKeys = (shop) => shop.sent('unifiedOrder').map((c) => c.data.idempotency_key);

test('order page: Pay that replaces its order (another entry) and gets no answer for the new one keeps the new key for the cart and address: the next Buy pays that order, not a third', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  const mp = miniProgram(shop.wx, FAST);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  const first = shop.keyOf('T1');

  // Back through another entry (WeChat's order centre, another scene): the server refuses T1's
  // key for the changed request, naming T1; buy closes T1 and orders under a new key, whose
  // order the server makes (T2) but whose answer is lost.
  shop.refuseNaming(first);
  shop.loseAnswers((name, d) => name === 'unifiedOrder' && d.idempotency_key !== first);
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  assert.equal(detail.data.canPay, true);
  await detail.onPayTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
  assert.equal(shop.byNo.get('T1').status, 'CLOSED', 'buy closed T1 to replace it');
  assert.equal(shop.byNo.get('T2').status, 'PREPAID', 'T2 is made, holding its stock; the phone never heard of it');
  const second = shop.keyOf('T2');
  shop.loseAnswers(() => false);

  // Killed and reopened; the user buys the same tea for the same address.
  const again = miniProgram(shop.wx, FAST).page('pages/product/product');
  await again.onLoad({ product_id: 'tea' });
  user.addresses.push(WX_ADDRESS);
  shop.cashierWill.push('cancel');
  await again.onBuyTap();
  assert.equal(unifiedKeys(shop).pop(), second, 'the Buy sent the key of the order made to replace T1 (it was lost with T1)');
  assert.equal(shop.byNo.size, 2, 'no third order while T2 holds the stock');
  assert.equal(again.data.orderNo, 'T2');
  assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), ['T2'], 'kept under its own number now');
});

test('product: a key handed back on a network failure is kept in storage: after a reload the next Buy of the same cart and address sends it (no second order); once answered paid, it is forgotten', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  shop.loseAnswers((name) => name === 'unifiedOrder'); // the server makes the order, the answer is lost
  const before = miniProgram(shop.wx, FAST).page('pages/product/product');
  await before.onLoad({ product_id: 'tea' });
  await before.onBuyTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
  assert.equal(shop.byNo.size, 1, 'the server made T1');
  const key = shop.keyOf('T1');
  shop.loseAnswers(() => false);

  // Killed and reopened: the page's memory is gone, the storage is not.
  const product = miniProgram(shop.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  user.addresses.push(WX_ADDRESS);
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  assert.deepEqual(unifiedKeys(shop), [key, key], 'the Buy after the reload sent the key of the unanswered call');
  assert.equal(shop.byNo.size, 1, 'no second order while T1 holds the stock');
  assert.equal(product.data.orderNo, 'T1');
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), ['T1'], 'kept under its number once known');

  shop.confirm('T1'); // paid in WeChat's order centre
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'paid', product.data.message);
  assert.deepEqual(shop.wx.getStorageSync('example.unpaid'), {}, 'answered paid: forgotten');
});

test('product: the same cart bought again for another address closes the unpaid order first (stock back), then buys afresh; paid meanwhile, that order is shown and nothing bought', async () => {
  for (const lost of [false, true]) {
    const shop = unconfirmedShop();
    const user = withUser(shop.wx);
    user.addresses.push(WX_ADDRESS, WX_ADDRESS_2);
    const product = miniProgram(shop.wx, FAST).page('pages/product/product');
    await product.onLoad({ product_id: 'tea' });
    // Not paid: the cashier cancelled, or (lost) the order call's answer never came.
    if (lost) shop.loseAnswers((name) => name === 'unifiedOrder');
    else shop.cashierWill.push('cancel');
    await product.onBuyTap();
    shop.loseAnswers(() => false);
    assert.equal(shop.byNo.get('T1').status, 'PREPAID');
    await product.onAddressTap(); // another delivery address
    assert.equal(product.data.address.detailed_address.includes('9 Office Road'), true, JSON.stringify(product.data.address));
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    assert.equal(shop.byNo.get('T1').status, 'CLOSED', `lost=${lost}: the order for the old address is closed, its stock back`);
    assert.equal(shop.byNo.size, 2, `lost=${lost}: one new order`);
    assert.equal(product.data.orderNo, 'T2', product.data.message);
    assert.equal(product.data.outcome, 'unpaid', product.data.message);
    assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), ['T2'], `lost=${lost}: only the new order is kept`);
  }

  // Paid meanwhile (in WeChat's order centre): the close is refused ORDER_PAID; that order is
  // shown paid, and nothing is bought again.
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS, WX_ADDRESS_2);
  const product = miniProgram(shop.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  shop.confirm('T1');
  await product.onAddressTap();
  await product.onBuyTap();
  assert.equal(shop.byNo.size, 1, 'no second purchase of a cart already paid');
  assert.equal(shop.sent('unifiedOrder').length, 1);
  assert.equal(product.data.outcome, 'paid', product.data.message);
  assert.equal(product.data.orderNo, 'T1');
  assert.deepEqual(shop.wx.getStorageSync('example.unpaid'), {});
  assert.deepEqual(user.toasts, []);
});

test('utils/unpaid: a key with no order number is kept for its cart and address, bounded like the rest, and forgotten once answered', () => {
  const shop = unconfirmedShop();
  const items = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  const unpaid = loadUnpaid(shop.wx);
  unpaid.afterFailure({ code: 'NETWORK_ERROR', idempotencyKey: 'k-lost' }, { items, address: null });
  const fresh = loadUnpaid(shop.wx);
  assert.equal(fresh.findPurchase(items, null).key, 'k-lost', 'read back after a reload');
  assert.equal(fresh.findPurchase(items, null).out_trade_no, null);
  assert.equal(fresh.latestFor('tea'), null, 'no order to offer Pay for');
  assert.equal(fresh.find('?k-lost'), null);
  // The server answered the key with T1: kept under T1 only.
  fresh.afterBuy({ out_trade_no: 'T1', idempotencyKey: 'k-lost' }, { items, address: null, key: 'k-lost' });
  assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), ['T1']);
  // Refused as spent (no key handed back): forgotten.
  fresh.afterFailure({ code: 'ORDER_CLOSED' }, { items, address: null, key: 'k-lost' }, 'T1');
  assert.deepEqual(shop.wx.getStorageSync('example.unpaid'), {});
  // Old ones expire, at most MAX_ENTRIES.
  fresh.rememberKey({ key: 'k-old', items, address: null });
  const map = shop.wx.getStorageSync('example.unpaid');
  map['?k-old'].at = Date.now() - fresh.MAX_AGE_MS - 1000;
  shop.wx.setStorageSync('example.unpaid', map);
  assert.equal(loadUnpaid(shop.wx).findPurchase(items, null), null, 'older than any order lives: gone');
  for (let i = 0; i < fresh.MAX_ENTRIES + 3; i++) fresh.rememberKey({ key: 'k-' + i, items, address: null });
  assert.equal(Object.keys(shop.wx.getStorageSync('example.unpaid')).length, fresh.MAX_ENTRIES);
  assert.equal(fresh.findPurchase(items, null).key, 'k-' + (fresh.MAX_ENTRIES + 2), 'the newest is sent');
});

test('against wxlocal: the same cart bought again for another address closes the unpaid order (its stock back) and buys afresh, also when the first order\'s answer was lost', { timeout: 30000 }, async () => {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
  await sandboxNormal();
  for (const lost of [false, true]) {
    // lost: the server makes the first order, its answer never reaches the phone.
    const opts = { signing: server.signing, user: `hunt-address-${lost}-${Date.now()}`, cashier: 'cancel' };
    if (lost) opts.loseAnswer = (name, nth) => name === 'unifiedOrder' && nth === 0;
    const wx = support.sandboxWx(server.baseUrl, opts);
    const user = withUser(wx);
    user.addresses.push(WX_ADDRESS, WX_ADDRESS_2);
    const clientOptions = { baseUrl: server.baseUrl, payPoll: { intervalMs: 100, timeoutMs: 5000, failTimeoutMs: 200 }, orderRetry: { attempts: 1, delayMs: 1, maxDelayMs: 1, budgetMs: 100 } };
    const mp = miniProgram(wx, clientOptions);
    const stockOf = async (skuId) => {
      const p = miniProgram(wx, clientOptions).page('pages/product/product');
      await p.onLoad({ product_id: 'tea' });
      return p.data.skus.filter((s) => s.sku_id === skuId)[0].stock;
    };
    const product = mp.page('pages/product/product');
    await product.onLoad({ product_id: 'tea' });
    const sku = product.data.selected;
    const stock = await stockOf(sku);
    await product.onBuyTap();
    if (lost) assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
    else assert.equal(product.data.outcome, 'unpaid', product.data.message);
    assert.equal(await stockOf(sku), stock - 1, `lost=${lost}: the first order holds one`);

    await product.onAddressTap();
    await product.onBuyTap();
    assert.equal(product.data.outcome, 'unpaid', `lost=${lost}: ${product.data.message} ${user.toasts.join(' | ')}`);
    assert.equal(await stockOf(sku), stock - 1, `lost=${lost}: one order holds stock, not two: the first was closed`);
    const list = mp.page('pages/orders/orders');
    await list.onShow();
    const orders = list.data.orders;
    assert.deepEqual(orders.map((o) => o.statusText).sort(), ['Awaiting payment', 'Closed unpaid'], `lost=${lost}: ${JSON.stringify(orders)}`);
    assert.deepEqual(user.toasts, [], `lost=${lost}`);
  }
});

// ---- the order page after a failed replacement; a changed cart of the same product -------------

test('order page: Pay that replaced its order and got no answer for the new one points to the new one: it keeps offering Pay the new order (same key), then opens it, also after a reload', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  const redirects = [];
  shop.wx.redirectTo = (o) => redirects.push(o.url);
  const mp = miniProgram(shop.wx, FAST);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  const first = shop.keyOf('T1');

  // Back through another entry: T1's key is refused naming T1, buy closes T1 and orders under a
  // new key; the server makes T2, the answer is lost.
  shop.refuseNaming(first);
  shop.loseAnswers((name, d) => name === 'unifiedOrder' && d.idempotency_key !== first);
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  await detail.onPayTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
  assert.equal(detail.data.order.statusText, 'Closed unpaid');
  const second = shop.keyOf('T2');
  assert.deepEqual(detail.data.replacement, { no: '' }, 'the closed order\'s page points nowhere: the new order (T2, holding its stock) is lost to the user');
  const wxml = fs.readFileSync(path.join(ROOT, 'pages', 'order', 'detail.wxml'), 'utf8');
  assert.match(wxml, /wx:if="\{\{replacement && !replacement.no\}\}"[\s\S]*?did not arrive[\s\S]*?bindtap="onPayReplacementTap"/, 'the page says what happened and offers the retry');

  // The retry fails again: still offered, the same key kept; after a reload too.
  await detail.onPayReplacementTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
  assert.deepEqual(detail.data.replacement, { no: '' }, 'still offered after a second failure');
  const reloaded = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await reloaded.onLoad({ out_trade_no: 'T1' });
  assert.deepEqual(reloaded.data.replacement, { no: '' }, 'and after a reload');

  // The answer comes: the same order (T2), no third; the page opens it.
  shop.loseAnswers(() => false);
  shop.cashierWill.push('cancel');
  await reloaded.onPayReplacementTap();
  assert.deepEqual(unifiedKeys(shop).slice(-3), [second, second, second], 'every retry sent the new order\'s key');
  assert.equal(shop.byNo.size, 2, 'no third order');
  assert.deepEqual(redirects, ['/pages/order/detail?out_trade_no=T2'], 'the new order is opened');
  assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), ['T2'], 'kept under its own number');
  const t2 = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await t2.onLoad({ out_trade_no: 'T2' });
  assert.equal(t2.data.canPay, true, 'the new order\'s page offers Pay (its key kept)');

  // T1's page, opened again (from my orders), says it was replaced by T2 and opens it.
  const again = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await again.onLoad({ out_trade_no: 'T1' });
  assert.deepEqual(again.data.replacement, { no: 'T2' });
  again.onOpenReplacementTap();
  assert.equal(redirects.pop(), '/pages/order/detail?out_trade_no=T2');
});

test('product: a changed quantity or SKU of the same product closes the unpaid order first (no second order holding stock); paid meanwhile, shown and nothing bought; a close refused, nothing bought', async () => {
  for (const change of ['quantity', 'sku']) {
    const shop = unconfirmedShop();
    const user = withUser(shop.wx);
    user.addresses.push(WX_ADDRESS);
    const product = miniProgram(shop.wx, FAST).page('pages/product/product');
    await product.onLoad({ product_id: 'tea' });
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    assert.equal(product.data.outcome, 'unpaid', product.data.message);
    if (change === 'quantity') product.onPlus();
    else product.onSkuTap({ currentTarget: { dataset: { skuId: 'tea-500g' } } });
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    assert.equal(shop.byNo.size, 2, `${change}: a new order for the changed cart`);
    assert.equal(shop.byNo.get('T1').status, 'CLOSED', `${change}: the unpaid order of the old cart is closed, its stock back (it would hold it until it expired)`);
    assert.equal(product.data.orderNo, 'T2', product.data.message);
    assert.equal(product.data.outcome, 'unpaid', product.data.message);
    assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), ['T2'], `${change}: only the new order is kept`);
    assert.deepEqual(user.toasts, []);
  }

  // Paid meanwhile (in WeChat's order centre): that order shown paid, nothing bought.
  {
    const shop = unconfirmedShop();
    withUser(shop.wx).addresses.push(WX_ADDRESS);
    const product = miniProgram(shop.wx, FAST).page('pages/product/product');
    await product.onLoad({ product_id: 'tea' });
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    shop.confirm('T1');
    product.onPlus();
    await product.onBuyTap();
    assert.equal(shop.byNo.size, 1, 'nothing bought on top of an order paid meanwhile');
    assert.equal(product.data.outcome, 'paid', product.data.message);
    assert.equal(product.data.orderNo, 'T1');
    assert.match(product.data.message, /T1[\s\S]*paid already[\s\S]*nothing new was bought/, product.data.message);
    // The next tap is a purchase the user chose, knowing.
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    assert.equal(shop.byNo.size, 2);
  }

  // The close refused (WeChat Pay could not say whether it was paid): nothing bought, said so;
  // the next tap closes it and buys.
  {
    const shop = unconfirmedShop();
    const user = withUser(shop.wx);
    user.addresses.push(WX_ADDRESS);
    const product = miniProgram(shop.wx, FAST).page('pages/product/product');
    await product.onLoad({ product_id: 'tea' });
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    product.onPlus();
    shop.closeAnswers(() => ({ statusCode: 503, data: { code: 'ORDER_STATUS_UNKNOWN', message: 'WeChat Pay could not say whether the order was paid; nothing closed' } }));
    await product.onBuyTap();
    assert.equal(shop.sent('unifiedOrder').length, 1, 'nothing bought while the old order may be paid or open');
    assert.match(product.data.message, /T1[\s\S]*could not be closed[\s\S]*nothing new was bought/, product.data.message);
    assert.equal(product.data.orderNo, 'T1', 'View order opens the one that could not be closed');
    assert.match(user.toasts.pop() || '', /^ORDER_STATUS_UNKNOWN/);
    shop.closeAnswers(null);
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    assert.equal(shop.byNo.get('T1').status, 'CLOSED');
    assert.equal(shop.byNo.size, 2);
    assert.equal(product.data.orderNo, 'T2');
  }
});

test('utils/unpaid: a changed cart of the same product is found to close; a cart of other products is not', () => {
  const shop = unconfirmedShop();
  const unpaid = loadUnpaid(shop.wx);
  const tea1 = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
  const tea2 = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 2 }];
  const cup = [{ product_id: 'cup', sku_id: 'cup-1', quantity: 1 }];
  unpaid.remember('T1', { key: 'k-1', items: tea1, address: null });
  unpaid.remember('C1', { key: 'k-c', items: cup, address: null });
  assert.deepEqual(unpaid.findChanged(tea2, null).map((p) => p.out_trade_no), ['T1'], 'another quantity of tea');
  assert.deepEqual(unpaid.findChanged(tea1, null), [], 'the same cart is paid with its key, not closed');
  assert.deepEqual(unpaid.findChanged([{ product_id: 'cup', sku_id: 'cup-1', quantity: 3 }], null).map((p) => p.out_trade_no), ['C1']);
  assert.deepEqual(unpaid.findChanged([{ product_id: 'pot', sku_id: 'pot-1', quantity: 1 }], null), [], 'another product: another purchase');
});

/** A failed replacement, as above: T1 bought and not paid, Pay from another entry closes it and makes T2, whose answer is lost. */
async function failedReplacement(shop, user) {
  user.addresses.push(WX_ADDRESS);
  const mp = miniProgram(shop.wx, FAST);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  const first = shop.keyOf('T1');
  shop.refuseNaming(first);
  shop.loseAnswers((name, d) => name === 'unifiedOrder' && d.idempotency_key !== first);
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  await detail.onPayTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
  shop.loseAnswers(() => false);
  return shop.keyOf('T2');
}

test('order page: the order made to replace one, opened from my orders before its answer came, offers Pay with its key (not Buy again, which would close it)', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  const second = await failedReplacement(shop, user);
  const t2 = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await t2.onLoad({ out_trade_no: 'T2' });
  assert.equal(t2.data.canPay, true, 'T2\'s page offers Buy again, which would close the order the user wants');
  shop.cashierWill.push('cancel');
  await t2.onPayTap();
  assert.equal(unifiedKeys(shop).pop(), second, 'Pay sent the kept key');
  assert.equal(shop.byNo.size, 2, 'no third order');
  assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), ['T2'], 'kept under its number once the server answered with it');
});

test('product: a kept key whose order was closed meanwhile (the replacement, closed on its page): the next Buy of the same cart is a new purchase in one tap, not "this order was closed"', async () => {
  // The user closes the order made to replace T1; the next Buy of the same cart on the product
  // page is a new purchase, not "this order was closed" for an order the page never showed.
  const other = unconfirmedShop();
  const otherUser = withUser(other.wx);
  await failedReplacement(other, otherUser);
  const page = miniProgram(other.wx, FAST).page('pages/order/detail');
  await page.onLoad({ out_trade_no: 'T2' });
  await page.onCloseTap();
  assert.equal(other.byNo.get('T2').status, 'CLOSED');
  const product = miniProgram(other.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  otherUser.addresses.push(WX_ADDRESS);
  other.cashierWill.push('cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  assert.equal(product.data.orderNo, 'T3', 'a new order, in one tap');
});

test('order page: Pay that replaced its order and whose cashier said paid, not yet seen by the server: the new order\'s page says "confirming", not Pay', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  user.addresses.push(WX_ADDRESS);
  const redirects = [];
  shop.wx.redirectTo = (o) => redirects.push(o.url);
  const mp = miniProgram(shop.wx, FAST);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  shop.refuseNaming(shop.keyOf('T1'));
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  await detail.onPayTap(); // the cashier says paid; the server reads T2 PREPAID still
  assert.equal(redirects.length, 1);
  const url = redirects[0];
  assert.match(url, /^\/pages\/order\/detail\?/);
  const query = Object.fromEntries(new URLSearchParams(url.split('?')[1]));
  assert.equal(query.out_trade_no, 'T2');
  const t2 = mp.page('pages/order/detail');
  await t2.onLoad(query);
  assert.equal(t2.data.order.statusText, 'Awaiting payment');
  assert.equal(t2.data.canPay, false, 'Pay offered for an order the user has just paid');
  assert.equal(t2.data.confirming, true);
  shop.confirm('T2');
  await t2.onPullDownRefresh();
  assert.equal(t2.data.order.statusText, 'Paid, to be shipped');
});

test('against wxlocal: a changed quantity of the same tea closes the unpaid order (its stock back) and buys the new one; Pay from another entry whose new order\'s answer is lost: the closed order\'s page pays the new one (same key), then opens it', { timeout: 30000 }, async () => {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
  await sandboxNormal();
  // The 4th order call (the new order's, after the refusal of the 3rd) is served, its answer lost.
  const opts = { signing: server.signing, user: `hunt-changed-${Date.now()}`, cashier: 'cancel', loseAnswer: (name, nth) => name === 'unifiedOrder' && nth === 3 };
  const wx = support.sandboxWx(server.baseUrl, opts);
  const user = withUser(wx);
  const redirects = [];
  wx.redirectTo = (o) => redirects.push(o.url);
  user.addresses.push(WX_ADDRESS);
  const clientOptions = { baseUrl: server.baseUrl, payPoll: { intervalMs: 100, timeoutMs: 5000, failTimeoutMs: 200 }, orderRetry: { attempts: 1, delayMs: 1, maxDelayMs: 1, budgetMs: 100 } };
  const mp = miniProgram(wx, clientOptions);
  const stockOf = async (skuId) => {
    const p = miniProgram(wx, clientOptions).page('pages/product/product');
    await p.onLoad({ product_id: 'tea' });
    return p.data.skus.filter((s) => s.sku_id === skuId)[0].stock;
  };
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  const sku = product.data.selected;
  const stock = await stockOf(sku);
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  const first = product.data.orderNo;
  product.onPlus(); // two tins instead of one
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', `${product.data.message} ${user.toasts.join(' | ')}`);
  const second = product.data.orderNo;
  assert.notEqual(second, first);
  assert.equal(await stockOf(sku), stock - 2, 'only the order of two holds stock: the order of one was closed');
  const list = mp.page('pages/orders/orders');
  await list.onShow();
  assert.deepEqual(list.data.orders.map((o) => [o.out_trade_no, o.statusText]), [[second, 'Awaiting payment'], [first, 'Closed unpaid']]);

  // Back through another entry (another scene): Pay on the order page closes it and orders
  // anew; the server makes the new order, its answer is lost.
  opts.scene = 1089;
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: second });
  assert.equal(detail.data.canPay, true);
  await detail.onPayTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
  assert.equal(detail.data.order.statusText, 'Closed unpaid');
  assert.deepEqual(detail.data.replacement, { no: '' }, 'the page points to the new order');
  assert.equal(await stockOf(sku), stock - 2, 'the new order (made, unanswered) holds the two tins');
  await detail.onPayReplacementTap();
  assert.equal(redirects.length, 1, JSON.stringify(redirects));
  const third = new URLSearchParams(redirects[0].split('?')[1]).get('out_trade_no');
  assert.ok(third && third !== second && third !== first, redirects[0]);
  assert.equal(await stockOf(sku), stock - 2, 'no further order: the retry paid the one the server had made');
  await list.onShow();
  assert.deepEqual(list.data.orders.map((o) => o.statusText), ['Awaiting payment', 'Closed unpaid', 'Closed unpaid']);
  assert.equal(list.data.orders[0].out_trade_no, third);
  assert.deepEqual(user.toasts, ['Payment cancelled.'], 'the cashier was cancelled: said so, and the new order opened to pay it');
});

// ---- an unanswered key is matched by the server's answer, not by items; older unanswered keys;
// ---- Pay the new order answered closed; my orders' "replaced by" --------------------------------

/** The delivery address the pages send for WX_ADDRESS (the example's addressFromWx). */
const ADDRESS = require(path.join(ROOT, 'utils', 'wxshop.js')).addressFromWx(WX_ADDRESS);
const linesOf = (order) => order.items.map((i) => ({ product_id: i.product_id, sku_id: i.sku_id, quantity: i.quantity }));

test('order page: an unpaid order of the same items bought on another phone is not paid with this phone\'s unanswered key: the server is asked which order the key holds, and that one is named (no cashier for it here)', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  const redirects = [];
  shop.wx.redirectTo = (o) => redirects.push(o.url);
  const second = await failedReplacement(shop, user); // T1 closed, T2 made (this phone: its key, no number)
  const cashiers = shop.cashierOpened.length;
  shop.place('k-other-phone', linesOf(shop.byNo.get('T2')), ADDRESS); // T3: the same tea, bought on another phone
  const t3 = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await t3.onLoad({ out_trade_no: 'T3' });
  await t3.onPayTap();
  assert.equal(shop.cashierOpened.length, cashiers, `Pay on T3's page opened the cashier for another order: ${shop.cashierOpened.slice(cashiers)}`);
  assert.deepEqual(redirects, [], 'not taken away to another order as if it were this one');
  assert.equal(shop.byNo.size, 3, 'nothing made');
  assert.equal(t3.data.keyOrder, 'T2', 'the page names the order the key holds');
  assert.equal(t3.data.canPay, false, 'T3 cannot be paid from this phone: it holds no key of it');
  const wxml = fs.readFileSync(path.join(ROOT, 'pages', 'order', 'detail.wxml'), 'utf8');
  assert.match(wxml, /wx:if="\{\{keyOrder\}\}"[\s\S]*?not this one[\s\S]*?bindtap="onOpenKeyOrderTap"/);
  t3.onOpenKeyOrderTap();
  assert.deepEqual(redirects, ['/pages/order/detail?out_trade_no=T2']);
  const unpaid = loadUnpaid(shop.wx);
  assert.equal(unpaid.find('T2').key, second, 'the key is kept under its own order now');
  assert.equal(unpaid.find('T3'), null, 'and never under T3');

  // T2's page pays T2 with it.
  const t2 = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await t2.onLoad({ out_trade_no: 'T2' });
  assert.equal(t2.data.canPay, true);
  await t2.onPayTap();
  assert.deepEqual(shop.cashierOpened.slice(cashiers), ['prepay_id=T2']);
  assert.equal(shop.byNo.size, 3, 'no further order');
});

test('product: older unanswered purchases of the same product are asked about and closed before a changed cart is bought, not left holding stock (also a key the server never took)', async () => {
  for (const taken of [true, false]) {
    const shop = unconfirmedShop();
    const user = withUser(shop.wx);
    user.addresses.push(WX_ADDRESS);
    const one = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }];
    const two = [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 2 }];
    // Two purchases of tea whose answers were lost: one, older (made at the server only when
    // `taken`), and two, the newest (made).
    const unpaid = loadUnpaid(shop.wx);
    unpaid.rememberKey({ key: 'k-one', items: one, address: ADDRESS });
    unpaid.rememberKey({ key: 'k-two', items: two, address: ADDRESS });
    if (taken) shop.place('k-one', one, ADDRESS);
    shop.place('k-two', two, ADDRESS);
    const product = miniProgram(shop.wx, FAST).page('pages/product/product');
    await product.onLoad({ product_id: 'tea' });
    product.onPlus();
    product.onPlus(); // three tins
    shop.cashierWill.push('cancel');
    await product.onBuyTap();
    assert.equal(product.data.outcome, 'unpaid', `taken=${taken}: ${product.data.message} ${user.toasts.join(' | ')}`);
    const bought = product.data.orderNo;
    assert.deepEqual(shop.byNo.get(bought).items.map((i) => i.quantity), [3]);
    const open = [...shop.byNo.values()].filter((o) => o.status === 'PREPAID').map((o) => o.out_trade_no);
    assert.deepEqual(open, [bought], `taken=${taken}: only the new order holds stock: ${JSON.stringify([...shop.byNo.values()].map((o) => [o.out_trade_no, o.status, o.items[0].quantity]))}`);
    assert.deepEqual(Object.keys(shop.wx.getStorageSync('example.unpaid')), [bought], `taken=${taken}: only the new order is kept`);
    assert.equal(shop.cashierOpened.length, 1, 'one cashier, for the new order');
  }
});

test('order page: Pay the new order answered that it closed unpaid meanwhile (ORDER_CLOSED): the page says so and offers Buy, a fresh purchase with a new key', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  const navigations = [];
  shop.wx.navigateTo = (o) => navigations.push(o.url);
  const second = await failedReplacement(shop, user);
  shop.close('T2'); // it expired (or was closed on its page) before the user came back
  const t1 = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await t1.onLoad({ out_trade_no: 'T1' });
  assert.deepEqual(t1.data.replacement, { no: '' });
  await t1.onPayReplacementTap();
  assert.equal(unifiedKeys(shop).pop(), second);
  assert.equal(t1.data.replacementClosed, true, 'the closed order\'s page with nothing to do: the user is stuck');
  assert.equal(t1.data.replacement, null);
  assert.deepEqual(user.toasts, ['The new order was closed unpaid.']);
  const wxml = fs.readFileSync(path.join(ROOT, 'pages', 'order', 'detail.wxml'), 'utf8');
  assert.match(wxml, /wx:if="\{\{replacementClosed\}\}"[\s\S]*?closed unpaid too[\s\S]*?bindtap="onBuyAfreshTap">Buy</);
  t1.onBuyAfreshTap();
  assert.deepEqual(navigations, ['/pages/product/product?product_id=tea&sku_id=tea-250g']);

  // The product page buys afresh: a new key, a new order.
  const product = miniProgram(shop.wx, FAST).page('pages/product/product');
  await product.onLoad({ product_id: 'tea', sku_id: 'tea-250g' });
  user.addresses.push(WX_ADDRESS);
  shop.cashierWill.push('cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  assert.equal(product.data.orderNo, 'T3');
  assert.notEqual(unifiedKeys(shop).pop(), second, 'a new key');
});

test('my orders: an order closed to be replaced reads "Replaced by order …" and opens the new one, also once the new one is paid', async () => {
  const shop = unconfirmedShop();
  const user = withUser(shop.wx);
  const navigations = [];
  shop.wx.navigateTo = (o) => navigations.push(o.url);
  await failedReplacement(shop, user);
  const list = miniProgram(shop.wx, FAST).page('pages/orders/orders');
  const t1 = () => list.data.orders.filter((o) => o.out_trade_no === 'T1')[0];
  await list.onShow();
  assert.equal(t1().replaced, true, 'the new order\'s answer has not come: T1 says it was replaced');
  assert.equal(t1().replacedBy, '');

  const detail = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  shop.cashierWill.push('cancel');
  await detail.onPayReplacementTap(); // answered: T2
  await list.onShow();
  assert.equal(t1().replacedBy, 'T2', JSON.stringify(t1()));
  const wxml = fs.readFileSync(path.join(ROOT, 'pages', 'orders', 'orders.wxml'), 'utf8');
  assert.match(wxml, /wx:if="\{\{item.replacedBy\}\}"[^>]*data-out-trade-no="\{\{item.replacedBy\}\}"[^>]*catchtap="onReplacedByTap">Replaced by order \{\{item.replacedBy\}\}/);
  list.onReplacedByTap({ currentTarget: { dataset: { outTradeNo: 'T2' } } });
  assert.deepEqual(navigations, ['/pages/order/detail?out_trade_no=T2']);

  // T2 paid (its purchase forgotten): the link stays, here and on T1's page.
  shop.confirm('T2');
  await list.onShow();
  assert.equal(loadUnpaid(shop.wx).find('T2'), null, 'the paid order is no longer kept to be paid');
  assert.equal(t1().replacedBy, 'T2');
  const again = miniProgram(shop.wx, FAST).page('pages/order/detail');
  await again.onLoad({ out_trade_no: 'T1' });
  assert.deepEqual(again.data.replacement, { no: 'T2' });
});

const WXLOCAL_CLIENT = { payPoll: { intervalMs: 100, timeoutMs: 5000, failTimeoutMs: 200 }, orderRetry: { attempts: 1, delayMs: 1, maxDelayMs: 1, budgetMs: 100 } };

test('against wxlocal: an order of the same tea bought on another phone is not taken for this phone\'s unanswered purchase: Pay asks the server which order the key holds (no cashier, no order made), names it, and that order\'s page pays it', { timeout: 30000 }, async () => {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
  await sandboxNormal();
  const who = `hunt-exact-${Date.now()}`;
  // The 3rd order call (the new order's, after the refusal of the 2nd) is served, its answer lost.
  const opts = { signing: server.signing, user: who, cashier: 'cancel', loseAnswer: (name, nth) => name === 'unifiedOrder' && nth === 2 };
  const wx = support.sandboxWx(server.baseUrl, opts);
  const user = withUser(wx);
  const cashiers = [];
  for (const api of ['requestPayment', 'requestOrderPayment']) {
    const open = wx[api];
    wx[api] = (p) => {
      cashiers.push(api);
      open(p);
    };
  }
  user.addresses.push(WX_ADDRESS);
  const clientOptions = Object.assign({ baseUrl: server.baseUrl }, WXLOCAL_CLIENT);
  const mp = miniProgram(wx, clientOptions);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  const sku = product.data.selected;
  await product.onBuyTap();
  const first = product.data.orderNo;
  // Back through another entry: Pay closes the first order and makes a new one, its answer lost.
  opts.scene = 1089;
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: first });
  await detail.onPayTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);

  // The same user buys the same tea for the same address on another phone (not paid).
  const otherWx = support.sandboxWx(server.baseUrl, { signing: server.signing, user: who, cashier: 'cancel', scene: 1089 });
  withUser(otherWx).addresses.push(WX_ADDRESS);
  const otherProduct = miniProgram(otherWx, clientOptions).page('pages/product/product');
  await otherProduct.onLoad({ product_id: 'tea', sku_id: sku });
  await otherProduct.onBuyTap();
  const third = otherProduct.data.orderNo;
  assert.ok(third, otherProduct.data.message);

  const list = mp.page('pages/orders/orders');
  await list.onShow();
  assert.equal(list.data.orders.length, 3, JSON.stringify(list.data.orders));
  const second = list.data.orders.map((o) => o.out_trade_no).filter((n) => n !== first && n !== third)[0];
  const page = miniProgram(wx, clientOptions).page('pages/order/detail');
  await page.onLoad({ out_trade_no: third });
  const before = cashiers.length;
  await page.onPayTap();
  assert.deepEqual(cashiers.slice(before), [], 'Pay on the other phone\'s order opened the cashier for this phone\'s purchase');
  assert.equal(page.data.keyOrder, second, 'the order the key holds, as the server said');
  assert.equal(page.data.canPay, false);
  await list.onShow();
  assert.equal(list.data.orders.length, 3, 'asking made no order');

  const mine = miniProgram(wx, clientOptions).page('pages/order/detail');
  await mine.onLoad({ out_trade_no: second });
  assert.equal(mine.data.canPay, true, 'its own page pays it with the key');
  await mine.onPayTap();
  assert.equal(cashiers.length, before + 1, 'one cashier, for that order: ' + user.toasts.join(' | '));
  await list.onShow();
  assert.equal(list.data.orders.length, 3, 'no further order');
  assert.deepEqual(user.toasts.slice(-2), ['Your purchase of these items is order ' + second + ', not this one.', 'Payment cancelled.']);
});

test('against wxlocal: an older purchase of the tea whose answer was lost is asked about and closed (its stock back) when a changed cart is bought beside a newer unanswered key', { timeout: 30000 }, async () => {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
  await sandboxNormal();
  // The first order call is served, its answer lost.
  const opts = { signing: server.signing, user: `hunt-older-${Date.now()}`, cashier: 'cancel', loseAnswer: (name, nth) => name === 'unifiedOrder' && nth === 0 };
  const wx = support.sandboxWx(server.baseUrl, opts);
  const user = withUser(wx);
  user.addresses.push(WX_ADDRESS);
  const clientOptions = Object.assign({ baseUrl: server.baseUrl }, WXLOCAL_CLIENT);
  const stockOf = async (skuId) => {
    const p = miniProgram(wx, clientOptions).page('pages/product/product');
    await p.onLoad({ product_id: 'tea' });
    return p.data.skus.filter((s) => s.sku_id === skuId)[0].stock;
  };
  const product = miniProgram(wx, clientOptions).page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  const sku = product.data.selected;
  const stock = await stockOf(sku);
  await product.onBuyTap();
  assert.match(user.toasts.pop() || '', /^NETWORK_ERROR/);
  assert.equal(await stockOf(sku), stock - 1, 'the order of one tin was made');
  // A newer purchase of two tins whose call never reached the server (no order), kept too.
  loadUnpaid(wx).rememberKey({ key: `k-never-${Date.now()}`, items: [{ product_id: 'tea', sku_id: sku, quantity: 2 }], address: ADDRESS });

  const again = miniProgram(wx, clientOptions).page('pages/product/product');
  await again.onLoad({ product_id: 'tea', sku_id: sku });
  again.onPlus();
  again.onPlus(); // three tins
  user.addresses.push(WX_ADDRESS);
  await again.onBuyTap();
  assert.equal(again.data.outcome, 'unpaid', `${again.data.message} ${user.toasts.join(' | ')} ${JSON.stringify(wx.log)}`);
  assert.equal(await stockOf(sku), stock - 3, 'only the order of three holds stock: the lost order of one was closed');
  const list = miniProgram(wx, clientOptions).page('pages/orders/orders');
  await list.onShow();
  assert.deepEqual(list.data.orders.map((o) => [o.statusText, o.summary.replace(/^.* × /, '× ')]), [['Awaiting payment', '× 3'], ['Closed unpaid', '× 1']]);
  assert.deepEqual(Object.keys(wx.getStorageSync('example.unpaid')), [again.data.orderNo], 'only the new order is kept');
  assert.deepEqual(user.toasts, []);
});
