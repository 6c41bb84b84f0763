/**
 * Which order an idempotency key holds, asked of the server without opening the cashier: for a
 * key this phone kept with no order number (its call got no answer, utils/unpaid).
 *
 * The key is sent as buy would send it (its items, address and the enter scene) to
 * `unifiedOrder`, and only the answer's order number is read: the server answers a key it took
 * with the order it made (API.md, unifiedOrder, "Idempotency key"), or, for a request that
 * differs from the key's first (the user came back through another entry), 422
 * `IDEMPOTENCY_KEY_REUSED` naming that order; it refuses a key whose order closed
 * (`ORDER_CLOSED`, `ORDER_NOT_OPEN`). A key it never took makes its order now: the purchase the
 * user made, whose call never reached the server. Nothing is guessed from items or times: an
 * order of the same cart bought on another phone is not this key's.
 */
'use strict';

function enterScene() {
  try {
    const o = typeof wx.getEnterOptionsSync === 'function' ? wx.getEnterOptionsSync() : null;
    const scene = o && o.scene !== undefined ? Number(o.scene) : NaN;
    return isNaN(scene) ? undefined : scene;
  } catch (e) {
    return undefined;
  }
}

/**
 * The order of `purchase` ({ key, items, address }) → resolves { out_trade_no, status? } (the
 * order the key holds; `status` when the server answered it, e.g. `PAID`), or { spent: true }
 * (the key's order closed unpaid, or the key is refused without naming one: it holds nothing
 * to pay). Rejects with the error shape otherwise (no answer, 503…): the key is still to ask.
 */
function orderOfKey(shop, purchase) {
  const data = { items: purchase.items, idempotency_key: purchase.key };
  if (purchase.address) data.address = purchase.address;
  const scene = enterScene();
  if (scene !== undefined) data.scene = scene;
  return shop.callFunction({ name: 'unifiedOrder', data: data }).then(
    (r) => {
      const res = (r && r.result) || {};
      if (typeof res.out_trade_no !== 'string' || !res.out_trade_no) {
        throw { code: 'BAD_RESPONSE', message: 'unifiedOrder named no order' };
      }
      return { out_trade_no: res.out_trade_no, status: res.status };
    },
    (e) => {
      const code = e && e.code;
      if (code === 'IDEMPOTENCY_KEY_REUSED' && e.out_trade_no) return { out_trade_no: e.out_trade_no };
      if (code === 'IDEMPOTENCY_KEY_REUSED' || code === 'ORDER_CLOSED' || code === 'ORDER_NOT_OPEN') return { spent: true };
      throw e;
    }
  );
}

module.exports = { orderOfKey };
