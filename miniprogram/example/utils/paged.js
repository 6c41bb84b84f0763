/**
 * A list page read a page at a time: the methods the shop and "my orders" pages share, mixed
 * into their `Page({...})` with Object.assign. `field` is the data key of the list, `read`
 * reads one page (`cursor` null for the first) and resolves `{ items, next }`.
 *
 * A page may hold fewer items than asked for, even none, with more behind it (the shop skips
 * products not on sale): an empty one adds nothing to scroll to, so the next is read at once.
 * A pull-down refresh starts a new generation; pages of the old one that arrive late are
 * dropped.
 */
'use strict';

const view = require('./view');

function paged(field, read) {
  return {
    generation: 0,

    onPullDownRefresh() {
      return this.refresh().then(() => wx.stopPullDownRefresh());
    },

    onReachBottom() {
      return this.loadMore();
    },

    refresh() {
      this.generation += 1;
      const reset = { next: null, loaded: false };
      reset[field] = [];
      this.setData(reset);
      return this.fetch(null, this.generation);
    },

    loadMore() {
      if (this.data.loading || !this.data.next) return Promise.resolve();
      return this.fetch(this.data.next, this.generation);
    },

    fetch(cursor, generation) {
      this.setData({ loading: true });
      return read(cursor)
        .then((page) => {
          if (generation !== this.generation) return undefined;
          const update = { next: page.next, loading: false, loaded: true };
          update[field] = this.data[field].concat(page.items);
          this.setData(update);
          return page.items.length === 0 && page.next ? this.fetch(page.next, generation) : undefined;
        })
        .catch((e) => {
          if (generation !== this.generation) return;
          this.setData({ loading: false, loaded: true });
          view.showError(e);
        });
    },
  };
}

module.exports = { paged };
