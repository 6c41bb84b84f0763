/**
 * One product (`shop.product`): pick a SKU and a quantity (at most its stock), then buy with
 * `shop.buy`. The price shown is the server's; what is charged is what the server's order says
 * (`total_fee`), never a sum made here. When the server needs a delivery address (every order
 * that goes through WeChat's trading component; login says whether the shop uses it) the user
 * picks one with wx.chooseAddress first.
 *
 * The outcome is shown as the client README says: "paid" only on `paid`; a cancelled or failed
 * cashier leaves the order unpaid, and the next tap on Pay (the same SKU, quantity and address)
 * sends the key buy handed back, so it pays that order instead of making a second one (once
 * that order closed unpaid, ORDER_CLOSED, the page says so and offers Buy); when
 * the server could not be asked (`error`), or the cashier said paid and the server has not
 * seen the payment yet, the payment is not offered again: the order page asks the server later.
 *
 * The unpaid purchase is kept in storage (utils/unpaid), not only in this page: when the mini
 * program is closed and reopened, the page offers Pay for it again (the SKU, quantity and
 * address it was made with) once the server says it is still unpaid, and a Buy of the same
 * cart sends its key. Without that, the next tap would make a second order while the first
 * still held its stock until it expired. So is a key buy handed back with no order number (no
 * answer, a timeout: the server may have made the order): the next Buy of the same cart and
 * address sends it, after a reload too.
 *
 * This product bought again with another SKU, quantity or address (the user did not pay, then
 * changed their mind) closes the orders kept unpaid for it first (shop.orders.close, their
 * stock back, as Buy again on the order page does), then buys afresh; paid meanwhile
 * (ORDER_PAID), that order is shown paid and nothing is bought; a close refused otherwise,
 * the page says so and buys nothing. A cart of other products is another purchase. Of several
 * keys of this product kept with no order number, the newest is sent with the changed cart and
 * each older one asked which order it holds (utils/keyorder), that order then closed.
 */
'use strict';

const { addressFromWx } = require('../../utils/wxshop');
const view = require('../../utils/view');
const unpaid = require('../../utils/unpaid');
const { orderOfKey } = require('../../utils/keyorder');

/** The user picks a delivery address → resolves the server's shape, or rejects (error shape). */
function chooseAddress() {
  return new Promise((resolve, reject) => {
    wx.chooseAddress({
      success: (res) => resolve(addressFromWx(res)),
      fail: (res) => reject({ code: 'NO_ADDRESS', message: 'Choose a delivery address to buy.', errMsg: res && res.errMsg }),
    });
  });
}

Page({
  data: {
    loading: true,
    product: null,
    skus: [],
    selected: '',
    quantity: 1,
    maxQuantity: 0,
    address: null,
    busy: false,
    // '' | 'paid' | 'unpaid' | 'unknown' | 'closed', and what to tell the user about it.
    outcome: '',
    message: '',
    orderNo: '',
  },
  // The purchase not paid yet: { key, what, items, address, no }, `what` the items and address
  // it was sent for (JSON), `no` its order number when known.
  pending: null,
  // The server answered ADDRESS_REQUIRED: ask for one whatever login said.
  addressRequired: false,

  onLoad(options) {
    this.productId = view.queryValue(options, 'product_id');
    return this.load(view.queryValue(options, 'sku_id'));
  },

  load(wantSku) {
    const shop = getApp().shop;
    return shop
      .product(this.productId)
      .then((p) => {
        const skus = p.skus.map(view.skuView);
        const pick = skus.filter((s) => s.sku_id === wantSku && !s.soldOut)[0] || skus.filter((s) => !s.soldOut)[0];
        this.setData({
          loading: false,
          product: { product_id: p.product_id, title: p.title, images: p.head_img || [] },
          skus: skus,
          selected: pick ? pick.sku_id : '',
          quantity: 1,
          maxQuantity: pick ? pick.stock : 0,
        });
        return skus;
      })
      .catch((e) => {
        this.setData({ loading: false, product: null });
        view.showError(e);
        return null;
      })
      .then((skus) => (skus ? this.restorePending(skus) : undefined))
      .catch((e) => view.showError(e));
  },

  /**
   * The purchase of this product left unpaid before the mini program was closed (kept by
   * utils/unpaid), offered again as Pay with the SKU, quantity and address it was made with:
   * its key pays that order, where Buy would make a second one. The server is asked first: an
   * order paid or closed meanwhile is forgotten, and the page offers Buy as usual.
   */
  restorePending(skus) {
    if (this.pending) return Promise.resolve(); // this page's own purchase, in memory, wins
    const kept = unpaid.latestFor(this.productId);
    const line = kept && kept.items[0];
    const sku = line && skus.filter((s) => s.sku_id === line.sku_id)[0];
    if (!sku) return Promise.resolve();
    return getApp()
      .shop.orders.get(kept.out_trade_no)
      .then(
        (order) => {
          if (view.orderView(order).unpaid) return true;
          unpaid.forget(kept.out_trade_no);
          return false;
        },
        // Not read now: Pay sends the key, which pays that order or is refused (ORDER_CLOSED),
        // never makes a second one.
        () => true
      )
      .then((open) => {
        if (!open || this.pending || this.data.busy) return;
        const address = kept.address || null;
        this.pending = { key: kept.key, what: JSON.stringify({ items: kept.items, address: address }), items: kept.items, address: address, no: kept.out_trade_no };
        const patch = {
          selected: sku.sku_id,
          quantity: line.quantity,
          // Its own order holds what it bought: the SKU may read sold out because of it.
          maxQuantity: Math.max(sku.stock, line.quantity),
          outcome: 'unpaid',
          orderNo: kept.out_trade_no,
          message: 'Order ' + kept.out_trade_no + ' is waiting for payment. Tap Pay to pay it.',
        };
        if (address) patch.address = address;
        this.setData(patch);
      });
  },

  sku(id) {
    return this.data.skus.filter((s) => s.sku_id === id)[0] || null;
  },

  onSkuTap(e) {
    const sku = this.sku(e.currentTarget.dataset.skuId);
    if (!sku || sku.soldOut || this.data.busy) return;
    this.setData({ selected: sku.sku_id, maxQuantity: sku.stock, quantity: Math.min(this.data.quantity, sku.stock), outcome: '', message: '' });
  },

  onMinus() {
    if (this.data.busy || this.data.quantity <= 1) return;
    this.setData({ quantity: this.data.quantity - 1, outcome: '', message: '' });
  },

  onPlus() {
    if (this.data.busy || this.data.quantity >= this.data.maxQuantity) return;
    this.setData({ quantity: this.data.quantity + 1, outcome: '', message: '' });
  },

  onAddressTap() {
    if (this.data.busy) return Promise.resolve();
    return chooseAddress()
      .then((address) => this.setData({ address: address, outcome: '', message: '' }))
      .catch((e) => view.showError(e));
  },

  /** Does this purchase need a delivery address? Unless login said the shop makes no
   * trading-component orders (`off`), the server may ask for one, so it is asked for. */
  needsAddress() {
    if (this.addressRequired) return true;
    const s = getApp().shop.session();
    return !(s && s.trading_component === 'off');
  },

  address() {
    if (this.data.address) return Promise.resolve(this.data.address);
    if (!this.needsAddress()) return Promise.resolve(null);
    return chooseAddress().then((address) => {
      this.setData({ address: address });
      return address;
    });
  },

  onBuyTap() {
    if (this.data.busy || !this.data.selected || this.data.outcome === 'unknown') return Promise.resolve();
    // Pay: the purchase shown unpaid, exactly as it was sent (its key names that request).
    const paying = this.data.outcome === 'unpaid' && this.pending && this.pending.items ? this.pending : null;
    // No price: the server charges its own.
    const items = paying ? paying.items : [{ product_id: this.data.product.product_id, sku_id: this.data.selected, quantity: this.data.quantity }];
    this.setData({ busy: true, message: '' });
    return (paying ? Promise.resolve(paying.address) : this.address())
      .then((address) => {
        wx.showLoading({ title: 'Paying…', mask: true });
        const what = JSON.stringify({ items: items, address: address });
        // This page's unpaid purchase of the same cart, or one kept in storage (made before the
        // mini program was closed and reopened, or whose order call got no answer): its key
        // pays that order, not a second one.
        const kept = this.pending && this.pending.what === what ? this.pending : unpaid.findPurchase(items, address);
        const keptNo = kept ? kept.no || kept.out_trade_no || undefined : undefined;
        // A Buy (not Pay) with a kept key whose call got no answer: its order, if any, may have
        // been closed since (on its page); the key answered as spent, a fresh one buys.
        if (kept && !keptNo && !paying) return this.replaceUnanswered(items, address, what, kept.key);
        if (kept) return this.purchase(items, address, what, kept.key, keptNo);
        // This product kept unpaid with another SKU, quantity or address (the user did not
        // pay, then changed their mind): those orders are closed first, their stock back, as
        // Buy again does on the order page; then this cart is bought afresh. Paid meanwhile:
        // that order is shown, nothing bought. A close refused: nothing bought either.
        return this.closeChanged(unpaid.findChanged(items, address)).then((left) => {
          if (left.paid) return { paidAlready: left.paid };
          if (left.unanswered) return this.replaceUnanswered(items, address, what, left.unanswered.key);
          return this.purchase(items, address, what, undefined, undefined);
        });
      })
      .then((r) => (r.paidAlready ? this.showPaidAlready(r.paidAlready) : this.showOutcome(r)))
      .catch((e) => {
        if (e && e.code === 'ADDRESS_REQUIRED') this.addressRequired = true;
        if (e && e.asking) {
          // An earlier purchase of this product whose answer was lost could not be asked
          // about: its order may hold stock. Nothing bought; the next tap asks again.
          this.setData({
            outcome: '',
            message: 'An earlier purchase of this product whose answer did not arrive could not be checked (' + e.code + '), so nothing new was bought. Tap Buy to try again.',
          });
          view.showError(e);
          return;
        }
        if (e && e.closing) {
          // The earlier unpaid order of this product could not be closed: nothing was
          // bought (a second order would hold stock beside it). It is still kept: the next tap
          // tries to close it again.
          this.setData({
            outcome: '',
            orderNo: e.closing,
            message: 'Your unpaid order ' + e.closing + ' of this product could not be closed (' + e.code + '), so nothing new was bought. Tap Buy to try again, or open that order.',
          });
          view.showError(e);
          return;
        }
        if (e && (e.code === 'ORDER_CLOSED' || e.code === 'ORDER_NOT_OPEN')) {
          // Pay sent the key of an order that closed unpaid meanwhile (it expired, or was
          // closed on its page): that order cannot be paid, and the next tap, with no key, is
          // a new purchase. Say so and offer Buy, as for a CLOSED status; not Pay.
          if (this.data.orderNo) unpaid.forget(this.data.orderNo);
          this.setData({ outcome: 'closed', message: 'This order was closed unpaid. Tap Buy to order again.' });
          return;
        }
        // No key left (the server refused it): Pay would not pay that order any more.
        if (!this.pending && this.data.outcome === 'unpaid') this.setData({ outcome: '' });
        view.showError(e);
      })
      .then(() => {
        wx.hideLoading();
        this.setData({ busy: false });
      });
  },

  /**
   * shop.buy of `items` for `address` (`what`: both, as JSON) with `key` (a kept purchase's,
   * whose order is `keptNo` when known; none for a new purchase) → buy's result. What buy
   * hands back is kept in the page and in storage (utils/unpaid), a key with no order number
   * too: a network failure's key (the server may have made the order) outlives the mini
   * program being closed, and the next Buy of the same cart and address sends it.
   */
  purchase(items, address, what, key, keptNo) {
    const params = { items: items, idempotencyKey: key };
    if (address) params.address = address;
    const sent = { items: items, address: address, key: key };
    return getApp()
      .shop.buy(params)
      .then(
        (r) => {
          // Not paid: buy hands back the key, and the next tap pays this order. Paid or
          // closed: none, and the next tap is a new purchase.
          this.pending = r.idempotencyKey ? { key: r.idempotencyKey, what: what, items: items, address: address, no: r.out_trade_no } : null;
          unpaid.afterBuy(r, sent);
          return r;
        },
        (e) => {
          // Only the key buy hands back: it keeps a key it was given on every refusal that
          // did not spend it (WeChat's pre-order check refusing this entry, a network
          // failure), and hands back none when it is spent (ORDER_CLOSED,
          // IDEMPOTENCY_KEY_REUSED): sent again, it would be refused on every tap.
          const no = e.idempotencyKey === key ? keptNo : undefined;
          this.pending = e.idempotencyKey ? { key: e.idempotencyKey, what: what, items: items, address: address, no: no } : null;
          unpaid.afterFailure(e, sent, keptNo);
          throw e;
        }
      );
  },

  /**
   * Closes the orders of `changed` (unpaid.findChanged: this product kept unpaid with another
   * SKU, quantity or address), one after the other, before the changed cart is bought →
   * resolves { paid } (the number of one that turned out paid: nothing is to be bought),
   * { unanswered } (the newest kept key with no order number: its order, if the server made
   * one, cannot be closed by number; replaceUnanswered sends it with the new cart), or {}.
   * A close that fails rejects with its error plus `closing` (that order's number): nothing is
   * bought, and the next tap tries again.
   *
   * The older kept keys with no order number (a second purchase of this product whose answer
   * was lost too) are not sent with the new cart: only one key can stand for it. Each is asked
   * which order it holds (utils/keyorder: the key with its own cart, no cashier) and that order
   * is closed like the rest; a key answered as spent is forgotten. Asking may make the order of
   * a key the server never took (its call never reached it): it is closed at once, its stock
   * back. Dropping such keys instead would leave the orders the server did make holding stock
   * until they expire, unseen here. A key that cannot be asked (no answer) rejects with
   * `closing` '' : nothing is bought, the key is kept, the next tap asks again.
   */
  closeChanged(changed) {
    const pending = changed.filter((p) => !p.out_trade_no);
    const unanswered = pending[0];
    const numbered = changed.filter((p) => p.out_trade_no);
    const older = pending.slice(1);
    const next = (i) => {
      if (i >= numbered.length) return ask(0);
      return this.closeOther(numbered[i]).then((paid) => (paid ? { paid: paid } : next(i + 1)));
    };
    const ask = (i) => {
      if (i >= older.length) return Promise.resolve(unanswered ? { unanswered: unanswered } : {});
      const p = older[i];
      const purchase = { key: p.key, items: p.items, address: p.address || null };
      return orderOfKey(getApp().shop, purchase).then(
        (r) => {
          if (r.spent) {
            unpaid.forgetKey(p.key);
            return ask(i + 1);
          }
          // Known now: kept under its number, so a close that fails is tried again by number.
          unpaid.remember(r.out_trade_no, purchase);
          return this.closeOther({ out_trade_no: r.out_trade_no }).then((paid) => (paid ? { paid: paid } : ask(i + 1)));
        },
        (e) => {
          throw Object.assign({}, e, { closing: '', asking: true });
        }
      );
    };
    return next(0);
  },

  /**
   * Closes `other` (with its order number), kept unpaid for this product with another cart or
   * address → resolves its order number when it turns out paid (409 ORDER_PAID, or paid by the
   * time the close came: nothing is to be bought again), else undefined once it is closed (or
   * the server has no such order). A close that fails otherwise rejects (its error, plus
   * `closing`): nothing is bought, the entry is kept, and the next tap tries again.
   */
  closeOther(other) {
    const no = other.out_trade_no;
    const done = () => {
      unpaid.forget(no);
      if (this.pending && this.pending.no === no) this.pending = null;
    };
    return getApp()
      .shop.orders.close(no)
      .then(
        (order) => {
          done();
          return order && view.orderView(order).paid ? no : undefined;
        },
        (e) => {
          if (e && e.code === 'ORDER_PAID') {
            done();
            return no;
          }
          if (e && e.code === 'ORDER_NOT_FOUND') {
            done();
            return undefined;
          }
          throw Object.assign({}, e, { closing: no });
        }
      );
  },

  /**
   * A Buy with a kept key whose order call got no answer (its order number is not known): of
   * this cart and address, or of this product with another cart or address. Its key is sent
   * with this cart and address: the server answers it with its order (the same request), or,
   * for a changed request, with 422 IDEMPOTENCY_KEY_REUSED naming that order, and buy closes
   * it and buys afresh under a new key (or answers that order, paid); a key the server never
   * took makes this purchase. A key it answers as spent (its order closed meanwhile, e.g. on
   * its page) is forgotten and a fresh one bought with: the user tapped Buy, not Pay.
   */
  replaceUnanswered(items, address, what, key) {
    return this.purchase(items, address, what, key, undefined).catch((e) => {
      const spent = e && !e.idempotencyKey && ['ORDER_CLOSED', 'ORDER_NOT_OPEN', 'IDEMPOTENCY_KEY_REUSED'].indexOf(e.code) >= 0;
      if (!spent) throw e;
      return this.purchase(items, address, what, undefined, undefined);
    });
  },

  /**
   * An earlier unpaid order of this product (another SKU, quantity or address) turned out
   * paid when it was to be closed: nothing was bought. Buy now is a new purchase, on top.
   */
  showPaidAlready(no) {
    this.pending = null;
    this.setData({
      outcome: 'paid',
      orderNo: no,
      message: 'Your earlier order ' + no + ' of this product was paid already, so nothing new was bought. Open it to see it; tap Buy to buy this as well.',
    });
  },

  showOutcome(r) {
    const status = r.order && r.order.status;
    if (r.paid) {
      const total = r.order && typeof r.order.total_fee === 'number' ? ' ¥' + view.formatFen(r.order.total_fee) : '';
      this.setData({ outcome: 'paid', orderNo: r.out_trade_no, message: 'Paid' + total + '. Order ' + r.out_trade_no + '.' });
    } else if (r.error) {
      this.setData({
        outcome: 'unknown',
        orderNo: r.out_trade_no,
        message: 'We could not confirm the payment yet (' + r.error.code + '). Open the order to check it.',
      });
    } else if (status === 'CLOSED') {
      this.setData({ outcome: 'closed', orderNo: r.out_trade_no, message: 'This order was closed unpaid. Tap Buy to order again.' });
    } else if (r.cashier === 'ok') {
      // The cashier says the user paid, and the server has not seen the payment yet (WeChat
      // Pay's notification is late, its order query did not show it): not "did not go through",
      // and no Pay, which would open the cashier again for an order paid already, or a second
      // purchase by a user who believes the first failed. The order page asks the server later.
      this.setData({
        outcome: 'unknown',
        orderNo: r.out_trade_no,
        message: 'Payment made; WeChat Pay has not confirmed it to us yet. Open order ' + r.out_trade_no + ' to check it.',
      });
    } else {
      const why = r.cashier === 'cancel' ? 'Payment cancelled.' : 'Payment did not go through' + (r.errMsg ? ' (' + r.errMsg + ').' : '.');
      this.setData({ outcome: 'unpaid', orderNo: r.out_trade_no, message: why + ' Tap Pay to pay order ' + r.out_trade_no + '.' });
    }
  },

  onOrderTap() {
    if (!this.data.orderNo) return;
    wx.navigateTo({ url: '/pages/order/detail?out_trade_no=' + encodeURIComponent(this.data.orderNo) });
  },
});
