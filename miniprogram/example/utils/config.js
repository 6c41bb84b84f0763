/**
 * The example's configuration: wxlocal on this machine (`cargo run -p wxlocal -- serve --seed`).
 * For a phone, run wxlocal with `--addr 0.0.0.0:8787` and put your machine's LAN address here
 * (miniprogram/README.md, "Local development"); for a deployed stack, its https:// domain.
 * Every other option of createClient keeps its default (see miniprogram/config.js).
 */
'use strict';

module.exports = {
  baseUrl: 'http://127.0.0.1:8787',
};
