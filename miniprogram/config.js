/**
 * Example configuration: every deployment-specific value in one place.
 * Copy into your mini program (e.g. `utils/config.js`) and edit.
 */
'use strict';

module.exports = {
  // The stack's public host: `https://` + its DomainName parameter (the RequestDomain output),
  // no trailing slash. It must be an ICP-filed HTTPS domain, whitelisted as a "request legal
  // domain" (request 合法域名) in the mini program's admin console; API Gateway's own
  // execute-api URL cannot be filed. For local development against `wxlocal serve`, use
  // http://127.0.0.1:8787 and tick "do not verify legal domains" in the developer tools.
  baseUrl: 'https://shop.example.com',

  // Storage key for the session ({ token, expires_at, openid, fund_type, trading_component }).
  storageKey: 'wxshop.session',

  // After the cashier closes, ask the server (queryOrder) every intervalMs until the order is
  // paid: at most timeoutMs after a successful cashier, failTimeoutMs after cancel/failure.
  payPoll: { intervalMs: 1000, timeoutMs: 10000, failTimeoutMs: 2000 },

  // Per-request timeout passed to wx.request.
  requestTimeoutMs: 15000,

  // buy() resends its unifiedOrder call with the same idempotency key while the outcome is
  // unknown or transient (network error, timeout, 409 REQUEST_IN_PROGRESS, the server's 503s, a
  // gateway's own 5xx; never the server's 502 refusals, see README): at most `attempts`
  // calls, waits doubling from delayMs up to maxDelayMs, no new call after budgetMs.
  orderRetry: { attempts: 6, delayMs: 1000, maxDelayMs: 8000, budgetMs: 45000 },

  // buy() runs WeChat's pre-order check (wx.checkBeforeAddOrder) where the base library has it:
  // its traceId goes to the server, and an order WeChat requires but this shop does not make is
  // refused (ORDER_TYPE_UNSUPPORTED) before anything is made. required: true also refuses when
  // the check is missing or fails (ORDER_CHECK_FAILED); `orderCheck: false` turns it off.
  orderCheck: { enabled: true, required: false, timeoutMs: 5000 },
};
