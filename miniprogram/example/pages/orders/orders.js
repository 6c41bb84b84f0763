/**
 * My orders: `shop.orders.list`, newest first, a page at a time (more on reaching the bottom).
 * Read again each time the page shows, so an order paid, closed or refunded on its own page
 * reads so here. Amounts are the server's `total_fee`, never a sum made here.
 */
'use strict';

const view = require('../../utils/view');

const PAGE_SIZE = 10;

Page({
  data: {
    orders: [],
    next: null,
    loading: false,
    loaded: false,
  },
  generation: 0,

  onShow() {
    return this.refresh();
  },

  onPullDownRefresh() {
    return this.refresh().then(() => wx.stopPullDownRefresh());
  },

  onReachBottom() {
    return this.loadMore();
  },

  refresh() {
    this.generation += 1;
    this.setData({ orders: [], next: null, loaded: false });
    return this.fetch(null, this.generation);
  },

  loadMore() {
    if (this.data.loading || !this.data.next) return Promise.resolve();
    return this.fetch(this.data.next, this.generation);
  },

  fetch(cursor, generation) {
    this.setData({ loading: true });
    return getApp()
      .shop.orders.list({ limit: PAGE_SIZE, cursor: cursor })
      .then((page) => {
        if (generation !== this.generation) return undefined;
        const more = page.orders.map(view.orderView);
        this.setData({ orders: this.data.orders.concat(more), next: page.next, loading: false, loaded: true });
        return more.length === 0 && page.next ? this.fetch(page.next, generation) : undefined;
      })
      .catch((e) => {
        if (generation !== this.generation) return;
        this.setData({ loading: false, loaded: true });
        view.showError(e);
      });
  },

  onOrderTap(e) {
    const no = e.currentTarget.dataset.outTradeNo;
    wx.navigateTo({ url: '/pages/order/detail?out_trade_no=' + encodeURIComponent(no) });
  },
});
