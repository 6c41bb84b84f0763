/**
 * Purchases not paid yet, kept on the phone by order number: the idempotency key `shop.buy`
 * handed back, with the items and address it was sent for. Buying again with the same key,
 * items and address pays that order (the server answers the key with it) instead of making a
 * second one; the order page uses this for its Pay button. A paid or closed order is forgotten.
 */
'use strict';

const STORAGE_KEY = 'example.unpaid';

function all() {
  let v = null;
  try {
    v = wx.getStorageSync(STORAGE_KEY);
  } catch (e) {
    v = null;
  }
  return v && typeof v === 'object' ? v : {};
}

function save(map) {
  try {
    wx.setStorageSync(STORAGE_KEY, map);
  } catch (e) {
    // Storage full or unavailable: the order can still be closed, only not paid from its page.
  }
}

/** { key, items, address } of order `outTradeNo`, or null. */
function find(outTradeNo) {
  const p = all()[outTradeNo];
  return p && typeof p.key === 'string' ? p : null;
}

function remember(outTradeNo, purchase) {
  const map = all();
  map[outTradeNo] = { key: purchase.key, items: purchase.items, address: purchase.address || null };
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

module.exports = { find, remember, forget, afterBuy };
