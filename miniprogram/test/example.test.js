// The example mini program (example/), run as the mini-program runtime runs it: app.js and each
// page's .js loaded with a fake global `App`, `Page`, `getApp` and `wx` (requires resolved inside
// the mini program's root, as the runtime does), the object passed to `Page({...})` turned into
// a page whose `setData` merges into `data` (through JSON, as the runtime hands data to the view),
// and its handlers driven as a user's taps would. Handlers return their promise (the runtime
// ignores it), so a test can wait for what a tap started.
//
// First with a stubbed `wx.request` (no server), then against a real `wxlocal serve --seed`
// (test/support/wxlocal.js, as integration.test.js). Also: the example's files against what it
// depends on (its pages, the vendored client, the server's order path).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const support = require('./support/wxlocal.js');

const ROOT = path.join(__dirname, '..', 'example');
const REPO = path.join(__dirname, '..', '..');
const readRepo = (rel) => fs.readFileSync(path.join(REPO, rel), 'utf8');

// ---- the runtime -------------------------------------------------------------------------------

const clone = (v) => JSON.parse(JSON.stringify(v));

/**
 * A page instance as the runtime makes one from a Page() definition: its own copy of `data`
 * and of the other non-function fields, the functions as they are, and setData.
 */
function pageInstance(def, route) {
  const page = { route, data: clone(def.data || {}) };
  for (const [k, v] of Object.entries(def)) {
    if (k !== 'data') page[k] = typeof v === 'function' ? v : v === undefined ? v : clone(v);
  }
  page.setData = function (patch, cb) {
    for (const [k, v] of Object.entries(patch)) {
      assert.ok(!/[.[]/.test(k), `setData key ${k}: the example sets top-level keys only`);
      if (v !== undefined) this.data[k] = clone(v);
    }
    if (cb) cb();
  };
  return page;
}

/**
 * Loads the example mini program with `wx` as its global: app.js, then pages on demand.
 * `console` is the pages' console (errors recorded in `errors`, not printed).
 */
function miniProgram(wx) {
  const modules = new Map();
  const defs = new Map();
  const errors = [];
  let app = null;
  let loading = null; // the page file being loaded: its Page() call belongs to it
  const fakeConsole = Object.assign(Object.create(console), { error: (...a) => errors.push(a) });

  function load(file) {
    const rel = path.relative(ROOT, file);
    assert.ok(!rel.startsWith('..') && !path.isAbsolute(rel), `${file} is outside the mini program's root: the runtime cannot load it`);
    assert.ok(fs.existsSync(file), `${rel} does not exist`);
    if (modules.has(file)) return modules.get(file).exports;
    const module = { exports: {} };
    modules.set(file, module);
    const code = fs.readFileSync(file, 'utf8');
    const fn = vm.runInThisContext(`(function (require, module, exports, wx, App, Page, getApp, console) {${code}\n})`, { filename: file });
    const req = (p) => {
      assert.ok(p.startsWith('./') || p.startsWith('../'), `${rel} requires ${p}: a mini program has only its own files`);
      const target = path.resolve(path.dirname(file), p);
      return load(target.endsWith('.js') ? target : target + '.js');
    };
    const App = (def) => {
      assert.equal(app, null, 'App() is called once');
      app = def;
    };
    const Page = (def) => {
      assert.ok(loading, `Page() called by ${rel}, which is not a page`);
      defs.set(loading, def);
    };
    fn(req, module, module.exports, wx, App, Page, () => app, fakeConsole);
    return module.exports;
  }

  load(path.join(ROOT, 'app.js'));
  assert.ok(app && app.shop, 'app.js calls App({ shop })');
  return {
    app,
    errors,
    /** The page at `route` (e.g. 'pages/index/index'), a fresh instance each time. */
    page(route) {
      const file = path.join(ROOT, route + '.js');
      if (!defs.has(route)) {
        loading = route;
        try {
          load(file);
        } finally {
          loading = null;
        }
      }
      assert.ok(defs.has(route), `${route}.js calls Page()`);
      return pageInstance(defs.get(route), route);
    },
  };
}

/**
 * What the user sees and does beyond the pages: toasts shown, pages navigated to, the answers
 * to wx.showModal (`modals`, default: confirm) and wx.chooseAddress (`addresses`, default: the
 * user cancels). Added onto `wx`.
 */
function withUser(wx) {
  const user = { toasts: [], navigations: [], modals: [], modalsShown: [], addresses: [], addressAsks: 0, loading: 0 };
  Object.assign(wx, {
    showToast: (o) => user.toasts.push(o.title),
    showLoading: () => {
      user.loading += 1;
    },
    hideLoading: () => {},
    showModal: (o) => {
      user.modalsShown.push(o);
      const answer = user.modals.length ? user.modals.shift() : { confirm: true, content: '' };
      setImmediate(() => o.success(Object.assign({ cancel: !answer.confirm, errMsg: 'showModal:ok' }, answer)));
    },
    chooseAddress: (o) => {
      user.addressAsks += 1;
      const a = user.addresses.shift();
      setImmediate(() => (a ? o.success(Object.assign({ errMsg: 'chooseAddress:ok' }, a)) : o.fail({ errMsg: 'chooseAddress:fail cancel' })));
    },
    navigateTo: (o) => user.navigations.push(['navigateTo', o.url]),
    redirectTo: (o) => user.navigations.push(['redirectTo', o.url]),
    switchTab: (o) => user.navigations.push(['switchTab', o.url]),
    stopPullDownRefresh: () => {},
  });
  return user;
}

/** A tap on an element carrying `dataset` (data-* attributes, camelCased). */
const tap = (dataset) => ({ type: 'tap', currentTarget: { dataset: dataset || {} }, target: { dataset: dataset || {} } });

// ---- a stubbed server ----------------------------------------------------------------------------

/**
 * A `wx` whose wx.request answers from `routes[name](data, n)` → { statusCode, data } or
 * { fail }; `calls` records every request. wx.login, storage, the enter scene, and a cashier
 * that pays (`cashier.next`: 'pay' | 'cancel' queue, default pay).
 */
function stubWx(routes) {
  const storage = new Map();
  const calls = [];
  const cashier = { next: [], opened: [] };
  let logins = 0;
  const wx = {
    calls,
    storage,
    cashier,
    getStorageSync: (k) => (storage.has(k) ? storage.get(k) : ''),
    setStorageSync: (k, v) => storage.set(k, v),
    removeStorageSync: (k) => storage.delete(k),
    getEnterOptionsSync: () => ({ scene: 1001 }),
    login: ({ success }) => {
      logins += 1;
      setImmediate(() => success({ code: 'code' + logins, errMsg: 'login:ok' }));
    },
    request: (o) => {
      const name = o.url.replace(/^.*\/fn\//, '');
      const n = calls.filter((c) => c.name === name).length;
      calls.push({ name, data: clone(o.data) });
      const route = routes[name];
      const out = route ? route(o.data, n) : { statusCode: 404, data: { code: 'NOT_FOUND', message: `no route ${name}` } };
      setImmediate(() => (out.fail ? o.fail({ errMsg: out.fail }) : o.success({ statusCode: out.statusCode, data: out.data, header: {} })));
    },
    requestPayment: (p) => {
      cashier.opened.push(p.package);
      const what = cashier.next.length ? cashier.next.shift() : 'pay';
      setImmediate(() => (what === 'pay' ? p.success({ errMsg: 'requestPayment:ok' }) : p.fail({ errMsg: 'requestPayment:fail cancel' })));
    },
  };
  return wx;
}

const future = () => Math.floor(Date.now() / 1000) + 3600;
const loginAs = (tradingComponent) => () => ({
  statusCode: 200,
  data: { token: 'tok', expires_at: future(), openid: 'o-alice', fund_type: 0, trading_component: tradingComponent },
});
const sent = (wx, name) => wx.calls.filter((c) => c.name === name).map((c) => c.data);

const sku = (sku_id, price, stock, value) => ({ sku_id, price, market_price: price + 600, stock, attrs: value ? [{ key: 'size', value }] : [] });
const TEA = { product_id: 'tea', title: 'Longjing green tea', head_img: ['https://img/tea.jpg'], skus: [sku('tea-250g', 1990, 1000, '250 g')] };
const CUP = {
  product_id: 'cup',
  title: 'Tea cup',
  head_img: [],
  skus: [sku('cup-white', 3500, 0, 'white'), sku('cup-blue', 3900, 2, 'blue')],
};
const WX_ADDRESS = { userName: 'Alice', telNumber: '13800000000', provinceName: '浙江省', cityName: '杭州市', countyName: '西湖区', detailInfo: '1 Tea Street' };

/**
 * A stub server for buying: unifiedOrder keeps keys as the server does (the same key answers
 * the same order), queryOrder answers what the cashier did. `totalFor(items)` is the server's
 * price of a cart (the page must show it, not work one out).
 */
function shopServer(opts) {
  opts = opts || {};
  const orders = new Map(); // key → order
  const byNo = new Map();
  const state = { queryDown: false };
  const wx = stubWx({
    login: loginAs(opts.tradingComponent || 'always'),
    catalogSync: (d) =>
      d.action === 'get' && d.product_id === 'cup'
        ? { statusCode: 200, data: { product: CUP } }
        : { statusCode: 404, data: { code: 'NO_SUCH_PRODUCT', message: `no product ${d.product_id} for sale` } },
    unifiedOrder: (d) => {
      if (opts.requireAddress && !d.address) {
        return { statusCode: 400, data: { code: 'ADDRESS_REQUIRED', message: 'this order goes through WeChat\'s trading component, which needs `address`' } };
      }
      let o = orders.get(d.idempotency_key);
      if (!o) {
        o = { out_trade_no: 'T' + (orders.size + 1), status: 'PREPAID', total_fee: opts.totalFor(d.items), freight: 0, refunded_fee: 0, items: d.items.map((i) => Object.assign({ title: 'Tea cup', unit_price: 3900 }, i)), created_at: Date.now() };
        orders.set(d.idempotency_key, o);
        byNo.set(o.out_trade_no, o);
      }
      return {
        statusCode: 200,
        data: { out_trade_no: o.out_trade_no, total_fee: o.total_fee, freight: 0, status: o.status, fund_type: 0, payment: { timeStamp: '1', nonceStr: 'n', package: 'prepay_id=' + o.out_trade_no, signType: 'MD5', paySign: 'S' } },
      };
    },
    queryOrder: (d) => {
      if (state.queryDown) return { fail: 'request:fail timeout' };
      const o = byNo.get(d.out_trade_no);
      if (!o) return { statusCode: 404, data: { code: 'ORDER_NOT_FOUND', message: `no order ${d.out_trade_no}` } };
      return { statusCode: 200, data: { order: o } };
    },
    aftersaleSync: (d) => (d.action === 'list' ? { statusCode: 200, data: { aftersales: [] } } : { statusCode: 400, data: { code: 'UNEXPECTED', message: d.action } }),
  });
  const pay = wx.requestPayment;
  wx.requestPayment = (p) => {
    const no = p.package.replace('prepay_id=', '');
    const what = wx.cashier.next.length ? wx.cashier.next[0] : 'pay';
    if (what === 'pay') byNo.get(no).status = 'PAID';
    pay(p);
  };
  return { wx, orders, byNo, state };
}

const FAST = { payPoll: { intervalMs: 5, timeoutMs: 200, failTimeoutMs: 20 }, orderRetry: { attempts: 1, delayMs: 1, maxDelayMs: 1, budgetMs: 100 } };

/**
 * The example, its app's client made again from the same utils/config.js with the pay polling
 * and order retries shortened (the stub server answers at once; the defaults wait seconds).
 */
function exampleWith(wx) {
  const mp = miniProgram(wx);
  const { createClient } = require('../example/utils/wxshop.js');
  const config = require('../example/utils/config.js');
  mp.app.shop = createClient(Object.assign({}, config, FAST, { wx }));
  return mp;
}

// ---- the example's files ---------------------------------------------------------------------------

const appJson = () => JSON.parse(fs.readFileSync(path.join(ROOT, 'app.json'), 'utf8'));

test('every page app.json lists has its .js, .json, .wxml and .wxss, and every .js calls Page()', () => {
  const { pages } = appJson();
  assert.ok(pages.length >= 4, pages.join());
  for (const route of pages) {
    for (const ext of ['js', 'json', 'wxml', 'wxss']) assert.ok(fs.existsSync(path.join(ROOT, `${route}.${ext}`)), `${route}.${ext} is missing`);
    JSON.parse(fs.readFileSync(path.join(ROOT, `${route}.json`), 'utf8'));
  }
  const mp = miniProgram(withUserWx());
  for (const route of pages) assert.equal(typeof mp.page(route).setData, 'function');
  for (const tab of appJson().tabBar.list) assert.ok(pages.includes(tab.pagePath), `tab ${tab.pagePath} is not a page`);
});

/** A wx good enough to load the pages (no requests). */
function withUserWx() {
  const wx = stubWx({});
  withUser(wx);
  return wx;
}

test('every handler a page\'s .wxml binds exists on its Page()', () => {
  const mp = miniProgram(withUserWx());
  for (const route of appJson().pages) {
    const wxml = fs.readFileSync(path.join(ROOT, `${route}.wxml`), 'utf8');
    const page = mp.page(route);
    const bound = [...wxml.matchAll(/\b(?:bind|catch):?[a-z]+="([^"]+)"/g)].map((m) => m[1]);
    assert.ok(bound.length > 0, `${route}.wxml binds nothing`);
    for (const h of bound) assert.equal(typeof page[h], 'function', `${route}.wxml binds ${h}, which the page does not define`);
  }
});

test('example/utils/wxshop.js is miniprogram/wxshop.js byte for byte (refresh: npm run example:sync)', () => {
  const copy = fs.readFileSync(path.join(ROOT, 'utils', 'wxshop.js'));
  const source = fs.readFileSync(path.join(__dirname, '..', 'wxshop.js'));
  assert.ok(copy.equals(source), 'example/utils/wxshop.js differs from wxshop.js: run `npm run example:sync` in miniprogram/');
  const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8'));
  assert.equal(pkg.scripts['example:sync'], 'cp wxshop.js example/utils/wxshop.js');
});

test('the example runs without enhanced compile: no async/await, and it points at a local wxlocal', () => {
  const files = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.js')) files.push(p);
    }
  };
  walk(ROOT);
  assert.ok(files.length >= 8, files.join());
  for (const f of files) {
    const src = fs.readFileSync(f, 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
    assert.doesNotMatch(src, /\basync\b|\bawait\b/, `${path.relative(ROOT, f)} uses async/await`);
  }
  const project = JSON.parse(fs.readFileSync(path.join(ROOT, 'project.config.json'), 'utf8'));
  assert.equal(project.setting.urlCheck, false, 'wxlocal is plain http on a local address: domain checks off');
  assert.match(project.appid, /^touristappid$/);
  assert.equal(require('../example/utils/config.js').baseUrl, 'http://127.0.0.1:8787');
  assert.ok(fs.existsSync(path.join(ROOT, appJson().sitemapLocation)));
});

test('the order page is where the server sends WeChat\'s order centre, and reads the parameter the server appends', () => {
  const config = readRepo('shared/src/config.rs');
  const def = /order_path:\s*get\("WX_ORDER_PATH"\)\.unwrap_or_else\(\|\| "([^"]+)"\.into\(\)\)/.exec(config);
  assert.ok(def, 'WX_ORDER_PATH default not found in shared/src/config.rs');
  assert.ok(appJson().pages.includes(def[1]), `app.json has no page ${def[1]} (WX_ORDER_PATH's default)`);
  const appended = /fn order_path\([^)]*\) -> String \{\s*format!\("\{\}\?([a-z_]+)=\{no\}", app\.config\.order_path\)/.exec(readRepo('shared/src/handlers/shop_orders.rs'));
  assert.ok(appended, 'order_path not found in shared/src/handlers/shop_orders.rs');
  const page = fs.readFileSync(path.join(ROOT, def[1] + '.js'), 'utf8');
  assert.ok(page.includes(`queryValue(options, '${appended[1]}')`), `${def[1]}.js does not read ${appended[1]} from its query`);
});

test('the example names every order and after-sale status the server answers', () => {
  const view = require('../example/utils/view.js');
  const order = readRepo('shared/src/domain/order.rs');
  const all = /pub const ALL: \[OrderStatus; \d+\] = \[([^\]]*)\]/.exec(order);
  assert.ok(all, 'OrderStatus::ALL not found');
  const statuses = [...all[1].matchAll(/OrderStatus::([A-Za-z]+)/g)].map((m) => m[1].replace(/([a-z])([A-Z])/g, '$1_$2').toUpperCase());
  assert.deepEqual(Object.keys(view.ORDER_STATUS_TEXT).sort(), statuses.sort());
  const aftersale = [...readRepo('shared/src/domain/aftersale.rs').matchAll(/AfterSaleStatus::\w+ => "([A-Z_]+)"/g)].map((m) => m[1]);
  assert.deepEqual(Object.keys(view.AFTERSALE_STATUS_TEXT).sort(), [...new Set(aftersale)].sort());
});

test("the order page names a refund the shop made on its own as the shop's", () => {
  const view = require('../example/utils/view.js');
  const shop = view.aftersaleView({ aftersale_id: 'ASM1', status: 'REFUNDING', kind: 'REFUND_ONLY', by: 'MERCHANT', amount: 500, reason: 'freight given back' });
  assert.deepEqual([shop.kindText, shop.amountText, shop.reason], ['Refund from the shop', '5.00', 'freight given back']);
  const user = view.aftersaleView({ aftersale_id: 'AS1', status: 'REQUESTED', kind: 'REFUND_ONLY', by: 'USER', amount: 1990 });
  assert.equal(user.kindText, 'Refund');
});

// ---- pages against a stubbed server -------------------------------------------------------------

test('index: lists the shop a page at a time, prices in yuan, sold-out SKUs not pickable', async () => {
  const wx = stubWx({
    login: loginAs('always'),
    catalogSync: (d) =>
      !d.cursor
        ? { statusCode: 200, data: { products: [TEA], next: 'c1' } }
        : d.cursor === 'c1'
          ? { statusCode: 200, data: { products: [], next: 'c2' } }
          : { statusCode: 200, data: { products: [CUP], next: null } },
  });
  const user = withUser(wx);
  const index = miniProgram(wx).page('pages/index/index');
  await index.onLoad({});
  assert.deepEqual(index.data.products.map((p) => [p.title, p.priceText]), [['Longjing green tea', '19.90']]);
  assert.equal(index.data.next, 'c1');
  assert.equal(index.data.products[0].image, 'https://img/tea.jpg');

  await index.onReachBottom();
  // The empty page in between is followed at once: it gave nothing to scroll to.
  assert.deepEqual(sent(wx, 'catalogSync'), [
    { action: 'products', limit: 10 },
    { action: 'products', limit: 10, cursor: 'c1' },
    { action: 'products', limit: 10, cursor: 'c2' },
  ]);
  assert.equal(index.data.next, null);
  const cup = index.data.products[1];
  assert.deepEqual(
    cup.skus.map((s) => [s.label, s.priceText, s.soldOut]),
    [['white', '35.00', true], ['blue', '39.00', false]]
  );
  assert.equal(cup.priceText, '39.00', 'the lowest price on sale, not the sold-out one');
  await index.onReachBottom();
  assert.equal(sent(wx, 'catalogSync').length, 3, 'nothing more to load on the last page');

  index.onSkuTap(tap({ productId: 'cup', skuId: 'cup-white', soldOut: true }));
  assert.deepEqual(user.navigations, [], 'a sold-out SKU opens nothing');
  index.onSkuTap(tap({ productId: 'cup', skuId: 'cup-blue', soldOut: false }));
  index.onProductTap(tap({ productId: 'tea' }));
  assert.deepEqual(user.navigations, [
    ['navigateTo', '/pages/product/product?product_id=cup&sku_id=cup-blue'],
    ['navigateTo', '/pages/product/product?product_id=tea'],
  ]);
  assert.deepEqual(user.toasts, []);
});

test('product: buys the SKU and quantity picked (no price sent), within stock, and shows the server\'s total', async () => {
  // The server's price of the cart is its own (here 10 % off): the page must show that.
  const srv = shopServer({ totalFor: (items) => Math.round(items[0].quantity * 3900 * 0.9) });
  const user = withUser(srv.wx);
  user.addresses.push(WX_ADDRESS);
  const mp = exampleWith(srv.wx);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'cup' });
  assert.equal(product.data.product.title, 'Tea cup');
  assert.equal(product.data.selected, 'cup-blue', 'the sold-out SKU is not picked');
  product.onSkuTap(tap({ skuId: 'cup-white' }));
  assert.equal(product.data.selected, 'cup-blue', 'a sold-out SKU cannot be picked');
  product.onPlus();
  product.onPlus();
  product.onPlus();
  assert.equal(product.data.quantity, 2, 'no more than the stock (2)');

  await product.onBuyTap();
  const [order] = sent(srv.wx, 'unifiedOrder');
  assert.deepEqual(order.items, [{ product_id: 'cup', sku_id: 'cup-blue', quantity: 2 }]);
  assert.ok(!JSON.stringify(order).includes('price'), `no price is sent: ${JSON.stringify(order)}`);
  assert.deepEqual(order.address, { receiver_name: 'Alice', detailed_address: '浙江省杭州市西湖区1 Tea Street', tel_number: '13800000000', province: '浙江省', city: '杭州市', town: '西湖区' });
  assert.equal(user.addressAsks, 1, 'the shop makes trading-component orders: an address is asked for');
  assert.equal(product.data.outcome, 'paid');
  assert.match(product.data.message, /^Paid ¥70\.20\. Order T1\./, product.data.message);
  assert.doesNotMatch(product.data.message, /78\.00/, 'not price × quantity worked out on the phone');
  assert.equal(product.data.busy, false);
  assert.deepEqual(srv.wx.storage.get('example.unpaid') || {}, {}, 'nothing unpaid kept');

  // Another purchase of the same is a new one: a new key.
  await product.onBuyTap();
  const keys = sent(srv.wx, 'unifiedOrder').map((d) => d.idempotency_key);
  assert.equal(new Set(keys).size, 2, 'a paid purchase hands back no key: the next tap buys again');
  assert.equal(user.addressAsks, 1, 'the address picked once is kept');
  product.onOrderTap();
  assert.deepEqual(user.navigations.pop(), ['navigateTo', '/pages/order/detail?out_trade_no=T2']);
});

test('product: a cancelled cashier offers Pay, which pays that order (same key); the order page pays the same way', async () => {
  const srv = shopServer({ totalFor: () => 3900 });
  const user = withUser(srv.wx);
  user.addresses.push(WX_ADDRESS);
  const mp = exampleWith(srv.wx);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'cup', sku_id: 'cup-blue' });
  srv.wx.cashier.next.push('cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid');
  assert.match(product.data.message, /Payment cancelled\. Tap Pay to pay order T1\./);
  assert.equal(srv.byNo.get('T1').status, 'PREPAID');
  const kept = srv.wx.storage.get('example.unpaid');
  assert.deepEqual(Object.keys(kept), ['T1'], 'the unpaid order\'s key is kept for its page');

  // The order page, opened on T1 (as "View order" does), pays it with that key.
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: 'T1' });
  assert.equal(detail.data.order.statusText, 'Awaiting payment');
  assert.equal(detail.data.canPay, true);
  await detail.onPayTap();
  const keys = sent(srv.wx, 'unifiedOrder').map((d) => d.idempotency_key);
  assert.deepEqual(keys, [keys[0], keys[0]], 'the same key: the same order, not a second');
  assert.equal(srv.orders.size, 1);
  assert.ok(user.toasts.includes('Paid'), user.toasts.join(' | '));
  assert.equal(detail.data.order.status, 'PAID');
  assert.equal(detail.data.canPay, false);
  assert.deepEqual(srv.wx.storage.get('example.unpaid'), {}, 'a paid order is forgotten');
  assert.deepEqual(user.toasts, ['Paid']);
});

test('product: when the server cannot say whether it was paid, payment is not offered again', async () => {
  const srv = shopServer({ totalFor: () => 3900 });
  const user = withUser(srv.wx);
  user.addresses.push(WX_ADDRESS);
  const mp = exampleWith(srv.wx);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'cup' });
  srv.state.queryDown = true;
  srv.wx.cashier.next.push('cancel');
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unknown');
  assert.match(product.data.message, /could not confirm the payment yet \(NETWORK_ERROR\)/);
  assert.equal(product.data.orderNo, 'T1', 'the order can be opened');
  await product.onBuyTap();
  assert.equal(sent(srv.wx, 'unifiedOrder').length, 1, 'no second payment attempt from this page');
  assert.equal(srv.wx.cashier.opened.length, 1);
});

test('product: a shop without the trading component asks for no address and sends none', async () => {
  const srv = shopServer({ totalFor: () => 3900, tradingComponent: 'off' });
  const user = withUser(srv.wx);
  const product = exampleWith(srv.wx).page('pages/product/product');
  await product.onLoad({ product_id: 'cup' });
  await product.onBuyTap();
  assert.equal(user.addressAsks, 0);
  assert.equal(sent(srv.wx, 'unifiedOrder')[0].address, undefined);
  assert.equal(product.data.outcome, 'paid');
});

test('product: when the server answers ADDRESS_REQUIRED after all, the next tap asks for an address and buys', async () => {
  const srv = shopServer({ totalFor: () => 3900, tradingComponent: 'scene', requireAddress: true });
  const user = withUser(srv.wx);
  const product = exampleWith(srv.wx).page('pages/product/product');
  await product.onLoad({ product_id: 'cup' });
  // 'scene': the server may need one; this user picks none at first.
  await product.onBuyTap();
  assert.equal(user.toasts.pop(), 'NO_ADDRESS: Choose a delivery address to buy.');
  // A shop that said `off` (stale session) but answers ADDRESS_REQUIRED: asked on the next tap.
  srv.wx.storage.get('wxshop.session').trading_component = 'off';
  await product.onBuyTap();
  assert.match(user.toasts.pop(), /^ADDRESS_REQUIRED: /);
  user.addresses.push(WX_ADDRESS);
  await product.onBuyTap();
  assert.equal(user.addressAsks, 2);
  const [refused, bought] = sent(srv.wx, 'unifiedOrder');
  assert.equal(refused.address, undefined);
  assert.equal(bought.address.receiver_name, 'Alice');
  assert.equal(product.data.outcome, 'paid');
});

test('an error shows its code and message in a toast; a bug shows a plain sentence, never a stack', async () => {
  const srv = shopServer({ totalFor: () => 3900 });
  const user = withUser(srv.wx);
  const mp = exampleWith(srv.wx);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'gone' });
  assert.deepEqual(user.toasts, ['NO_SUCH_PRODUCT: no product gone for sale']);
  assert.equal(product.data.product, null);
  assert.equal(product.data.loading, false);

  // Buying needs an address here, and the user cancels picking one.
  await product.onLoad({ product_id: 'cup' });
  await product.onBuyTap();
  assert.equal(user.toasts[1], 'NO_ADDRESS: Choose a delivery address to buy.');
  assert.equal(sent(srv.wx, 'unifiedOrder').length, 0);

  // A product the page cannot show (a price that is not whole fen: a server bug).
  const bad = stubWx({ login: loginAs('always'), catalogSync: () => ({ statusCode: 200, data: { products: [Object.assign({}, TEA, { skus: [sku('x', 19.9, 1)] })], next: null } }) });
  const badUser = withUser(bad);
  const badApp = miniProgram(bad);
  await badApp.page('pages/index/index').onLoad({});
  assert.deepEqual(badUser.toasts, ['Something went wrong. Please try again.']);
  assert.equal(badApp.errors.length, 1, 'the bug goes to the console');
  assert.ok(badApp.errors[0].some((x) => x instanceof TypeError));
});

test('order page: reads the order WeChat names in its query; closes an unpaid one, confirms a shipped one, applies for a refund', async () => {
  const orders = {
    U1: { out_trade_no: 'U1', status: 'PREPAID', total_fee: 1990, freight: 0, refunded_fee: 0, items: [{ product_id: 'tea', sku_id: 'tea-250g', title: 'Tea', unit_price: 1990, quantity: 1 }], created_at: 0 },
    S1: { out_trade_no: 'S1', status: 'SHIPPED', total_fee: 5490, freight: 0, refunded_fee: 0, delivery: { delivery_id: 'SF', waybill_id: 'SF123' }, items: [{ product_id: 'tea', sku_id: 'tea-250g', title: 'Tea', unit_price: 1990, quantity: 1 }, { product_id: 'cup', sku_id: 'cup-blue', title: 'Cup', unit_price: 3500, quantity: 1 }], created_at: 0 },
  };
  const aftersales = [];
  const wx = stubWx({
    login: loginAs('always'),
    queryOrder: (d) => {
      const o = orders[d.out_trade_no];
      if (!o) return { statusCode: 404, data: { code: 'ORDER_NOT_FOUND', message: 'no such order' } };
      if (d.action === 'close') o.status = 'CLOSED';
      if (d.action === 'confirm') o.status = 'RECEIVED';
      return { statusCode: 200, data: { order: o } };
    },
    aftersaleSync: (d) => {
      if (d.action === 'list') return { statusCode: 200, data: { aftersales: aftersales.filter((a) => a.out_trade_no === d.out_trade_no) } };
      const a = { aftersale_id: 'A' + (aftersales.length + 1), out_trade_no: d.out_trade_no, status: 'REQUESTED', kind: 'REFUND_ONLY', amount: 3500, reason: d.reason };
      aftersales.push(a);
      return { statusCode: 200, data: { aftersale: a } };
    },
  });
  const user = withUser(wx);
  const mp = miniProgram(wx);

  // WeChat's order centre opens WX_ORDER_PATH with ?out_trade_no=…
  const unpaidPage = mp.page('pages/order/detail');
  await unpaidPage.onLoad({ out_trade_no: 'U1' });
  assert.deepEqual(sent(wx, 'queryOrder')[0], { out_trade_no: 'U1' });
  assert.equal(unpaidPage.data.order.statusText, 'Awaiting payment');
  assert.equal(unpaidPage.data.order.totalText, '19.90');
  assert.equal(unpaidPage.data.canPay, false, 'this phone kept no key for it: it cannot pay it');
  user.modals.push({ confirm: false });
  await unpaidPage.onCloseTap();
  assert.equal(orders.U1.status, 'PREPAID', 'not closed when the user says no');
  await unpaidPage.onCloseTap();
  assert.deepEqual(sent(wx, 'queryOrder').pop(), { out_trade_no: 'U1', action: 'close' });
  assert.equal(unpaidPage.data.order.statusText, 'Closed unpaid');
  assert.equal(unpaidPage.data.order.unpaid, false);

  const shipped = mp.page('pages/order/detail');
  await shipped.onLoad({ out_trade_no: 'S1' });
  assert.deepEqual(shipped.data.order.delivery, { delivery_id: 'SF', waybill_id: 'SF123' });
  assert.equal(shipped.data.order.canConfirm, true);
  await shipped.onConfirmTap();
  assert.equal(shipped.data.order.statusText, 'Received');
  assert.equal(shipped.data.order.canConfirm, false);

  user.modals.push({ confirm: true, content: ' cup arrived chipped ' });
  await shipped.onRefundTap(tap({ index: 1 }));
  const apply = sent(wx, 'aftersaleSync').find((d) => d.action === 'apply');
  assert.equal(apply.out_trade_no, 'S1');
  assert.deepEqual([apply.type, apply.product_id, apply.sku_id, apply.reason], ['refund', 'cup', 'cup-blue', 'cup arrived chipped'], 'an order of several items: the line is named');
  assert.ok(apply.idempotency_key);
  assert.deepEqual(
    shipped.data.aftersales.map((a) => [a.kindText, a.amountText, a.statusText, a.reason]),
    [['Refund', '35.00', 'Requested', 'cup arrived chipped']]
  );

  const missing = mp.page('pages/order/detail');
  await missing.onLoad({ out_trade_no: 'NOPE' });
  assert.equal(user.toasts.pop(), 'ORDER_NOT_FOUND: no such order');
  assert.equal(missing.data.order, null);
});

test('orders: the user\'s orders a page at a time, newest first as the server gives them', async () => {
  const all = ['T3', 'T2', 'T1'].map((no, i) => ({ out_trade_no: no, status: ['PAID', 'CLOSED', 'REFUNDED'][i], total_fee: 1990, freight: 0, refunded_fee: i === 2 ? 1990 : 0, items: [{ product_id: 'tea', sku_id: 'tea-250g', title: 'Tea', unit_price: 1990, quantity: 1 }], created_at: 0 }));
  const wx = stubWx({
    login: loginAs('always'),
    queryOrder: (d) => (d.cursor ? { statusCode: 200, data: { orders: all.slice(2), next: null } } : { statusCode: 200, data: { orders: all.slice(0, 2), next: 'o2' } }),
  });
  const user = withUser(wx);
  const page = miniProgram(wx).page('pages/orders/orders');
  await page.onShow();
  assert.deepEqual(page.data.orders.map((o) => [o.out_trade_no, o.statusText, o.totalText]), [['T3', 'Paid, to be shipped', '19.90'], ['T2', 'Closed unpaid', '19.90']]);
  await page.onReachBottom();
  assert.deepEqual(page.data.orders.map((o) => o.out_trade_no), ['T3', 'T2', 'T1']);
  assert.equal(page.data.orders[2].refundedText, '19.90');
  assert.deepEqual(sent(wx, 'queryOrder'), [{ limit: 10 }, { limit: 10, cursor: 'o2' }]);
  page.onOrderTap(tap({ outTradeNo: 'T1' }));
  assert.deepEqual(user.navigations, [['navigateTo', '/pages/order/detail?out_trade_no=T1']]);
  // Shown again (back from an order): read again from the first page.
  await page.onShow();
  assert.deepEqual(page.data.orders.map((o) => o.out_trade_no), ['T3', 'T2']);
});

// ---- pages against wxlocal ---------------------------------------------------------------------------

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

function requireServer() {
  if (startError) throw startError;
  assert.ok(server, 'wxlocal is not running');
}

/**
 * The example against wxlocal, as user `name` in the sandbox. `opts.cashier` ('pay' unless
 * given) is what the user does in the cashier, read at each payment.
 */
function liveExample(name, opts) {
  opts = opts || {};
  if (!opts.cashier) opts.cashier = 'pay';
  const wx = support.sandboxWx(server.baseUrl, Object.assign(opts, { signing: server.signing, user: name }));
  const user = withUser(wx);
  const mp = miniProgram(wx);
  const { createClient } = require('../example/utils/wxshop.js');
  mp.app.shop = createClient(Object.assign({}, require('../example/utils/config.js'), { baseUrl: server.baseUrl, wx, payPoll: { intervalMs: 200, timeoutMs: 10000, failTimeoutMs: 1000 } }));
  return { wx, user, mp };
}

async function admin(fn, body) {
  const r = await support.postJson(`${server.baseUrl}/admin/${fn}`, body, { authorization: `Bearer ${process.env.ADMIN_TOKEN || 'local-admin-token'}` });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body;
}

const LIVE_TIMEOUT_MS = 20000;

test('against wxlocal: the seeded shop listed, the tea bought and paid, in my orders and on its page, a refund applied for', { timeout: LIVE_TIMEOUT_MS }, async () => {
  requireServer();
  const { wx, user, mp } = liveExample('example-' + Date.now());
  user.addresses.push(WX_ADDRESS);

  const index = mp.page('pages/index/index');
  await index.onLoad({});
  assert.deepEqual(user.toasts, []);
  const tea = index.data.products.find((p) => p.product_id === 'tea');
  assert.ok(tea, `the seeded tea is listed: ${JSON.stringify(index.data.products)}`);
  assert.deepEqual([tea.title, tea.priceText, tea.skus.map((s) => s.sku_id)], ['Longjing green tea 250 g', '19.90', ['tea-250g']]);
  index.onProductTap(tap({ productId: 'tea' }));
  const [, url] = user.navigations.pop();

  const product = mp.page('pages/product/product');
  await product.onLoad(Object.fromEntries(new URL(url, 'http://x').searchParams));
  assert.equal(product.data.selected, 'tea-250g');
  product.onPlus();
  await product.onBuyTap();
  assert.deepEqual(user.toasts, []);
  assert.equal(product.data.outcome, 'paid', product.data.message);
  assert.match(product.data.message, /^Paid ¥39\.80\. Order \S+\.$/);
  const no = product.data.orderNo;

  const orders = mp.page('pages/orders/orders');
  await orders.onShow();
  assert.deepEqual(orders.data.orders.map((o) => [o.out_trade_no, o.totalText, o.summary]), [[no, '39.80', 'Longjing green tea 250 g × 2']]);

  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: no });
  assert.equal(detail.data.order.statusText, 'Paid, to be shipped');
  assert.equal(detail.data.order.canRefund, true);
  user.modals.push({ confirm: true, content: 'changed my mind' });
  await detail.onRefundTap(tap({ index: 0 }));
  assert.deepEqual(user.toasts, ['Refund requested']);
  assert.deepEqual(detail.data.aftersales.map((a) => [a.kindText, a.amountText, a.statusText, a.reason]), [['Refund', '39.80', 'Requested', 'changed my mind']]);
  assert.ok(wx.log.every((x) => x.status === 200), JSON.stringify(wx.log));
});

test('against wxlocal: cancelled in the cashier, paid from the order page (the same order), shipped, receipt confirmed', { timeout: LIVE_TIMEOUT_MS }, async () => {
  requireServer();
  const cashier = { cashier: 'cancel' };
  const { user, mp } = liveExample('example-cancel-' + Date.now(), cashier);
  user.addresses.push(WX_ADDRESS);
  const product = mp.page('pages/product/product');
  await product.onLoad({ product_id: 'tea' });
  await product.onBuyTap();
  assert.equal(product.data.outcome, 'unpaid', product.data.message);
  const no = product.data.orderNo;

  cashier.cashier = 'pay';
  const detail = mp.page('pages/order/detail');
  await detail.onLoad({ out_trade_no: no });
  assert.equal(detail.data.canPay, true);
  await detail.onPayTap();
  assert.deepEqual(user.navigations, [], 'the same order was paid: no other order to go to');
  assert.ok(user.toasts.includes('Paid'), user.toasts.join(' | '));
  assert.equal(detail.data.order.out_trade_no, no);
  assert.equal(detail.data.order.statusText, 'Paid, to be shipped');

  await admin('orderSync', { action: 'ship', out_trade_no: no, delivery_id: 'OTHERS', waybill_id: 'W-EXAMPLE-1' });
  await detail.onPullDownRefresh();
  assert.deepEqual(detail.data.order.delivery, { delivery_id: 'OTHERS', waybill_id: 'W-EXAMPLE-1' });
  await detail.onConfirmTap();
  assert.equal(detail.data.order.statusText, 'Received');
});
