/**
 * The shop: what can be ordered now, from `shop.products`, a page at a time (more on reaching
 * the bottom, or the "Load more" button). Prices are the server's, in yuan via formatFen; a
 * sold-out SKU is shown but cannot be picked.
 */
'use strict';

const view = require('../../utils/view');
const { paged } = require('../../utils/paged');

const PAGE_SIZE = 10;

Page(Object.assign(paged('products', (cursor) =>
  getApp()
    .shop.products({ limit: PAGE_SIZE, cursor: cursor })
    .then((page) => ({ items: page.products.map(view.productView), next: page.next }))
), {
  data: {
    products: [],
    next: null,
    loading: false,
    loaded: false,
  },

  onLoad() {
    return this.refresh();
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
}));
