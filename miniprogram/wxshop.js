/**
 * wxshop mini-program client: call the wxshop functions by name and pay.
 *
 * The back end exposes one HTTPS route per function (`POST {baseUrl}/fn/{name}`), the same
 * shape as `wx.cloud.callFunction({ name })`. This module hides the session (login, token in
 * storage, refresh once on 401), maps every failure to one error shape
 * `{ code, message, statusCode }`, opens the WeChat cashier and then asks the server whether
 * the order is really paid: the cashier's "success" is only a hint, the server's order status
 * (fed by the payment notification or `pay/orderquery`) is the truth. Before each order it runs
 * WeChat's pre-order check (`wx.checkBeforeAddOrder`, where the base library has it): its
 * `traceId` goes to the server for `shop/order/add`, and an order WeChat would not accept in the
 * user's scene is refused before anything is made. An unpaid purchase hands back its idempotency
 * key, so paying again pays the same order (or, when the user came back through another enter
 * scene and the server refuses the key for the changed request, closes that order and buys
 * afresh). A token's expiry is judged by the server's clock, not the phone's. `products` and
 * `product` read what the user can order, `orders` and `aftersale` wrap the user's order list,
 * close, receipt and after-sales, and `formatFen` shows an amount in fen as yuan.
 *
 * Plain CommonJS, ES2017 syntax without async/await (Promise chains only), no dependencies:
 * it runs as-is in the mini-program runtime, the developer tools and Node (tests inject `wx`).
 *
 *   const { createClient } = require('./wxshop');
 *   const shop = createClient({ baseUrl: 'https://abc123.execute-api.ap-east-1.amazonaws.com' });
 *   shop.buy({ items: [{ product_id: 'tea', sku_id: 'tea-250g', quantity: 1 }] })
 *     .then(function (r) { if (r.paid) { ... } });
 */
'use strict';

/**
 * Statuses that mean "the money arrived", refunded since or not: `OrderStatus::is_paid` in
 * `shared/src/domain/order.rs` (a unit test reads it and fails when the two drift apart).
 */
var PAID_STATUSES = ['PAID', 'SHIPPED', 'RECEIVED', 'COMPLETED', 'PARTIALLY_REFUNDED', 'REFUNDED'];
/** Statuses after which polling cannot turn into paid any more. */
var FINAL_UNPAID_STATUSES = ['CLOSED'];

var DEFAULTS = {
  storageKey: 'wxshop.session',
  // Poll `queryOrder` every intervalMs, for at most timeoutMs after a successful cashier and
  // at most failTimeoutMs after a cancelled/failed one (one query is always made). Each query's
  // request timeout is cut to the time left, so a slow answer does not stretch the bound.
  payPoll: { intervalMs: 1000, timeoutMs: 10000, failTimeoutMs: 2000 },
  // Per-request timeout handed to wx.request.
  requestTimeoutMs: 15000,
  // buy()'s unifiedOrder call is retried with the same idempotency key while its outcome is
  // unknown or transient: at most `attempts` calls, waiting delayMs, 2×delayMs, … (capped at
  // maxDelayMs) between them, and no new call once budgetMs have passed since the first.
  // The request timeout is shorter than the function's (unifiedOrder: 28 s), so a timed-out
  // call may still have created the order; the retry with the same key gets that order back. After a 15 s timeout,
  // the waits (1+2+4+8+8 s) reach past the 30 s after which the server stops answering
  // REQUEST_IN_PROGRESS for a call that died.
  orderRetry: { attempts: 6, delayMs: 1000, maxDelayMs: 8000, budgetMs: 45000 },
  // A token this close to its expires_at is treated as expired (clock skew, latency).
  expirySkewSeconds: 30,
  // buy()'s wx.checkBeforeAddOrder: run it when the base library has it (enabled), wait at most
  // timeoutMs for its answer, and when it is missing or fails either go on without a trace id
  // (required: false) or refuse the purchase with ORDER_CHECK_FAILED (required: true).
  // `orderCheck: false` turns it off.
  orderCheck: { enabled: true, required: false, timeoutMs: 5000 },
};

/** A `requireOrder` the server takes as `require_order`: 0 or 1. */
function isRequireOrder(r) {
  return r === 0 || r === 1;
}

/** What WeChat's `requiredFundType` (and the server's `fund_type`) ask for, in words. */
var FUND_TYPE_NAMES = { 0: 'ordinary (fund_type 0)', 1: 'secondary-merchant (fund_type 1)', 2: 'either fund type' };

function assign(target) {
  for (var i = 1; i < arguments.length; i++) {
    var src = arguments[i];
    if (src) {
      for (var k in src) {
        if (Object.prototype.hasOwnProperty.call(src, k) && src[k] !== undefined) target[k] = src[k];
      }
    }
  }
  return target;
}

/** Our single error shape. Every rejection of this module is one of these. */
function makeError(code, message, statusCode, extra) {
  return assign({ code: code, message: message || code, statusCode: statusCode || 0 }, extra);
}

/** Map a wx.request completion (status + body) to the error shape. */
function httpError(statusCode, data) {
  var body = data;
  if (typeof body === 'string') {
    try {
      body = JSON.parse(body);
    } catch (e) {
      body = null;
    }
  }
  if (body && typeof body === 'object' && typeof body.code === 'string' && body.code) {
    // `out_trade_no`: the order a refusal is about, e.g. the one a spent idempotency key holds
    // (422 IDEMPOTENCY_KEY_REUSED).
    var extra = typeof body.out_trade_no === 'string' && body.out_trade_no ? { out_trade_no: body.out_trade_no } : undefined;
    return makeError(body.code, typeof body.message === 'string' ? body.message : body.code, statusCode, extra);
  }
  var code = statusCode === 401 ? 'UNAUTHENTICATED' : statusCode >= 500 ? 'SERVER_ERROR' : 'HTTP_ERROR';
  var text = typeof data === 'string' && data ? data.slice(0, 200) : 'HTTP ' + statusCode;
  return makeError(code, text, statusCode);
}

/** Normalise anything thrown inside a promise chain into the error shape. */
function toError(e) {
  if (e && typeof e === 'object' && typeof e.code === 'string') return e;
  return makeError('CLIENT_ERROR', e && e.message ? e.message : String(e), 0);
}

function trimSlash(s) {
  return String(s).replace(/\/+$/, '');
}

function randomHex(n) {
  var s = '';
  while (s.length < n) s += Math.floor(Math.random() * 0x100000000).toString(16);
  return s.slice(0, n);
}

/** A fresh idempotency key: time-ordered prefix + randomness, 32 characters. */
function newIdempotencyKey() {
  return (Date.now().toString(16) + randomHex(32)).slice(0, 32);
}

function delay(ms) {
  return new Promise(function (resolve) {
    setTimeout(resolve, ms);
  });
}

/** `wx.requestPayment` wants strings; some sources (e.g. getpaymentparams) give numbers. */
function paymentParams(payment) {
  var p = {
    timeStamp: String(payment.timeStamp),
    nonceStr: payment.nonceStr,
    package: payment.package,
    signType: payment.signType,
    paySign: payment.paySign,
  };
  return p;
}

/**
 * Did the answer come from our server (a `{code, message}` body), or from something in front of
 * it (API Gateway, a proxy) that never reached, or never heard back from, our function?
 * httpError gives a body without a code SERVER_ERROR (5xx) or HTTP_ERROR; the server never
 * sends those codes itself (test/docs.test.js checks).
 */
function fromOurServer(e) {
  return e.code !== 'SERVER_ERROR' && e.code !== 'HTTP_ERROR';
}

/**
 * Is this failure one that the same request, sent again, may get past? By the server's code,
 * not the status alone:
 * - no answer (NETWORK_ERROR: network failure, timeout): the outcome is unknown;
 * - our server's 503 (`ApiError::unavailable`: STORE_UNAVAILABLE, WECHAT_UNAVAILABLE,
 *   PAYMENT_UNAVAILABLE, …, "retry shortly") or 429 (throttled);
 * - a 429 or 5xx that is not our JSON: the gateway's own answer (throttling, a function that
 *   timed out or crashed).
 * Our server's 502s are final: WeChat refused (PAYMENT_REFUSED, WECHAT_REFUSED,
 * SCENE_CHECK_REFUSED: a wrong API key, no permission), and asking again only repeats the
 * refusal. An unknown code on a 502, 500 (INTERNAL) or 504 is treated as final too: a wasted
 * retry is cheap, but one that repeats a side effect each time (an order made and closed) is not.
 */
function isTransientFailure(e) {
  if (!e) return false;
  if (e.code === 'NETWORK_ERROR') return true;
  if (!fromOurServer(e)) return e.statusCode === 429 || e.statusCode >= 500;
  return e.statusCode === 503 || e.statusCode === 429;
}

/**
 * May the unifiedOrder call be sent again with the same key? When isTransientFailure says so,
 * or the same key is still being processed (409 REQUEST_IN_PROGRESS). Every other refusal is
 * the server's final word on this cart.
 */
function isRetryableOrderError(e) {
  if (!e) return false;
  if (e.statusCode === 409 && e.code === 'REQUEST_IN_PROGRESS') return true;
  return isTransientFailure(e);
}

/**
 * May an after-sale application be sent again with the same key? When isTransientFailure says
 * so (no answer, the server's 503 STORE_UNAVAILABLE, 429, a gateway's own 5xx). The server's
 * apply never answers REQUEST_IN_PROGRESS: it makes the after-sale in one conditional write, and
 * a repeated key reads that after-sale back.
 */
function isRetryableApplyError(e) {
  return isTransientFailure(e);
}

/**
 * A trace id the server takes: printable ASCII, 1–128 characters (`check_trace_id` in
 * shared/src/handlers/unified_order.rs answers anything else 400 BAD_TRACE_ID, which would
 * refuse the purchase over an attribution detail).
 */
function usableTraceId(t) {
  return typeof t === 'string' && /^[\x21-\x7e]{1,128}$/.test(t);
}

/**
 * Which orders the shop makes, as login reported it: { fund_type: 0 | 1, trading_component:
 * 'off' | 'always' | 'scene' }, or null when the session does not say (a session stored by an
 * older client, or a server older than this one).
 */
function shopOrdersOf(session) {
  if (!session) return null;
  var f = session.fund_type;
  var t = session.trading_component;
  if ((f !== 0 && f !== 1) || (t !== 'off' && t !== 'always' && t !== 'scene')) return null;
  return { fund_type: f, trading_component: t };
}

/**
 * The refusal (error shape, code ORDER_TYPE_UNSUPPORTED) when WeChat's pre-order check
 * requires an order (requireOrder 1) that this shop does not make, or null when it makes one
 * or none is required. `check` is runOrderCheck's answer, `shop` shopOrdersOf's.
 * - trading_component 'off': the server never makes the component order WeChat requires;
 * - requiredFundType 0 or 1 other than the server's fund_type; 2 takes either;
 * - a requiredFundType this client does not know (WeChat documents 0, 1, 2): it cannot tell
 *   whether the server's order would do (UNVERIFIED what others mean), so it does not guess;
 * - the server did not say what it makes: again no guess.
 * 'scene' goes on: the server asks `shop/scene/check` itself and makes a component order when
 * WeChat says the scene needs one.
 */
function orderTypeRefusal(check, shop) {
  if (!check || check.requireOrder !== 1) return null;
  var need = check.requiredFundType;
  var known = need === 0 || need === 1 || need === 2;
  var why = null;
  if (need === undefined) why = 'WeChat gave no requiredFundType, so this client cannot tell which';
  else if (!known) why = 'this client does not know requiredFundType ' + String(need);
  else if (!shop) why = 'the server did not say which orders it makes (a server older than this client?)';
  else if (shop.trading_component === 'off') why = 'this shop does not use the trading component (WX_TRADING_COMPONENT=off)';
  else if (need !== 2 && need !== shop.fund_type) why = 'this shop makes ' + FUND_TYPE_NAMES[shop.fund_type] + ' orders (WX_FUND_TYPE)';
  if (!why) return null;
  var wanted = known ? 'a trading-component order, ' + FUND_TYPE_NAMES[need] : 'a trading-component order';
  return makeError('ORDER_TYPE_UNSUPPORTED', 'WeChat requires ' + wanted + ' in this scene, but ' + why, 0, {
    requiredFundType: need,
    fundType: shop ? shop.fund_type : null,
    tradingComponent: shop ? shop.trading_component : null,
  });
}

/** Did the server hand us a trading-component order (→ wx.requestOrderPayment)? */
function needsOrderPayment(orderResult) {
  return Boolean(
    orderResult.ticket ||
      orderResult.orderInfo ||
      orderResult.fund_type === 1 ||
      orderResult.fund_type === '1'
  );
}

/** 'ok' | 'cancel' | 'fail' from a wx payment API's fail result. */
function cashierOutcome(res) {
  var msg = res && res.errMsg ? String(res.errMsg) : '';
  return /cancel/i.test(msg) ? 'cancel' : 'fail';
}

/**
 * Map a `wx.chooseAddress` success result to the server's address shape:
 * { receiver_name, detailed_address, tel_number, province, city, town }.
 */
function addressFromWx(res) {
  if (!res) return null;
  var province = res.provinceName || '';
  var city = res.cityName || '';
  var town = res.countyName || '';
  var street = res.streetName || '';
  var out = {
    receiver_name: res.userName || '',
    detailed_address: [province, city, town, street, res.detailInfo || ''].join(''),
    tel_number: res.telNumber || '',
  };
  if (province) out.province = province;
  if (city) out.city = city;
  if (town) out.town = town;
  return out;
}

/**
 * createClient({ baseUrl, storageKey?, payPoll?: { intervalMs, timeoutMs, failTimeoutMs? },
 *                requestTimeoutMs?, orderRetry?: { attempts, delayMs, maxDelayMs, budgetMs },
 *                orderCheck?: false | { enabled?, required?, timeoutMs? }, wx? })
 */
function createClient(options) {
  options = options || {};
  if (!options.baseUrl) throw new Error('wxshop.createClient: baseUrl is required');
  /* global wx */
  var w = options.wx || (typeof wx !== 'undefined' ? wx : null);
  if (!w) throw new Error('wxshop.createClient: no `wx` object (pass options.wx outside the mini program)');

  var baseUrl = trimSlash(options.baseUrl);
  var storageKey = options.storageKey || DEFAULTS.storageKey;
  var poll = assign({}, DEFAULTS.payPoll, options.payPoll);
  if (options.payPoll && options.payPoll.failTimeoutMs === undefined) {
    poll.failTimeoutMs = Math.min(DEFAULTS.payPoll.failTimeoutMs, poll.timeoutMs);
  }
  var requestTimeoutMs = options.requestTimeoutMs || DEFAULTS.requestTimeoutMs;
  var orderRetry = assign({}, DEFAULTS.orderRetry, options.orderRetry);
  var skew = options.expirySkewSeconds === undefined ? DEFAULTS.expirySkewSeconds : options.expirySkewSeconds;
  var orderCheck =
    options.orderCheck === false
      ? assign({}, DEFAULTS.orderCheck, { enabled: false })
      : assign({}, DEFAULTS.orderCheck, options.orderCheck);

  var loginInFlight = null;

  // ---- session storage -------------------------------------------------------------------

  function readSession() {
    var s;
    try {
      s = w.getStorageSync(storageKey);
    } catch (e) {
      return null;
    }
    if (!s) return null;
    if (typeof s === 'string') {
      // Tolerate a bare token (or a JSON string) written by older code.
      try {
        var parsed = JSON.parse(s);
        if (parsed && typeof parsed === 'object') s = parsed;
        else return { token: s };
      } catch (e) {
        return { token: s };
      }
    }
    return s && typeof s.token === 'string' && s.token ? s : null;
  }

  function writeSession(session) {
    try {
      w.setStorageSync(storageKey, session);
    } catch (e) {
      // Storage full or unavailable: the session still lives in memory for this call chain.
    }
  }

  function clearSession() {
    try {
      if (typeof w.removeStorageSync === 'function') w.removeStorageSync(storageKey);
      else w.setStorageSync(storageKey, '');
    } catch (e) {
      /* ignore */
    }
  }

  /**
   * Is the session's token still good, by the server's clock? `expires_at` is the server's
   * epoch seconds, and the phone's clock may be far off (set by hand, hours ahead or behind):
   * read against it directly, every token would look expired (a login before every call) or
   * live past its end (a 401 and a login after the call). So login keeps `clock_offset_ms`,
   * the phone's clock less the server's (its `issued_at`) when the answer arrived, and the
   * server's time now is the phone's less that offset. The offset errs by the login's round
   * trip, toward the token looking fresher than it is; the `expirySkewSeconds` margin covers
   * that, and a 401 still logs in again. A session without an offset (stored by an older
   * client, or from a server that does not say `issued_at`) is read against the phone's clock.
   */
  function isFresh(session) {
    if (!session || !session.token) return false;
    if (typeof session.expires_at !== 'number') return true; // unknown: let the server decide (401)
    var offset = Number.isFinite(session.clock_offset_ms) ? session.clock_offset_ms : 0;
    return session.expires_at - skew > (Date.now() - offset) / 1000;
  }

  // ---- transport -------------------------------------------------------------------------

  /**
   * One POST to /fn/{name}. Resolves the parsed body on 2xx, rejects the error shape.
   * `timeoutMs` (default requestTimeoutMs) is wx.request's timeout for this call.
   * Every function answers success with a JSON object; a 2xx with anything else (a Wi-Fi
   * login page, a proxy's HTML) did not come from it and rejects BAD_RESPONSE, rather than
   * resolving a string that reads as "no orders" or "no after-sales".
   */
  function post(name, data, token, timeoutMs) {
    return new Promise(function (resolve, reject) {
      var header = { 'content-type': 'application/json' };
      if (token) header.Authorization = 'Bearer ' + token;
      w.request({
        url: baseUrl + '/fn/' + encodeURIComponent(name),
        method: 'POST',
        data: data === undefined ? {} : data,
        header: header,
        dataType: 'json',
        timeout: timeoutMs || requestTimeoutMs,
        success: function (res) {
          var status = res.statusCode;
          if (status >= 200 && status < 300) {
            var body = res.data;
            if (typeof body === 'string' && body) {
              try {
                body = JSON.parse(body);
              } catch (e) {
                /* not JSON: refused below */
              }
            }
            if (!body || typeof body !== 'object' || Array.isArray(body)) {
              var what = typeof body === 'string' && body ? body.slice(0, 200) : String(body);
              reject(makeError('BAD_RESPONSE', 'HTTP ' + status + ' without a JSON object: ' + what, status));
              return;
            }
            resolve(body);
          } else {
            reject(httpError(status, res.data));
          }
        },
        fail: function (res) {
          reject(makeError('NETWORK_ERROR', (res && res.errMsg) || 'request failed', 0));
        },
      });
    });
  }

  // ---- login -----------------------------------------------------------------------------

  function wxLoginCode() {
    return new Promise(function (resolve, reject) {
      w.login({
        success: function (res) {
          if (res && res.code) resolve(res.code);
          else reject(makeError('WX_LOGIN_FAILED', (res && res.errMsg) || 'wx.login returned no code', 0));
        },
        fail: function (res) {
          reject(makeError('WX_LOGIN_FAILED', (res && res.errMsg) || 'wx.login failed', 0));
        },
      });
    });
  }

  /** wx.login → /fn/login → session in storage. Concurrent callers share one login. */
  function login() {
    if (loginInFlight) return loginInFlight;
    loginInFlight = wxLoginCode()
      .then(function (code) {
        return post('login', { code: code }, null);
      })
      .then(function (body) {
        var arrived = Date.now();
        if (!body || typeof body.token !== 'string' || !body.token) {
          throw makeError('BAD_RESPONSE', 'login returned no token', 200);
        }
        var session = { token: body.token, expires_at: body.expires_at, openid: body.openid };
        // The phone's clock less the server's, so isFresh judges expires_at by the server's.
        if (Number.isFinite(body.issued_at)) {
          session.issued_at = body.issued_at;
          session.clock_offset_ms = arrived - body.issued_at * 1000;
        }
        // Which orders the shop makes, held against wx.checkBeforeAddOrder's answer by buy().
        if (body.fund_type !== undefined) session.fund_type = body.fund_type;
        if (body.trading_component !== undefined) session.trading_component = body.trading_component;
        writeSession(session);
        return session;
      });
    var clear = function () {
      loginInFlight = null;
    };
    loginInFlight.then(clear, clear);
    return loginInFlight;
  }

  function ensureSession() {
    var s = readSession();
    return isFresh(s) ? Promise.resolve(s) : login();
  }

  /**
   * Which orders the shop makes (shopOrdersOf) → resolves it, or null when the server does not
   * say. A stored session that does not say (stored before the server or this client did) is
   * replaced by a fresh login first.
   */
  function shopOrders() {
    var s = readSession();
    var known = isFresh(s) ? shopOrdersOf(s) : null;
    if (known) return Promise.resolve(known);
    return login().then(shopOrdersOf);
  }

  // ---- functions -------------------------------------------------------------------------

  /**
   * callFunction({ name, data }) → { result } like wx.cloud.callFunction; rejects
   * { code, message, statusCode }. A 401 clears the session, logs in again and retries once.
   */
  function callFunction(params) {
    return callFunctionBy(params, null);
  }

  /**
   * callFunction, where every request for the function itself (the first and the one after a
   * 401) must be over by `deadline` (epoch ms, or null for none): its timeout is cut to the time
   * left. A login on the way keeps its own timeout: it is shared with other callers.
   */
  function callFunctionBy(params, deadline) {
    params = params || {};
    var timeout = function () {
      if (deadline === null) return requestTimeoutMs;
      return Math.max(1, Math.min(requestTimeoutMs, deadline - Date.now()));
    };
    var name = params.name;
    var data = params.data === undefined ? {} : params.data;
    if (!name) return Promise.reject(makeError('INVALID_ARGUMENT', 'callFunction: name is required', 0));
    if (name === 'login') {
      return post('login', data, null)
        .then(function (body) {
          return { result: body };
        })
        .catch(function (e) {
          throw toError(e);
        });
    }
    return ensureSession()
      .then(function (s) {
        return post(name, data, s.token, timeout()).catch(function (e) {
          if (!e || e.statusCode !== 401) throw e;
          // Another call may have logged in while this one was under way (both sent the token
          // the server refused): its session is the fresh one, so use it, neither clear it nor
          // log in a second time.
          var now = readSession();
          if (now && now.token !== s.token && isFresh(now)) return post(name, data, now.token, timeout());
          clearSession();
          return login().then(function (fresh) {
            return post(name, data, fresh.token, timeout());
          });
        });
      })
      .then(function (body) {
        return { result: body };
      })
      .catch(function (e) {
        throw toError(e);
      });
  }

  // ---- pay -------------------------------------------------------------------------------

  function openCashier(orderResult) {
    return new Promise(function (resolve) {
      var params = paymentParams(orderResult.payment);
      var api = w.requestPayment;
      if (needsOrderPayment(orderResult) && typeof w.requestOrderPayment === 'function') {
        api = w.requestOrderPayment;
        if (orderResult.orderInfo) params.orderInfo = orderResult.orderInfo;
      }
      params.success = function () {
        resolve({ cashier: 'ok' });
      };
      params.fail = function (res) {
        resolve({ cashier: cashierOutcome(res), errMsg: res && res.errMsg });
      };
      try {
        api.call(w, params);
      } catch (e) {
        resolve({ cashier: 'fail', errMsg: e && e.message });
      }
    });
  }

  /**
   * Poll queryOrder until a paid (or final) status or the deadline, boundMs from now. Never
   * rejects. Each query's request timeout is cut to the time left, so one slow answer cannot
   * hold pay() past the deadline; no query starts with less than minQueryMs left (it could not
   * be answered in time).
   */
  function pollOrder(outTradeNo, boundMs) {
    var deadline = Date.now() + boundMs;
    var minQueryMs = Math.min(100, poll.intervalMs);
    var lastOrder = null;
    var lastError = null;
    function once() {
      return callFunctionBy({ name: 'queryOrder', data: { out_trade_no: outTradeNo } }, deadline).then(
        function (r) {
          var order = r.result && r.result.order ? r.result.order : null;
          if (order) lastOrder = order;
          lastError = null;
          var st = order && order.status;
          if (PAID_STATUSES.indexOf(st) >= 0 || FINAL_UNPAID_STATUSES.indexOf(st) >= 0) return true;
          return false;
        },
        function (e) {
          lastError = e;
          // A 4xx other than a transient one will not fix itself: stop early.
          return e.statusCode >= 400 && e.statusCode < 500 && e.statusCode !== 429;
        }
      );
    }
    function loop() {
      return once().then(function (done) {
        var left = deadline - Date.now();
        if (done || left < minQueryMs) return { order: lastOrder, error: lastError };
        return delay(Math.min(poll.intervalMs, left - minQueryMs)).then(loop);
      });
    }
    return loop();
  }

  /**
   * pay(unifiedOrder result) → { paid, order, cashier } after asking the server.
   * Rejects only when the argument is unusable; payment failures resolve with paid: false.
   * An order the result already says is paid or closed (unifiedOrder answering a repeated
   * idempotency key with the order as it is now) opens no cashier (`cashier: 'none'`): paying
   * it again could only fail, or confuse the user. The server is still asked.
   */
  function pay(orderResult) {
    if (!orderResult || !orderResult.out_trade_no || !orderResult.payment) {
      return Promise.reject(makeError('INVALID_ARGUMENT', 'pay: expected the result of unifiedOrder', 0));
    }
    var settled =
      PAID_STATUSES.indexOf(orderResult.status) >= 0 || FINAL_UNPAID_STATUSES.indexOf(orderResult.status) >= 0;
    var cashier = settled ? Promise.resolve({ cashier: 'none' }) : openCashier(orderResult);
    return cashier.then(function (c) {
      return afterCashier(orderResult.out_trade_no, c);
    });
  }

  /** pay()'s second half: what the server says of order `outTradeNo` after cashier `c`. */
  function afterCashier(outTradeNo, c) {
    var bound = c.cashier === 'fail' || c.cashier === 'cancel' ? poll.failTimeoutMs : poll.timeoutMs;
    return pollOrder(outTradeNo, bound).then(function (p) {
      var status = p.order && p.order.status;
      var out = {
        paid: PAID_STATUSES.indexOf(status) >= 0,
        order: p.order,
        cashier: c.cashier,
        out_trade_no: outTradeNo,
      };
      if (c.errMsg) out.errMsg = c.errMsg;
      if (p.error) out.error = p.error;
      return out;
    });
  }

  // ---- buy -------------------------------------------------------------------------------

  /**
   * The server's word that an idempotency key is spent: sent again, it would be refused again
   * (ORDER_NOT_OPEN: its order was closed while this call opened it — "order again with a new
   * key"; the same key would then be ORDER_CLOSED).
   */
  function isSpentKeyError(err) {
    return err.code === 'IDEMPOTENCY_KEY_REUSED' || err.code === 'ORDER_CLOSED' || err.code === 'ORDER_NOT_OPEN';
  }

  function enterScene() {
    try {
      if (typeof w.getEnterOptionsSync === 'function') {
        var o = w.getEnterOptionsSync();
        if (o && o.scene !== undefined) return Number(o.scene);
      }
      if (typeof w.getLaunchOptionsSync === 'function') {
        var l = w.getLaunchOptionsSync();
        if (l && l.scene !== undefined) return Number(l.scene);
      }
    } catch (e) {
      /* no scene: the server treats it as an ordinary order */
    }
    return undefined;
  }

  /**
   * WeChat's pre-order check, `wx.checkBeforeAddOrder` (base library with the trading
   * component; WECHAT_SHOP.md §4 and §14.4). Public integrations call it with callbacks only and
   * read `res.data.{requireOrder, requiredFundType, traceId}`; that shape is what WeChat's doc
   * pages and those integrations agree on, the rest is UNVERIFIED: an answer without `data`
   * is read flat, one without requireOrder counts as a failed check. The traceId is valid for
   * minutes, so it is asked for right before each order. Never rejects; resolves
   * - { status: 'ok', requireOrder, requiredFundType, traceId };
   * - { status: 'unavailable' }: the base library has no such API (older WeChat, or the mini
   *   program has no trading component);
   * - { status: 'failed', errMsg }: its fail callback, a throw, a malformed answer, or no answer
   *   within orderCheck.timeoutMs.
   */
  function runOrderCheck() {
    if (typeof w.checkBeforeAddOrder !== 'function') return Promise.resolve({ status: 'unavailable' });
    return new Promise(function (resolve) {
      var timer = null;
      var done = false;
      function finish(r) {
        if (done) return;
        done = true;
        if (timer !== null) clearTimeout(timer);
        resolve(r);
      }
      timer = setTimeout(function () {
        finish({ status: 'failed', errMsg: 'checkBeforeAddOrder: no answer within ' + orderCheck.timeoutMs + ' ms' });
      }, orderCheck.timeoutMs);
      try {
        w.checkBeforeAddOrder({
          success: function (res) {
            var d = res && res.data && typeof res.data === 'object' ? res.data : res;
            if (!d || d.requireOrder === undefined || d.requireOrder === null) {
              return finish({ status: 'failed', errMsg: 'checkBeforeAddOrder: an answer without requireOrder' });
            }
            var out = { status: 'ok', requireOrder: Number(d.requireOrder) };
            if (d.requiredFundType !== undefined && d.requiredFundType !== null) out.requiredFundType = Number(d.requiredFundType);
            if (d.traceId !== undefined) out.traceId = d.traceId;
            finish(out);
          },
          fail: function (res) {
            finish({ status: 'failed', errMsg: (res && res.errMsg) || 'checkBeforeAddOrder:fail' });
          },
        });
      } catch (e) {
        finish({ status: 'failed', errMsg: 'checkBeforeAddOrder threw: ' + (e && e.message ? e.message : String(e)) });
      }
    });
  }

  /**
   * buy()'s pre-order step → resolves what the check said (runOrderCheck's answer, or
   * { status: 'off' } / { status: 'caller' } when it was not run), or rejects (error shape)
   * when the purchase must not go on: ORDER_TYPE_UNSUPPORTED (orderTypeRefusal), or
   * ORDER_CHECK_FAILED when the check is required and missing or failed. A failed check that
   * is not required is logged (console.warn) and reported in buy's result, never swallowed.
   */
  function preOrderCheck(callerTraceId) {
    if (callerTraceId) return Promise.resolve({ status: 'caller' });
    if (!orderCheck.enabled) return Promise.resolve({ status: 'off' });
    return runOrderCheck().then(function (c) {
      if (c.status !== 'ok') {
        if (orderCheck.required) {
          var what = c.status === 'unavailable' ? 'wx.checkBeforeAddOrder is not available in this base library' : c.errMsg;
          throw makeError('ORDER_CHECK_FAILED', "WeChat's pre-order check is required and did not answer: " + what, 0, { orderCheck: c });
        }
        if (c.status === 'failed' && typeof console !== 'undefined' && console.warn) {
          console.warn('wxshop: wx.checkBeforeAddOrder failed, ordering without a trace id:', c.errMsg);
        }
        return c;
      }
      if (c.requireOrder !== 1) return c;
      return shopOrders().then(function (shop) {
        var refusal = orderTypeRefusal(c, shop);
        if (refusal) throw assign(refusal, { orderCheck: c });
        return c;
      });
    });
  }

  /**
   * unifiedOrder with `data` (which carries its idempotency_key), sent again with the same
   * body while isRetryableOrderError says the outcome is unknown or transient, within
   * orderRetry's attempts and budget. The server answers a key it completed with the stored
   * order, so the retries never make a second one.
   */
  function placeOrder(data) {
    return sendAgainWhileUnknown('unifiedOrder', data, isRetryableOrderError).then(function (r) {
      var result = r.result;
      if (!result || !result.out_trade_no || !result.payment) {
        throw makeError('BAD_RESPONSE', 'unifiedOrder returned no payment parameters', 200);
      }
      return result;
    });
  }

  /**
   * The user's own close (`queryOrder` `close`, as orders.close) of order `outTradeNo`, which a
   * spent idempotency key holds, sent again while the outcome is unknown or transient (a close
   * is idempotent) → resolves 'closed' (closed now or before: its stock is back), 'paid' (409
   * ORDER_PAID: it was paid, the server asked WeChat Pay first) or 'missing' (404
   * ORDER_NOT_FOUND: the key's attempt never wrote it); rejects (error shape) otherwise.
   */
  function closeHeldOrder(outTradeNo) {
    return sendAgainWhileUnknown('queryOrder', { out_trade_no: outTradeNo, action: 'close' }, isTransientFailure).then(
      function () {
        return 'closed';
      },
      function (e) {
        var err = toError(e);
        if (err.code === 'ORDER_PAID') return 'paid';
        if (err.code === 'ORDER_NOT_FOUND') return 'missing';
        throw err;
      }
    );
  }

  /**
   * Calls function `name` with `data` (which carries its idempotency_key), sending the same
   * body again while `isRetryable(error)` says the outcome is unknown or transient, within
   * orderRetry's attempts and budget.
   */
  function sendAgainWhileUnknown(name, data, isRetryable) {
    var started = Date.now();
    var attempt = 1;
    function once() {
      return callFunction({ name: name, data: data }).catch(function (e) {
        if (!isRetryable(e) || attempt >= orderRetry.attempts) throw e;
        var wait = Math.min(orderRetry.delayMs * Math.pow(2, attempt - 1), orderRetry.maxDelayMs);
        if (Date.now() - started + wait > orderRetry.budgetMs) throw e;
        attempt += 1;
        return delay(wait).then(once);
      });
    }
    return once();
  }

  /**
   * buy({ items, address?, idempotencyKey?, traceId? }) → preOrderCheck, unifiedOrder, pay;
   * resolves pay()'s result plus `orderCheck` (what the pre-order check said), and, when the
   * order is not paid (cancelled or failed cashier, the server not reached) and not closed,
   * `idempotencyKey`: buy again with the same items, address and that key to pay the same
   * order (the server answers it with the order's payment parameters), not a second one.
   * Rejects before anything is made when preOrderCheck refuses (ORDER_TYPE_UNSUPPORTED,
   * ORDER_CHECK_FAILED): with no `idempotencyKey` for a fresh key (nothing was sent for it, there
   * is nothing to pick up), but with the key passed in when there was one: its order (an earlier
   * attempt's, unpaid) still holds its stock, and buy again with that key, once the check
   * allows it, pays that order instead of making a second one. So on every rejection: a key
   * passed in is handed back unless the server said it is spent (ORDER_CLOSED, ORDER_NOT_OPEN,
   * IDEMPOTENCY_KEY_REUSED), or buy replaced its order (then the error names its own key).
   * Rejects (error shape, plus `idempotencyKey`) when it got no payment parameters: the server
   * refused the cart, or the outcome stayed unknown after placeOrder's retries, in which case
   * the order may exist. Call buy again with the same items and `idempotencyKey:
   * err.idempotencyKey` to retry that purchase without creating a second order.
   *
   * A key passed back that the server refuses for this request (422 IDEMPOTENCY_KEY_REUSED:
   * the request changed since, typically the enter scene, as when the user comes back through
   * another entry) still holds its order, which the refusal names (`out_trade_no`). That order
   * is closed first, as the user's own close (orders.close; its stock goes back), and the
   * purchase made afresh under a new key: the result then carries `previousOrder: {
   * out_trade_no, outcome: 'closed' | 'missing' }`. If the server says that order was paid
   * (409 ORDER_PAID), nothing new is made: the result is that order, paid (`cashier: 'none'`,
   * `previousOrder.outcome: 'paid'`). If the close fails, buy rejects with its error, carrying
   * the key passed in: the next try closes it again. A refusal without `out_trade_no` (an older
   * server) rejects without a key, as before.
   */
  function buy(params) {
    params = params || {};
    if (!Array.isArray(params.items) || params.items.length === 0) {
      // Nothing sent: a key passed in still holds whatever it held.
      var kept = params.idempotencyKey ? { idempotencyKey: params.idempotencyKey } : undefined;
      return Promise.reject(makeError('INVALID_ARGUMENT', 'buy: items must be a non-empty array', 0, kept));
    }
    var key = params.idempotencyKey || newIdempotencyKey();
    // Passed back by the page (an earlier purchase not paid yet): the one key whose order may be
    // replaced, once, when the server says the request changed.
    var passedBack = Boolean(params.idempotencyKey);
    var previousOrder = null;
    var data = { items: params.items, idempotency_key: key };
    // Delivery address { receiver_name, detailed_address, tel_number, province?, city?, town? };
    // required by the server when the order goes through the trading component.
    if (params.address) data.address = params.address;
    var scene = enterScene();
    if (scene !== undefined && !isNaN(scene)) data.scene = scene;
    // A `traceId` the page got from its own wx.checkBeforeAddOrder wins; buy then runs no check
    // (and forwards that check's `requireOrder` when the page passes it).
    if (params.traceId) data.trace_id = params.traceId;
    if (params.traceId && isRequireOrder(params.requireOrder)) data.require_order = params.requireOrder;
    var check = null;
    var placed = false; // the order call was sent (under `key`)

    /**
     * The 422 for a passed-back key whose request changed: close the order it holds, then
     * order under a new key (resolves its result), or resolve { paidAlready } when that order
     * turns out paid.
     */
    function replaceHeldOrder(err) {
      var held = err.out_trade_no;
      return closeHeldOrder(held).then(
        function (outcome) {
          previousOrder = { out_trade_no: held, outcome: outcome };
          if (outcome === 'paid') return { paidAlready: held };
          key = newIdempotencyKey();
          data = assign({}, data, { idempotency_key: key }); // a new body: the first was sent
          return placeOrder(data);
        },
        function (e) {
          // Still open (or unknown): the same key brings the next try back here.
          throw assign({}, toError(e), { idempotencyKey: key, previousOrder: { out_trade_no: held, outcome: 'open' } });
        }
      );
    }

    return preOrderCheck(params.traceId)
      .catch(function (e) {
        // Refused before anything was sent. A fresh key stands for nothing: none to hand back.
        // A key passed back still holds its order (unpaid, its stock held until it expires):
        // handed back, so the next try (from where the check allows it) pays that order, not a
        // second one.
        throw assign({}, toError(e), passedBack ? { idempotencyKey: key } : null);
      })
      .then(function (c) {
        check = c;
        if (c.traceId !== undefined) {
          if (usableTraceId(c.traceId)) data.trace_id = c.traceId;
          else c.traceIdDropped = true; // the server would refuse it (BAD_TRACE_ID)
        }
        // The check's verdict: with WX_TRADING_COMPONENT=scene the server goes by it instead
        // of asking WeChat's deprecated shop/scene/check.
        if (c.status === 'ok' && isRequireOrder(c.requireOrder)) data.require_order = c.requireOrder;
        placed = true;
        return placeOrder(data)
          .catch(function (e) {
            var err = toError(e);
            if (passedBack && err.code === 'IDEMPOTENCY_KEY_REUSED' && err.out_trade_no) return replaceHeldOrder(err);
            throw err;
          })
          .catch(function (e) {
            var err = toError(e);
            if (err.previousOrder) throw err; // replaceHeldOrder's: it carries its key
            // A key the server says is spent (used for another cart, address or scene, or its
            // order closed) must not be sent again: the next try is a new purchase.
            if (isSpentKeyError(err)) throw err;
            throw assign({}, err, { idempotencyKey: key }, previousOrder ? { previousOrder: previousOrder } : null);
          });
      })
      .then(function (result) {
        return result.paidAlready ? afterCashier(result.paidAlready, { cashier: 'none' }) : pay(result);
      })
      .then(function (r) {
        var out = assign(r, { orderCheck: check });
        if (previousOrder) out.previousOrder = previousOrder;
        // Not paid (a cancelled or failed cashier, or no word from the server yet): the order
        // stays payable until it expires, and the same key brings it back with its payment
        // parameters instead of making a second one. None once it is paid or closed.
        var status = r.order && r.order.status;
        if (!r.paid && FINAL_UNPAID_STATUSES.indexOf(status) < 0) out.idempotencyKey = key;
        return out;
      })
      .catch(function (e) {
        // Whatever else failed on the way (after the order call), a key the server did not
        // refuse may hold an order: hand it back, as the steps above do.
        var err = toError(e);
        if (err.idempotencyKey !== undefined || err.previousOrder || isSpentKeyError(err)) throw err;
        if (!passedBack && !placed) throw err; // a fresh key never sent: it holds nothing
        throw assign({}, err, { idempotencyKey: key });
      });
  }

  // ---- after-sales ---------------------------------------------------------------------------

  function aftersaleCall(data) {
    return callFunction({ name: 'aftersaleSync', data: data }).then(function (r) {
      return r.result;
    });
  }

  function missing(what, params, names) {
    for (var i = 0; i < names.length; i++) {
      var v = params[names[i]];
      if (typeof v !== 'string' || v.trim() === '') {
        return Promise.reject(makeError('INVALID_ARGUMENT', what + ': ' + names[i] + ' is required', 0));
      }
    }
    return null;
  }

  var aftersale = {
    /**
     * Asks for money back on a paid order: { out_trade_no, product_id?, sku_id?, quantity?,
     * amount? (fen), reason?, type?: 'refund' | 'return', idempotencyKey? } → { aftersale }.
     * The product line it is about is one of the order's items, named by product_id and sku_id
     * together (as in the order's items), with quantity (default: all of it not under an
     * after-sale yet); an order with several items in the trading component needs one (400
     * LINE_REQUIRED otherwise), an order with one item defaults to it. amount defaults to the
     * line's value (unit price × quantity), and to all that is refundable (freight included)
     * for the rest of an order's only item. The answer's aftersale carries product_id, sku_id and
     * quantity when it has a line.
     * One application however often it is sent: it carries an idempotency key (made here
     * unless given), is sent again with it while the outcome is unknown (as buy's order), and
     * the server answers a repeated key with the same after-sale. A rejection carries the key
     * (`err.idempotencyKey`): pass it back to retry that application, not to open a second;
     * except 422 IDEMPOTENCY_KEY_REUSED (the key named another amount, type or line): it is spent.
     */
    apply: function (params) {
      params = params || {};
      var bad = missing('aftersale.apply', params, ['out_trade_no']);
      if (bad) return bad;
      if (params.type !== undefined && params.type !== 'refund' && params.type !== 'return') {
        return Promise.reject(makeError('INVALID_ARGUMENT', "aftersale.apply: type is 'refund' or 'return'", 0));
      }
      var hasLine = params.product_id !== undefined || params.sku_id !== undefined;
      if (hasLine || params.quantity !== undefined) {
        bad = missing('aftersale.apply', params, ['product_id', 'sku_id']);
        if (bad) return bad;
      }
      if (params.quantity !== undefined && !(Number.isInteger(params.quantity) && params.quantity >= 1)) {
        return Promise.reject(makeError('INVALID_ARGUMENT', 'aftersale.apply: quantity is a whole number of at least 1', 0));
      }
      // Fen, as every amount the server takes and gives: 19.9 (yuan) or '1990' would only be
      // refused with a serde message, and a rounded yuan figure is not the order's own amount.
      if (params.amount !== undefined && !(Number.isSafeInteger(params.amount) && params.amount >= 1)) {
        return Promise.reject(
          makeError('INVALID_ARGUMENT', 'aftersale.apply: amount is in fen, a whole number of at least 1 (leave it out for the default)', 0)
        );
      }
      var key = params.idempotencyKey || newIdempotencyKey();
      var data = { action: 'apply', out_trade_no: params.out_trade_no, idempotency_key: key };
      if (hasLine) {
        data.product_id = params.product_id;
        data.sku_id = params.sku_id;
      }
      if (params.quantity !== undefined) data.quantity = params.quantity;
      if (params.amount !== undefined) data.amount = params.amount;
      if (params.reason !== undefined) data.reason = params.reason;
      if (params.type !== undefined) data.type = params.type;
      return sendAgainWhileUnknown('aftersaleSync', data, isRetryableApplyError)
        .then(function (r) {
          return r.result;
        })
        .catch(function (e) {
          var err = toError(e);
          if (err.code === 'IDEMPOTENCY_KEY_REUSED') throw err; // spent: the next try is a new application
          throw assign({}, err, { idempotencyKey: key });
        });
    },
    /**
     * Return and refund, once the merchant accepted the return (status AWAITING_RETURN, the
     * address in aftersale.goods_return.address): the parcel the goods went back in,
     * { aftersale_id, delivery_id, delivery_name, waybill_id } → { aftersale } (RETURNING).
     */
    sendBack: function (params) {
      params = params || {};
      var names = ['aftersale_id', 'delivery_id', 'delivery_name', 'waybill_id'];
      var bad = missing('aftersale.sendBack', params, names);
      if (bad) return bad;
      var data = { action: 'return' };
      names.forEach(function (k) {
        data[k] = params[k];
      });
      return aftersaleCall(data);
    },
    /** Withdraws a request not yet under way (REQUESTED or AWAITING_RETURN) → { aftersale }. */
    cancel: function (aftersaleId) {
      var bad = missing('aftersale.cancel', { aftersale_id: aftersaleId }, ['aftersale_id']);
      if (bad) return bad;
      return aftersaleCall({ action: 'cancel', aftersale_id: aftersaleId });
    },
    /** The order's after-sales, oldest first → [aftersale]. */
    list: function (outTradeNo) {
      var bad = missing('aftersale.list', { out_trade_no: outTradeNo }, ['out_trade_no']);
      if (bad) return bad;
      return aftersaleCall({ action: 'list', out_trade_no: outTradeNo }).then(function (r) {
        return (r && r.aftersales) || [];
      });
    },
  };

  // ---- orders ----------------------------------------------------------------------------

  /** queryOrder with `data` → the answer's order (for one order's actions). */
  function orderCall(what, outTradeNo, action) {
    var bad = missing(what, { out_trade_no: outTradeNo }, ['out_trade_no']);
    if (bad) return bad;
    var data = { out_trade_no: outTradeNo };
    if (action) data.action = action;
    return callFunction({ name: 'queryOrder', data: data }).then(function (r) {
      var order = r.result && r.result.order;
      if (!order || typeof order !== 'object') throw makeError('BAD_RESPONSE', 'queryOrder returned no order', 200);
      return order;
    });
  }

  /**
   * The user's orders, all through `queryOrder` (the server's view; amounts in fen:
   * total_fee, refunded_fee, items[].unit_price; once shipped, delivery and shipped_at_ms,
   * epoch ms). Rejects with the error shape, e.g. 404
   * ORDER_NOT_FOUND (not this user's), 409 ORDER_PAID (close), 409 ORDER_NOT_SHIPPED or
   * ORDER_REFUNDED (confirm).
   */
  var orders = {
    /**
     * The user's orders, newest first: { limit? (1–100, default 20), cursor? } →
     * { orders: [order], next } where `next` (null on the last page) is the cursor of the next.
     */
    list: function (params) {
      params = params || {};
      var data = {};
      if (params.limit !== undefined) {
        if (!(Number.isInteger(params.limit) && params.limit >= 1 && params.limit <= 100)) {
          return Promise.reject(makeError('INVALID_ARGUMENT', 'orders.list: limit is a whole number from 1 to 100', 0));
        }
        data.limit = params.limit;
      }
      if (params.cursor !== undefined && params.cursor !== null) {
        if (typeof params.cursor !== 'string' || params.cursor === '') {
          return Promise.reject(makeError('INVALID_ARGUMENT', 'orders.list: cursor is the `next` of an earlier page', 0));
        }
        data.cursor = params.cursor;
      }
      return callFunction({ name: 'queryOrder', data: data }).then(function (r) {
        var res = r.result || {};
        return { orders: Array.isArray(res.orders) ? res.orders : [], next: typeof res.next === 'string' && res.next ? res.next : null };
      });
    },
    /** One order → order. An unpaid one is checked with WeChat Pay first, so it reads paid once it is. */
    get: function (outTradeNo) {
      return orderCall('orders.get', outTradeNo, null);
    },
    /** Closes an unpaid order (its stock goes back) → order (CLOSED); 409 ORDER_PAID when it was paid. */
    close: function (outTradeNo) {
      return orderCall('orders.close', outTradeNo, 'close');
    },
    /** Confirms receipt of a shipped order → order (RECEIVED); 409 ORDER_NOT_SHIPPED before it shipped, ORDER_REFUNDED once refunded in full. */
    confirmReceipt: function (outTradeNo) {
      return orderCall('orders.confirmReceipt', outTradeNo, 'confirm');
    },
  };

  // ---- catalog ---------------------------------------------------------------------------

  /**
   * The products the user can order now, through `catalogSync` `products`: { limit? (1–100,
   * default 20), cursor? } → { products: [product], next } where `next` (null on the last page)
   * is the cursor of the next. A page may hold fewer than `limit` (even none) with `next` set:
   * follow `next` until it is null. Amounts in fen (skus[].price is what unifiedOrder charges).
   */
  function products(params) {
    params = params || {};
    var data = { action: 'products' };
    if (params.limit !== undefined) {
      if (!(Number.isInteger(params.limit) && params.limit >= 1 && params.limit <= 100)) {
        return Promise.reject(makeError('INVALID_ARGUMENT', 'products: limit is a whole number from 1 to 100', 0));
      }
      data.limit = params.limit;
    }
    if (params.cursor !== undefined && params.cursor !== null) {
      if (typeof params.cursor !== 'string' || params.cursor === '') {
        return Promise.reject(makeError('INVALID_ARGUMENT', 'products: cursor is the `next` of an earlier page', 0));
      }
      data.cursor = params.cursor;
    }
    return callFunction({ name: 'catalogSync', data: data }).then(function (r) {
      var res = r.result || {};
      return {
        products: Array.isArray(res.products) ? res.products : [],
        next: typeof res.next === 'string' && res.next ? res.next : null,
      };
    });
  }

  /**
   * One product the user can order now, through `catalogSync` `get` → product; 404
   * NO_SUCH_PRODUCT for one that is unknown or not for sale.
   */
  function product(productId) {
    var bad = missing('product', { product_id: productId }, ['product_id']);
    if (bad) return bad;
    return callFunction({ name: 'catalogSync', data: { action: 'get', product_id: productId } }).then(function (r) {
      var p = r.result && r.result.product;
      if (!p || typeof p !== 'object') throw makeError('BAD_RESPONSE', 'catalogSync returned no product', 200);
      return p;
    });
  }

  return {
    login: login,
    callFunction: callFunction,
    pay: pay,
    buy: buy,
    products: products,
    product: product,
    aftersale: aftersale,
    orders: orders,
    /** The stored session ({ token, expires_at, openid, fund_type?, trading_component? }) or null. */
    session: readSession,
    /** Forget the stored session (e.g. on logout). */
    logout: clearSession,
  };
}

/**
 * An amount in fen as yuan for display: formatFen(1999) === '19.99', formatFen(5) === '0.05'.
 * By digits, never through a float (0.1 + 0.2 is not 0.3). Anything but a whole number of fen
 * from 0 up (a yuan figure like 19.9, a string, a negative amount) throws a TypeError: that is
 * a bug in the page, not something to show the user.
 */
function formatFen(fen) {
  if (!Number.isSafeInteger(fen) || fen < 0) {
    throw new TypeError('formatFen: expected a whole number of fen from 0 up, got ' + String(fen));
  }
  var digits = String(fen);
  while (digits.length < 3) digits = '0' + digits;
  return digits.slice(0, -2) + '.' + digits.slice(-2);
}

module.exports = {
  createClient: createClient,
  addressFromWx: addressFromWx,
  formatFen: formatFen,
  PAID_STATUSES: PAID_STATUSES,
  // exported for tests
  _internal: {
    httpError: httpError,
    newIdempotencyKey: newIdempotencyKey,
    needsOrderPayment: needsOrderPayment,
    isRetryableOrderError: isRetryableOrderError,
    isRetryableApplyError: isRetryableApplyError,
    orderTypeRefusal: orderTypeRefusal,
    usableTraceId: usableTraceId,
  },
};
