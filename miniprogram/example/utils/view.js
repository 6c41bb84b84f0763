/**
 * What the pages show: amounts in yuan (formatFen, from the server's fen), statuses in words,
 * and the one way an error reaches the user (a toast with the server's code and message).
 */
'use strict';

const { formatFen, PAID_STATUSES } = require('./wxshop');

/** Every order status the server answers, in words. */
const ORDER_STATUS_TEXT = {
  CREATED: 'Awaiting payment',
  PREPAID: 'Awaiting payment',
  PAID: 'Paid, to be shipped',
  SHIPPED: 'Shipped',
  RECEIVED: 'Received',
  COMPLETED: 'Completed',
  CLOSED: 'Closed unpaid',
  PARTIALLY_REFUNDED: 'Partly refunded',
  REFUNDED: 'Refunded',
};

/** Every after-sale status the server answers, in words (the client README's advice: a refund
 * that failed or is held waits for the merchant, so it reads "being handled", not "failed"). */
const AFTERSALE_STATUS_TEXT = {
  REQUESTED: 'Requested',
  AWAITING_RETURN: 'Send the goods back',
  RETURNING: 'Goods on the way back',
  REFUNDING: 'Refunding',
  REFUNDED: 'Refunded',
  REJECTED: 'Rejected',
  CANCELLED: 'Cancelled',
  REFUND_FAILED: 'Being handled',
  REFUND_ABNORMAL: 'Being handled',
};

/** Statuses in which an order can still be paid (or closed by the user). */
const UNPAID_STATUSES = ['CREATED', 'PREPAID'];

/**
 * Shows a failure to the user: the error shape's `code` and `message` (the server's words, or
 * the client's for NETWORK_ERROR and the like). Anything else is a bug in the page: it goes to
 * the console, and the user gets a plain sentence, never a stack trace.
 */
function showError(e) {
  let title;
  if (e && typeof e.code === 'string') {
    title = e.message && e.message !== e.code ? e.code + ': ' + e.message : e.code;
  } else {
    console.error('wxshop example:', e);
    title = 'Something went wrong. Please try again.';
  }
  wx.showToast({ title: title, icon: 'none', duration: 3000 });
}

/** A product's SKU for the pages: its price in yuan and whether it can be picked. */
function skuView(sku) {
  const attrs = Array.isArray(sku.attrs) ? sku.attrs : [];
  const label = attrs.map((a) => a.value).filter(Boolean).join(' / ');
  return {
    sku_id: sku.sku_id,
    label: label || sku.sku_id,
    price: sku.price,
    priceText: formatFen(sku.price),
    marketPriceText: sku.market_price > sku.price ? formatFen(sku.market_price) : '',
    stock: sku.stock,
    soldOut: !(sku.stock > 0),
  };
}

/** A product for the shop list: its first image, SKUs, and the lowest price on sale. */
function productView(p) {
  const skus = (p.skus || []).map(skuView);
  const onSale = skus.filter((s) => !s.soldOut);
  const prices = (onSale.length ? onSale : skus).map((s) => s.price);
  const lowest = prices.length ? Math.min.apply(null, prices) : null;
  return {
    product_id: p.product_id,
    title: p.title,
    image: (p.head_img && p.head_img[0]) || '',
    skus: skus,
    priceText: lowest === null ? '' : formatFen(lowest),
    priceFrom: new Set(prices).size > 1,
    soldOut: onSale.length === 0,
  };
}

function pad(n) {
  return (n < 10 ? '0' : '') + n;
}

/** Epoch milliseconds as the phone's local date and time, e.g. 2026-12-07 11:05. */
function dateTime(ms) {
  if (typeof ms !== 'number') return '';
  const d = new Date(ms);
  return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' + pad(d.getHours()) + ':' + pad(d.getMinutes());
}

/** An order (queryOrder's) for the pages: the server's amounts in yuan, what the user may do. */
function orderView(o) {
  const paid = PAID_STATUSES.indexOf(o.status) >= 0;
  return {
    out_trade_no: o.out_trade_no,
    status: o.status,
    statusText: ORDER_STATUS_TEXT[o.status] || o.status,
    totalText: formatFen(o.total_fee),
    freightText: o.freight > 0 ? formatFen(o.freight) : '',
    refundedText: o.refunded_fee > 0 ? formatFen(o.refunded_fee) : '',
    items: (o.items || []).map((i) => ({
      product_id: i.product_id,
      sku_id: i.sku_id,
      title: i.title,
      quantity: i.quantity,
      unitPriceText: formatFen(i.unit_price),
    })),
    summary: (o.items || []).map((i) => i.title + ' × ' + i.quantity).join(', '),
    created: dateTime(o.created_at),
    delivery: o.delivery || null,
    shipped: o.shipped_at_ms ? dateTime(o.shipped_at_ms) : '',
    unpaid: UNPAID_STATUSES.indexOf(o.status) >= 0,
    paid: paid,
    canConfirm: o.status === 'SHIPPED',
    canRefund: paid && o.refunded_fee < o.total_fee,
  };
}

/** An after-sale for the order page. */
function aftersaleView(a) {
  return {
    aftersale_id: a.aftersale_id,
    status: a.status,
    statusText: AFTERSALE_STATUS_TEXT[a.status] || a.status,
    // A refund the shop made on its own (by: MERCHANT: the freight left over, a goodwill
    // refund): the user did not apply for it, so say who did.
    kindText: a.by === 'MERCHANT' ? 'Refund from the shop' : a.kind === 'RETURN_AND_REFUND' ? 'Return and refund' : 'Refund',
    amountText: typeof a.amount === 'number' ? formatFen(a.amount) : '',
    reason: a.reason || '',
    rejectReason: a.reject_reason || '',
  };
}

/**
 * A query parameter as the page got it in onLoad. WeChat hands the values over as they stand in
 * the path; whether it decodes percent-escapes first is UNVERIFIED, so decode them here when
 * there are any (the order numbers and product ids of this shop have none).
 */
function queryValue(options, name) {
  const v = options && options[name];
  if (typeof v !== 'string' || v === '') return '';
  try {
    return decodeURIComponent(v);
  } catch (e) {
    return v;
  }
}

module.exports = {
  ORDER_STATUS_TEXT,
  AFTERSALE_STATUS_TEXT,
  formatFen,
  showError,
  skuView,
  productView,
  orderView,
  aftersaleView,
  queryValue,
};
