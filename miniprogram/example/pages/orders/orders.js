/**
 * My orders: `shop.orders.list`, newest first, a page at a time (more on reaching the bottom).
 * Read again each time the page shows, so an order paid, closed or refunded on its own page
 * reads so here. Amounts are the server's `total_fee`, never a sum made here.
 */
'use strict';

const view = require('../../utils/view');
const unpaid = require('../../utils/unpaid');
const { paged } = require('../../utils/paged');

/** An order for the list; one no longer unpaid is no longer kept to be paid (utils/unpaid). */
function listed(order) {
  const v = view.orderView(order);
  if (!v.unpaid) unpaid.forget(v.out_trade_no);
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
}));
