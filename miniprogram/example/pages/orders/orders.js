/**
 * My orders: `shop.orders.list`, newest first, a page at a time (more on reaching the bottom).
 * Read again each time the page shows, so an order paid, closed or refunded on its own page
 * reads so here. Amounts are the server's `total_fee`, never a sum made here. An order closed
 * to make a new one (Pay from another entry) reads "Replaced by order …", which opens the new one
 * (from what this phone keeps: utils/unpaid replacedWith).
 */
'use strict';

const view = require('../../utils/view');
const unpaid = require('../../utils/unpaid');
const { paged } = require('../../utils/paged');

/**
 * An order for the list; one no longer unpaid is no longer kept to be paid (utils/unpaid). An
 * order closed to make a new one (Pay from another entry) says so: `replacedBy` is the new
 * order's number ('' while its answer has not come: its page offers Pay the new order).
 */
function listed(order) {
  const v = view.orderView(order);
  if (!v.unpaid) unpaid.forget(v.out_trade_no);
  const next = v.status === 'CLOSED' ? unpaid.replacedWith(v.out_trade_no) : null;
  v.replaced = Boolean(next);
  v.replacedBy = next ? next.no : '';
  return v;
}

const PAGE_SIZE = 10;

Page(Object.assign(paged('orders', (cursor) =>
  getApp()
    .shop.orders.list({ limit: PAGE_SIZE, cursor: cursor })
    .then((page) => ({ items: page.orders.map(listed), next: page.next }))
), {
  data: {
    orders: [],
    next: null,
    loading: false,
    loaded: false,
  },

  onShow() {
    return this.refresh();
  },

  onOrderTap(e) {
    const no = e.currentTarget.dataset.outTradeNo;
    wx.navigateTo({ url: '/pages/order/detail?out_trade_no=' + encodeURIComponent(no) });
  },

  /** "Replaced by order …" on a closed order: opens the order that replaced it. */
  onReplacedByTap(e) {
    const no = e.currentTarget.dataset.outTradeNo;
    if (!no) return;
    wx.navigateTo({ url: '/pages/order/detail?out_trade_no=' + encodeURIComponent(no) });
  },
}));
