/**
 * The shop: what can be ordered now, from `shop.products`, a page at a time (more on reaching
 * the bottom, or the "Load more" button). Prices are the server's, in yuan via formatFen; a
 * sold-out SKU is shown but cannot be picked.
 */
'use strict';

const view = require('../../utils/view');

const PAGE_SIZE = 10;

Page({
  data: {
    products: [],
    next: null,
    loading: false,
    loaded: false,
  },
  // Which refresh the answers belong to: a page that arrives after a pull-down refresh started
  // belongs to the old list.
  generation: 0,

  onLoad() {
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
    this.setData({ products: [], next: null, loaded: false });
    return this.fetch(null, this.generation);
  },

  loadMore() {
    if (this.data.loading || !this.data.next) return Promise.resolve();
    return this.fetch(this.data.next, this.generation);
  },

  fetch(cursor, generation) {
    this.setData({ loading: true });
    const shop = getApp().shop;
    return shop
      .products({ limit: PAGE_SIZE, cursor: cursor })
      .then((page) => {
        if (generation !== this.generation) return undefined;
        const more = page.products.map(view.productView);
        this.setData({ products: this.data.products.concat(more), next: page.next, loading: false, loaded: true });
        // A page may hold fewer products than asked for, even none, with more behind it. An
        // empty one adds nothing to scroll to, so the next is fetched at once.
        return more.length === 0 && page.next ? this.fetch(page.next, generation) : undefined;
      })
      .catch((e) => {
        if (generation !== this.generation) return;
        this.setData({ loading: false, loaded: true });
        view.showError(e);
      });
  },

  onProductTap(e) {
    const id = e.currentTarget.dataset.productId;
    wx.navigateTo({ url: '/pages/product/product?product_id=' + encodeURIComponent(id) });
  },

  onSkuTap(e) {
    const d = e.currentTarget.dataset;
    if (d.soldOut) return;
    wx.navigateTo({
      url: '/pages/product/product?product_id=' + encodeURIComponent(d.productId) + '&sku_id=' + encodeURIComponent(d.skuId),
    });
  },
});
