/**
 * One order, at `pages/order/detail?out_trade_no=…`: the server's default WX_ORDER_PATH, which
 * WeChat's order centre opens with the order number the server appended (`out_trade_no`), and
 * where the other pages send the user.
 *
 * - Unpaid: Pay (when this phone kept the purchase's key, in storage, utils/unpaid: it outlives
 *   the mini program being closed and reopened, and this page being opened from WeChat's order
 *   centre; shop.buy with that key, items and address pays this very order; from another entry
 *   buy closes it and pays a new one, shown then; if the new one's call fails, its key is kept
 *   for the cart and address, with this order's number: this page, closed, then offers Pay
 *   the new order with that key, and opens it once its number is known; answered that the new
 *   order closed unpaid, it offers Buy afresh; the new order's page reached first, and the
 *   product page's next Buy of the cart and address, send it too — on an order's page, a key
 *   with no number and the same items is used only once the server says it holds this order,
 *   utils/keyorder) and Close
 *   (shop.orders.close: its stock goes back). Without the key (bought on another phone, storage cleared, or kept longer than an
 *   order lives) it cannot be paid here: Buy again closes it, then opens its product to buy
 *   afresh (the server would not close it for a new purchase: it would hold its stock until it
 *   expired). Right after a Pay whose cashier
 *   said paid while the server has not seen the payment yet: neither, only "confirming", until
 *   a pull-down refresh reads the order again.
 * - Shipped: the parcel, and Confirm receipt (shop.orders.confirmReceipt).
 * - Paid: Apply for a refund (shop.aftersale.apply, one product line at a time) and the order's
 *   after-sales (shop.aftersale.list).
 */
'use strict';

const view = require('../../utils/view');
const unpaid = require('../../utils/unpaid');
const { orderOfKey } = require('../../utils/keyorder');

/** wx.showModal as a promise → resolves { confirm, content }. */
function ask(options) {
  return new Promise((resolve) => {
    wx.showModal(
      Object.assign({}, options, {
        success: (res) => resolve({ confirm: Boolean(res && res.confirm), content: (res && res.content) || '' }),
        fail: () => resolve({ confirm: false, content: '' }),
      })
    );
  });
}

Page({
  data: {
    loading: true,
    order: null,
    canPay: false,
    // This order was closed to make a new one (Pay from another entry): { no } once the new
    // order's number is known, { no: '' } while its answer has not come (the server may have
    // made it), or null. The page points there: Pay the new order (its key), or open it.
    replacement: null,
    // Pay the new order was answered that the new order closed unpaid too (it expired, or was
    // closed): nothing to pay; the page says so and offers Buy afresh.
    replacementClosed: false,
    // Pay found that the purchase this phone waited for (a key with no answer, of the same
    // items) is another order, not this one: its number, shown with a link to it.
    keyOrder: '',
    // The cashier said paid and the server has not seen it yet: until a pull-down refresh reads
    // the order again, neither Pay nor Close is offered, only "confirming".
    confirming: false,
    aftersales: [],
    busy: false,
  },
  // The replacement's product line ({ product_id, sku_id }) once Pay the new order was answered
  // that the new order closed unpaid: Buy opens it.
  replacementClosed: null,
  // Idempotency keys of refund applications that did not go through, by product line: sent
  // again, they retry that application instead of opening a second one.
  applyKeys: null,

  onLoad(options) {
    this.outTradeNo = view.queryValue(options, 'out_trade_no');
    // Opened right after a Pay that replaced an order and whose cashier said paid, the server
    // not having seen it yet: "confirming", not Pay, as on the page that paid.
    if (view.queryValue(options, 'confirming') === '1') this.setData({ confirming: true });
    this.applyKeys = {};
    if (!this.outTradeNo) {
      this.setData({ loading: false });
      view.showError({ code: 'NO_ORDER', message: 'This page needs an order number (out_trade_no).' });
      return Promise.resolve();
    }
    return this.load();
  },

  onPullDownRefresh() {
    // The user asks for the status again: what the server says now is what the page offers
    // (Pay again if it still says unpaid, by then a while after the cashier).
    this.setData({ confirming: false });
    return this.load().then(() => wx.stopPullDownRefresh());
  },

  /** Reads the order (an unpaid one is checked with WeChat Pay by the server) and its after-sales. */
  load() {
    const shop = getApp().shop;
    const no = this.outTradeNo;
    return shop.orders
      .get(no)
      .then((order) => {
        this.show(order);
        return order.status === 'CREATED' || order.status === 'PREPAID' ? [] : shop.aftersale.list(no);
      })
      .then((list) => this.setData({ aftersales: list.map(view.aftersaleView) }))
      .catch((e) => view.showError(e))
      .then(() => this.setData({ loading: false }));
  },

  show(order) {
    const v = view.orderView(order);
    if (!v.unpaid) unpaid.forget(v.out_trade_no);
    // Closed to be replaced: the new order this phone keeps for it (its number, or its key while
    // the answer has not come), so the user is not left with a closed order and nothing else.
    const next = v.status === 'CLOSED' ? unpaid.replacedWith(v.out_trade_no) : null;
    this.setData({
      order: v,
      canPay: v.unpaid && !this.data.confirming && Boolean(this.kept(v)),
      replacement: next,
      replacementClosed: v.status === 'CLOSED' && !next && Boolean(this.replacementClosed),
    });
  },

  /**
   * The purchase this phone keeps for order view `v` → { key, items, address, byNumber }, or
   * null: kept under its number, or else a key whose call got no answer for the same lines
   * (the order made to replace another, opened from my orders before its answer came). The
   * latter is only a candidate: Pay asks the server which order that key holds first
   * (payUnanswered), and pays only if it is this one.
   */
  kept(v) {
    const byNumber = unpaid.find(v.out_trade_no);
    if (byNumber) return Object.assign({}, byNumber, { byNumber: true });
    const unanswered = v.unpaid ? unpaid.findUnanswered(v.items) : null;
    return unanswered ? Object.assign({}, unanswered, { byNumber: false }) : null;
  },

  /**
   * Where a Pay whose order is `r.out_trade_no` (not this one) goes: that order's page, told to
   * say "confirming" (not offer Pay) when the cashier said paid and the server has not seen it.
   */
  openOrder(r) {
    const confirming = !r.paid && r.cashier === 'ok' ? '&confirming=1' : '';
    if (r.paid) wx.showToast({ title: 'Paid', icon: 'success' });
    else if (r.cashier === 'cancel') wx.showToast({ title: 'Payment cancelled.', icon: 'none' });
    wx.redirectTo({ url: '/pages/order/detail?out_trade_no=' + encodeURIComponent(r.out_trade_no) + confirming });
  },

  /** Runs `work` (→ promise) with the buttons disabled; a failure is shown, then the order read again. */
  act(work) {
    if (this.data.busy) return Promise.resolve();
    this.setData({ busy: true });
    return work()
      .catch((e) => {
        view.showError(e);
        return this.load();
      })
      .then(() => this.setData({ busy: false }));
  },

  onPayTap() {
    const no = this.outTradeNo;
    const saved = this.data.order ? this.kept(this.data.order) : unpaid.find(no);
    if (!saved || this.data.confirming) return Promise.resolve();
    return this.act(() => (saved.byNumber === false ? this.payUnanswered(saved) : this.payKept(saved)));
  },

  /**
   * Pay with a key kept with no order number whose items match this order's: the same cart may
   * have been bought on another phone, or earlier, so the items say nothing of which order the
   * key holds. The server is asked (utils/keyorder, no cashier): the key's order is this one →
   * kept under this number, and paid as any kept purchase; another order → kept under that
   * one, nothing paid here (the cashier would take money for an order this page does not
   * show), the page names it and links to it, and offers what it offers for an order this
   * phone holds no key for; the key spent (its order closed) → forgotten, the same.
   */
  payUnanswered(saved) {
    const no = this.outTradeNo;
    const purchase = { key: saved.key, items: saved.items, address: saved.address || null };
    wx.showLoading({ title: 'Checking…', mask: true });
    return orderOfKey(getApp().shop, purchase).then(
      (r) => {
        wx.hideLoading();
        if (r.spent) {
          unpaid.forgetKey(saved.key);
          wx.showToast({ title: 'Your purchase of these items was closed unpaid; this order is not it.', icon: 'none', duration: 3000 });
          return this.load();
        }
        if (r.out_trade_no === no) {
          unpaid.remember(no, purchase);
          return this.payKept(Object.assign({}, purchase, { byNumber: true }));
        }
        // The key holds another order: this phone's purchase, kept under its number now.
        if (r.status && ['CREATED', 'PREPAID'].indexOf(r.status) < 0) unpaid.forgetKey(saved.key);
        else unpaid.remember(r.out_trade_no, purchase);
        this.setData({ keyOrder: r.out_trade_no });
        wx.showToast({ title: 'Your purchase of these items is order ' + r.out_trade_no + ', not this one.', icon: 'none', duration: 3000 });
        return this.load();
      },
      (e) => {
        wx.hideLoading();
        throw e;
      }
    );
  },

  /** Opens the order Pay found this phone's unanswered key holds (keyOrder). */
  onOpenKeyOrderTap() {
    if (!this.data.keyOrder) return;
    wx.redirectTo({ url: '/pages/order/detail?out_trade_no=' + encodeURIComponent(this.data.keyOrder) });
  },

  /** Pay with `saved`, the purchase kept for this order ({ key, items, address, byNumber }). */
  payKept(saved) {
    const no = this.outTradeNo;
    const purchase = { items: saved.items, address: saved.address, key: saved.key };
    const params = { items: saved.items, idempotencyKey: saved.key };
    if (saved.address) params.address = saved.address;
    wx.showLoading({ title: 'Paying…', mask: true });
    return getApp()
      .shop.buy(params)
      .then(
        (r) => {
          wx.hideLoading();
          unpaid.afterBuy(r, purchase);
          if (r.out_trade_no !== no) {
            // Back through another entry: buy closed this order and made a new one.
            this.openOrder(r);
            return undefined;
          }
          if (r.paid) wx.showToast({ title: 'Paid', icon: 'success' });
          // The cashier said paid, the server has not seen it yet (or could not be asked):
          // not "did not go through". The order still reads PREPAID, but Pay would open the
          // cashier again for an order the user has just paid, and Close would try to close
          // it. The simplest honest page hides both and says "confirming" until the user
          // pulls down to read the status again: then it offers what the server says. No
          // timer that guesses when the confirmation is overdue.
          else if (r.cashier === 'ok') {
            this.setData({ confirming: true, canPay: false });
            wx.showToast({ title: 'Payment made, not confirmed yet: pull down to check again.', icon: 'none', duration: 3000 });
          } else if (r.error) wx.showToast({ title: 'Payment not confirmed yet: pull down to check again.', icon: 'none', duration: 3000 });
          else wx.showToast({ title: r.cashier === 'cancel' ? 'Payment cancelled.' : 'Payment did not go through.', icon: 'none' });
          return this.load();
        },
        (e) => {
          wx.hideLoading();
          // The key handed back is kept under this order's number only while it is this
          // order's key. When buy closed this order to replace it (back through another
          // entry) and the new order's call failed, the new key is kept for the cart and
          // address (utils/unpaid): under this number it would be dropped as soon as this
          // order reads closed, and the next Buy would make a second order while the new one
          // (the server may have made it) holds its stock.
          unpaid.afterFailure(e, purchase, saved.byNumber === false ? undefined : no);
          throw e;
        }
      );
  },

  /**
   * This order was closed to be replaced (Pay from another entry) and the new order's call got
   * no answer: the server may have made it, holding its stock. Sends the new order's key again
   * with its items and address: the server answers it with that order (or makes it, if it never
   * did), never a second one; then the page opens that order. Failing again, the key is kept
   * and the page keeps offering this. Answered that the new order closed unpaid meanwhile
   * (ORDER_CLOSED, ORDER_NOT_OPEN: it expired, or was closed on its page), there is nothing to
   * pay: the page says so and offers Buy, a fresh purchase (onBuyAfreshTap).
   */
  onPayReplacementTap() {
    const no = this.outTradeNo;
    const next = unpaid.replacementOf(no);
    if (!next || next.out_trade_no) return Promise.resolve();
    const purchase = { items: next.items, address: next.address, key: next.key, replaces: no };
    const params = { items: next.items, idempotencyKey: next.key };
    if (next.address) params.address = next.address;
    return this.act(() => {
      wx.showLoading({ title: 'Paying…', mask: true });
      return getApp()
        .shop.buy(params)
        .then(
          (r) => {
            wx.hideLoading();
            unpaid.afterBuy(r, purchase);
            this.openOrder(r);
          },
          (e) => {
            wx.hideLoading();
            unpaid.afterFailure(e, purchase, undefined);
            if (e && !e.idempotencyKey && (e.code === 'ORDER_CLOSED' || e.code === 'ORDER_NOT_OPEN')) {
              // The key is spent (forgotten above): without this the page would show a closed
              // order and nothing to do.
              const line = next.items && next.items[0];
              this.replacementClosed = line ? { product_id: line.product_id, sku_id: line.sku_id } : {};
              wx.showToast({ title: 'The new order was closed unpaid.', icon: 'none' });
              return this.load();
            }
            throw e;
          }
        );
    });
  },

  /**
   * The new order made to replace this one closed unpaid before it was paid (Pay the new order
   * answered ORDER_CLOSED): opens the product to buy afresh (a new purchase, a new key).
   */
  onBuyAfreshTap() {
    const c = this.replacementClosed;
    const item = (c && c.product_id ? c : null) || (this.data.order && this.data.order.items[0]);
    if (!item) return;
    wx.navigateTo({
      url: '/pages/product/product?product_id=' + encodeURIComponent(item.product_id) + '&sku_id=' + encodeURIComponent(item.sku_id),
    });
  },

  /** Opens the order made to replace this one. */
  onOpenReplacementTap() {
    const r = this.data.replacement;
    if (!r || !r.no) return;
    wx.redirectTo({ url: '/pages/order/detail?out_trade_no=' + encodeURIComponent(r.no) });
  },

  /**
   * An unpaid order this phone holds no key for: close it (its stock goes back; 409 ORDER_PAID
   * if it was paid meanwhile, shown, and the order read again), then open its product to buy
   * afresh. A new purchase alone would leave this one open, holding its stock until it expired.
   */
  onBuyAgainTap() {
    const order = this.data.order;
    const item = order && order.items[0];
    if (!item || this.data.confirming) return Promise.resolve();
    return this.act(() =>
      ask({ title: 'Buy again?', content: 'This order is closed first (what it holds goes back on sale), then you buy afresh.' }).then((res) => {
        if (!res.confirm) return undefined;
        return getApp()
          .shop.orders.close(this.outTradeNo)
          .then((closed) => {
            this.show(closed);
            if (closed.status !== 'CLOSED') return;
            wx.navigateTo({
              url: '/pages/product/product?product_id=' + encodeURIComponent(item.product_id) + '&sku_id=' + encodeURIComponent(item.sku_id),
            });
          });
      })
    );
  },

  onCloseTap() {
    if (this.data.confirming) return Promise.resolve();
    return this.act(() =>
      ask({ title: 'Close this order?', content: 'It can no longer be paid, and what it holds goes back on sale.' }).then((res) => {
        if (!res.confirm) return undefined;
        return getApp()
          .shop.orders.close(this.outTradeNo)
          .then((order) => {
            this.show(order);
            wx.showToast({ title: 'Order closed', icon: 'none' });
          });
      })
    );
  },

  onConfirmTap() {
    return this.act(() =>
      ask({ title: 'Confirm receipt?', content: 'Only when the parcel has arrived.' }).then((res) => {
        if (!res.confirm) return undefined;
        return getApp()
          .shop.orders.confirmReceipt(this.outTradeNo)
          .then((order) => {
            this.show(order);
            wx.showToast({ title: 'Receipt confirmed', icon: 'none' });
          });
      })
    );
  },

  /** A refund of one item line (data-index); an order of one item needs no line. */
  onRefundTap(e) {
    const order = this.data.order;
    const item = order && order.items[Number(e.currentTarget.dataset.index)];
    if (!item) return Promise.resolve();
    const line = item.product_id + '/' + item.sku_id;
    return this.act(() =>
      ask({ title: 'Apply for a refund', content: '', editable: true, placeholderText: 'Reason (optional)' }).then((res) => {
        if (!res.confirm) return undefined;
        const params = { out_trade_no: this.outTradeNo, type: 'refund', idempotencyKey: this.applyKeys[line] };
        if (res.content.trim()) params.reason = res.content.trim();
        if (order.items.length > 1) {
          params.product_id = item.product_id;
          params.sku_id = item.sku_id;
        }
        return getApp()
          .shop.aftersale.apply(params)
          .then(
            () => {
              delete this.applyKeys[line];
              wx.showToast({ title: 'Refund requested', icon: 'none' });
              return this.load();
            },
            (err) => {
              // Kept only while the client says the same application may be sent again.
              if (err.idempotencyKey) this.applyKeys[line] = err.idempotencyKey;
              else delete this.applyKeys[line];
              throw err;
            }
          );
      })
    );
  },
});
