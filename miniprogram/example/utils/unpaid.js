/**
 * Purchases not paid yet, kept on the phone by order number: the idempotency key `shop.buy`
 * handed back, with the items and address it was sent for. Buying again with the same key,
 * items and address pays that order (the server answers the key with it) instead of making a
 * second one; the order page uses this for its Pay button, the product page to offer Pay again
 * after the mini program was closed and reopened.
 *
 * Kept in wx.setStorageSync, so it outlives the mini program being killed and reopened (and
 * the order page being opened from WeChat's order centre). A paid or closed order is
 * forgotten as soon as a page sees it so; one older than MAX_AGE_MS is forgotten unread (its
 * order has expired: the server's ORDER_TTL_SECS is at most 7200 s); at most MAX_ENTRIES are
 * kept, the oldest dropped first, so the storage stays small whatever the user leaves unpaid.
 */
'use strict';

const STORAGE_KEY = 'example.unpaid';
const MAX_AGE_MS = 2 * 60 * 60 * 1000;
const MAX_ENTRIES = 20;

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
    return Array.isArray(items) && items.length === 1 && items[0] && items[0].product_id === productId;
  });
  mine.sort((a, b) => (map[b].at || 0) - (map[a].at || 0));
  return mine.length ? Object.assign({ out_trade_no: mine[0] }, map[mine[0]]) : null;
}

/**
 * The newest purchase kept for exactly these `items` and `address` (as the product page sends
 * them): { out_trade_no, key, items, address }, or null.
 */
function findPurchase(items, address) {
  const what = JSON.stringify({ items: items, address: address || null });
  const map = all();
  const same = Object.keys(map).filter((n) => JSON.stringify({ items: map[n].items, address: map[n].address || null }) === what);
  same.sort((a, b) => (map[b].at || 0) - (map[a].at || 0));
  return same.length ? Object.assign({ out_trade_no: same[0] }, map[same[0]]) : null;
}

function remember(outTradeNo, purchase) {
  const map = all();
  // Later than every entry kept, so "newest" is well defined within the same millisecond.
  const at = Object.keys(map).reduce((t, no) => Math.max(t, (map[no].at || 0) + 1), Date.now());
  map[outTradeNo] = { key: purchase.key, items: purchase.items, address: purchase.address || null, at: at };
  save(map);
}

function forget(outTradeNo) {
  const map = all();
  if (!(outTradeNo in map)) return;
  delete map[outTradeNo];
  save(map);
}

/**
 * Keeps what shop.buy resolved, for `purchase` ({ items, address }): the order's key while it is
 * unpaid, nothing once it is paid or closed; an order buy closed to make this one (the user
 * came back through another entry) is forgotten.
 */
function afterBuy(r, purchase) {
  if (r.previousOrder) forget(r.previousOrder.out_trade_no);
  if (r.idempotencyKey) remember(r.out_trade_no, { key: r.idempotencyKey, items: purchase.items, address: purchase.address });
  else forget(r.out_trade_no);
}

module.exports = { find, latestFor, findPurchase, remember, forget, afterBuy, MAX_AGE_MS, MAX_ENTRIES };
