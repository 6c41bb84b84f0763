/**
 * The example shop's app: one wxshop client for the whole mini program, made from
 * utils/config.js. Pages take it with `getApp().shop`, so they share its session (one login).
 */
'use strict';

const { createClient } = require('./utils/wxshop');
const config = require('./utils/config');

App({
  shop: createClient(config),
});
