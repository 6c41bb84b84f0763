/**
 * Purchases not paid yet, kept on the phone: the idempotency key `shop.buy` handed back, with
 * the items and address it was sent for, by order number — or, when buy failed before any
 * order number was known (no answer, a timeout: the server may have made the order), by the
 * key alone (`PENDING` + key). Buying again with the same key, items and address pays that
 * order (the server answers the key with it, or makes it if it never did) instead of making a
 * second one; the order page uses this for its Pay button, the product page to offer Pay again
 * after the mini program was closed and reopened, and for every Buy of the same cart and
 * address. A key is kept under what identifies its purchase — the order number once known, the
 * cart and address until then — never under another order's number (an order buy closed to
 * replace it is forgotten, the new key kept for itself, with that order's number as
 * `replaces`, so the closed order's page can point to the new one; once the new order's number
 * is known the link is kept apart too, in LINKS_KEY, so it outlives the new order being paid).
 *
 * Kept in wx.setStorageSync, so it outlives the mini program being killed and reopened (and
 * the order page being opened from WeChat's order centre). A paid or closed order is
 * forgotten as soon as a page sees it so, and a key as soon as the server answers for it (paid,
 * closed, refused as spent); one older than MAX_AGE_MS is forgotten unread (its order has
 * expired: the server's ORDER_TTL_SECS is at most 7200 s); at most MAX_ENTRIES are kept, the
 * oldest dropped first, so the storage stays small whatever the user leaves unpaid.
 */
'use strict';

const STORAGE_KEY = 'example.unpaid';
// Which order replaced which (closed order number → the new order's number), kept apart from
// the unpaid purchases: a purchase is forgotten once paid, the link is not (my orders and the
// closed order's page still point to the new order). At most MAX_LINKS, the newest.
const LINKS_KEY = 'example.replaced';
const MAX_LINKS = 20;
const MAX_AGE_MS = 2 * 60 * 60 * 1000;
const MAX_ENTRIES = 20;
// The id of an entry whose order number is not known yet: this prefix and its key. An order
// number never starts with it.
const PENDING = '?';

function isPending(id) {
  return id.charAt(0) === PENDING;
}

/** The entry `id` of `map` as pages read it: { out_trade_no (null while not known), key, items, address }. */
function entry(map, id) {
  return Object.assign({}, map[id], { out_trade_no: isPending(id) ? null : id });
}

/** The newest of `ids` in `map`, or null. */
function newest(map, ids) {
  ids.sort((a, b) => (map[b].at || 0) - (map[a].at || 0));
  return ids.length ? entry(map, ids[0]) : null;
}

function sameWhat(p, items, address) {
  return JSON.stringify({ items: p.items, address: p.address || null }) === JSON.stringify({ items: items, address: address || null });
}

/** A time later than every entry kept, so "newest" is well defined within the same millisecond. */
function nextAt(map) {
  return Object.keys(map).reduce((t, id) => Math.max(t, (map[id].at || 0) + 1), Date.now());
}

/** Drops from `map` every entry of key `key`. */
function dropKey(map, key) {
  Object.keys(map).forEach((id) => {
    if (map[id].key === key) delete map[id];
  });
}

/** Kept entries still worth keeping: younger than MAX_AGE_MS, at most MAX_ENTRIES (newest). */
function pruned(map, now) {
  const live = Object.keys(map).filter((no) => {
    const p = map[no];
    if (!p || typeof p.key !== 'string') return false;
    // An entry without `at` (kept by an older version of this page) is kept, oldest first.
    return typeof p.at !== 'number' || now - p.at < MAX_AGE_MS;
  });
  live.sort((a, b) => (map[b].at || 0) - (map[a].at || 0));
  const out = {};
  live.slice(0, MAX_ENTRIES).forEach((no) => (out[no] = map[no]));
  return out;
}

function all() {
  let v = null;
  try {
    v = wx.getStorageSync(STORAGE_KEY);
  } catch (e) {
    v = null;
  }
  return v && typeof v === 'object' ? pruned(v, Date.now()) : {};
}

function save(map) {
  try {
    wx.setStorageSync(STORAGE_KEY, pruned(map, Date.now()));
  } catch (e) {
    // Storage full or unavailable: the order can still be closed, only not paid from its page.
  }
}

/** { key, items, address } of order `outTradeNo`, or null. */
function find(outTradeNo) {
  if (typeof outTradeNo !== 'string' || !outTradeNo || isPending(outTradeNo)) return null;
  const p = all()[outTradeNo];
  return p || null;
}

/**
 * The newest purchase kept of product `productId` (one item line of it, as the product page
 * buys): { out_trade_no, key, items, address }, or null.
 */
function latestFor(productId) {
  const map = all();
  const mine = Object.keys(map).filter((n) => {
    const items = map[n].items;
    // A key with no order number yet is not offered as Pay (there is no order to read): the
    // next Buy of its cart and address sends it (findPurchase).
    return !isPending(n) && Array.isArray(items) && items.length === 1 && items[0] && items[0].product_id === productId;
  });
  return newest(map, mine);
}

/**
 * The newest purchase kept for exactly these `items` and `address` (as the product page sends
 * them), its order number known or not: { out_trade_no (or null), key, items, address }, or null.
 */
function findPurchase(items, address) {
  const map = all();
  return newest(map, Object.keys(map).filter((n) => sameWhat(map[n], items, address)));
}

/** The lines of `items` as a purchase names them (product, SKU, quantity), in a fixed order. */
function linesOf(items) {
  return JSON.stringify(
    (Array.isArray(items) ? items : [])
      .map((i) => [i && i.product_id, i && i.sku_id, i && i.quantity])
      .sort((a, b) => (String(a[0]) + '/' + a[1] < String(b[0]) + '/' + b[1] ? -1 : 1))
  );
}

/**
 * The newest key kept with no order number (its call got no answer) for the lines of an order
 * (`items` as queryOrder gives them) → { out_trade_no: null, key, items, address }, or null.
 * The page of an unpaid order this phone holds no number for (the order made to replace one,
 * reached from my orders before its answer came) pays with it: the server answers the key with
 * its order, which is most likely this one; Buy again would close the very order the user wants.
 */
function findUnanswered(items) {
  const map = all();
  const lines = linesOf(items);
  return newest(map, Object.keys(map).filter((n) => isPending(n) && linesOf(map[n].items) === lines));
}

/** The products of `items` (an array of lines), sorted, as one string. */
function productsOf(items) {
  return JSON.stringify(
    (Array.isArray(items) ? items : [])
      .map((i) => (i && i.product_id) || '')
      .filter((v, i, all) => all.indexOf(v) === i)
      .sort()
  );
}

/**
 * The purchases kept of the same products as `items` (the same product page) but not exactly
 * these `items` and `address`: another SKU or quantity, or another address. Newest first, each
 * { out_trade_no (or null), key, items, address }. The product page closes their orders before
 * it buys the changed cart, so an order the user changed their mind about does not hold its
 * stock until it expires. A cart of other products is another purchase, and is not listed.
 */
function findChanged(items, address) {
  const map = all();
  const products = productsOf(items);
  const ids = Object.keys(map).filter((n) => productsOf(map[n].items) === products && !sameWhat(map[n], items, address));
  ids.sort((a, b) => (map[b].at || 0) - (map[a].at || 0));
  return ids.map((id) => entry(map, id));
}

/**
 * The purchase kept as the replacement of order `outTradeNo`: buy closed that order to make a
 * new one (the user came back through another entry) → { out_trade_no (null while the new
 * order's answer has not come), key, items, address }, or null. The order page of the closed
 * order points to it: Pay the new order (its key, so the same order) or open it.
 */
function replacementOf(outTradeNo) {
  if (typeof outTradeNo !== 'string' || !outTradeNo) return null;
  const map = all();
  return newest(map, Object.keys(map).filter((n) => map[n].replaces === outTradeNo && n !== outTradeNo));
}

function links() {
  let v = null;
  try {
    v = wx.getStorageSync(LINKS_KEY);
  } catch (e) {
    v = null;
  }
  return v && typeof v === 'object' ? v : {};
}

/** Keeps that order `closedNo` was replaced by order `newNo`. */
function link(closedNo, newNo) {
  if (!closedNo || !newNo || closedNo === newNo) return;
  const map = links();
  if (map[closedNo] && map[closedNo].no === newNo) return;
  map[closedNo] = { no: newNo, at: Date.now() };
  const ids = Object.keys(map).sort((a, b) => map[b].at - map[a].at);
  const out = {};
  ids.slice(0, MAX_LINKS).forEach((id) => (out[id] = map[id]));
  try {
    wx.setStorageSync(LINKS_KEY, out);
  } catch (e) {
    // Storage full: the closed order's page still says it was closed.
  }
}

/**
 * What replaced order `outTradeNo` (closed by buy to make a new one), as far as this phone
 * knows: { no } (the new order's number), { no: '' } while the new order's answer has not come
 * (its key kept: replacementOf), or null. Read by the closed order's page and my orders; it
 * stays known after the new order is paid (and its purchase forgotten).
 */
function replacedWith(outTradeNo) {
  const next = replacementOf(outTradeNo);
  if (next) return { no: next.out_trade_no || '' };
  const l = typeof outTradeNo === 'string' ? links()[outTradeNo] : null;
  return l && typeof l.no === 'string' && l.no ? { no: l.no } : null;
}

/** The order the purchase kept under key `key` replaces (see replacementOf), or undefined. */
function replacedBy(key) {
  if (!key) return undefined;
  const map = all();
  const id = Object.keys(map).filter((n) => map[n].key === key && map[n].replaces)[0];
  return id ? map[id].replaces : undefined;
}

/** What is kept of `purchase` ({ key, items, address, replaces? }) at time `at`. */
function kept(purchase, at) {
  const p = { key: purchase.key, items: purchase.items, address: purchase.address || null, at: at };
  if (purchase.replaces) p.replaces = purchase.replaces;
  return p;
}

/**
 * Keeps `purchase` ({ key, items, address, replaces? }) for order `outTradeNo`, and no other
 * entry of its key. `replaces`: the order buy closed to make this one (kept from the key's
 * entry when not given), so that order's page can point here.
 */
function remember(outTradeNo, purchase) {
  const map = all();
  const at = nextAt(map);
  const replaces = purchase.replaces || replacedBy(purchase.key);
  dropKey(map, purchase.key);
  map[outTradeNo] = kept(Object.assign({}, purchase, { replaces: replaces }), at);
  save(map);
  if (replaces) link(replaces, outTradeNo);
}

/**
 * Keeps `purchase` ({ key, items, address }) whose order number is not known (buy failed
 * before the server answered), under its key. A key kept already (under its order number or
 * not) stays as it is, its age counted from when it was first kept: its order, if the server
 * made one, dates from then.
 */
function rememberKey(purchase) {
  const map = all();
  if (Object.keys(map).some((id) => map[id].key === purchase.key)) return;
  map[PENDING + purchase.key] = kept(purchase, nextAt(map));
  save(map);
}

function forget(outTradeNo) {
  const map = all();
  if (!(outTradeNo in map)) return;
  delete map[outTradeNo];
  save(map);
}

/** Forgets key `key`, whatever it is kept under: the server answered for it. */
function forgetKey(key) {
  if (!key) return;
  const map = all();
  const before = Object.keys(map).length;
  dropKey(map, key);
  if (Object.keys(map).length !== before) save(map);
}

/**
 * Keeps what shop.buy resolved, for `purchase` ({ items, address, key? }, `key` the one sent,
 * if any): the order's key while it is unpaid, under its order number; nothing once it is paid
 * or closed. The key sent is answered (by this order, or spent on one buy closed to make it),
 * and an order buy closed to make this one (the user came back through another entry) is
 * forgotten.
 */
function afterBuy(r, purchase) {
  // What the key sent replaced (a retry of a replacement), or what buy closed now to make this.
  const prev = r.previousOrder && r.previousOrder.outcome !== 'paid' ? r.previousOrder.out_trade_no : null;
  const replaces = purchase.replaces || replacedBy(purchase.key) || prev || undefined;
  forgetKey(purchase.key);
  if (r.previousOrder) forget(r.previousOrder.out_trade_no);
  if (r.idempotencyKey) remember(r.out_trade_no, { key: r.idempotencyKey, items: purchase.items, address: purchase.address, replaces: replaces });
  else forget(r.out_trade_no);
  // Paid or closed at once (no key kept): which order replaced which is still worth knowing.
  if (replaces) link(replaces, r.out_trade_no);
}

/**
 * Keeps what a rejection of shop.buy hands back, for `purchase` ({ items, address, key? }, `key`
 * the one sent) and `keptNo`, the order number that key was kept for (if any):
 * - no key handed back: the key sent is spent (its order closed, the key refused) or there was
 *   none; it is forgotten.
 * - an order buy closed (`previousOrder`, closed or missing) is forgotten, whatever was sent.
 * - the key sent handed back, its order number known and still standing: kept under it.
 * - any other key (a fresh one that got no answer, or the new key of an order buy made to
 *   replace one it closed): kept for the cart and address, its order number unknown — never
 *   under the number of an order that is gone, which would drop it with that order.
 */
function afterFailure(e, purchase, keptNo) {
  const err = e || {};
  const prev = err.previousOrder;
  const gone = prev && prev.outcome !== 'open' ? prev.out_trade_no : null;
  if (gone) forget(gone);
  if (!err.idempotencyKey) {
    forgetKey(purchase.key);
    return;
  }
  // The order the new key stands in for: the one named by the purchase (a retry on the closed
  // order's page), else the one buy closed now to make it.
  const replaces = purchase.replaces || gone || undefined;
  if (purchase.key && err.idempotencyKey !== purchase.key) forgetKey(purchase.key);
  const what = { key: err.idempotencyKey, items: purchase.items, address: purchase.address, replaces: replaces };
  if (err.idempotencyKey === purchase.key && keptNo && keptNo !== gone) remember(keptNo, what);
  else rememberKey(what);
}

module.exports = {
  find,
  latestFor,
  findPurchase,
  findChanged,
  findUnanswered,
  replacementOf,
  replacedWith,
  remember,
  rememberKey,
  forget,
  forgetKey,
  afterBuy,
  afterFailure,
  MAX_AGE_MS,
  MAX_ENTRIES,
};
