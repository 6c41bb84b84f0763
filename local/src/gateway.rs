//! The local gateway: one process with every function behind the same routing table the SAM
//! template is tested against (`wxshop::handlers::ROUTES`), the WeChat sandbox mounted at
//! `/sandbox`, the outbox relay (what the DynamoDB stream does in AWS) and the schedule.
//!
//! Configuration comes from the same environment variables as Lambda — every one `Config`
//! reads — and anything unset gets a documented local default that points every WeChat call
//! at the sandbox ([`LocalVars`]).
//!
//! The sandbox lives as long as the store: with a SQLite file store its state is kept beside
//! it ([`sandbox_state_path`]), because WeChat does not forget what our store refers to, and
//! a start whose two files do not belong together stops and says what to do
//! ([`check_store_and_sandbox`]). One `serve` at a time per store file: a second one on the
//! same store refuses to start ([`crate::lock`]).

use crate::sandbox::{Sandbox, SandboxConfig};
use axum::body::Body;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wxshop::app::{open_store, App};
use wxshop::config::{Config, StoreConfig};
use wxshop::handlers::{self, Caller};
use wxshop::http::ApiError;
use wxshop::time::Clock;

/// Largest request body the gateway passes on (API Gateway's own limit is 10 MB; nothing of
/// ours needs more than a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Local defaults: never real credentials. The WeChat hosts, the notify URLs and `STORE`
/// default too, to this gateway's sandbox and callbacks and `sqlite:.wxlocal/wxshop.db`
/// ([`LocalVars::new`]); everything else gets `Config`'s own default.
pub const LOCAL_DEFAULTS: &[(&str, &str)] = &[
    ("WX_APPID", "wx0000000000000001"),
    ("WX_APPSECRET", "local-appsecret-0000000000000001"),
    ("WXPAY_MCH_ID", "1900000001"),
    ("WXPAY_API_KEY", "localapikey000000000000000000001"),
    ("SESSION_SECRET", "local-session-secret-000000000000000000"),
    ("WX_PUSH_TOKEN", "localpushtoken"),
    ("WX_TRADING_COMPONENT", "always"),
    ("ADMIN_TOKEN", "local-admin-token"),
];

/// Variables whose local default points at this gateway — its sandbox and its callbacks. Set
/// in the environment they are honoured, and start-up warns that calls or notifications go
/// elsewhere.
pub const SANDBOX_TIED: [&str; 4] = [
    "WXPAY_BASE_URL",
    "WX_API_BASE_URL",
    "WXPAY_NOTIFY_URL",
    "WXPAY_REFUND_NOTIFY_URL",
];

/// Appended to a SQLite store's path to name the file the sandbox keeps its state in, like
/// SQLite's own `-wal` and `-shm`: one state per store, removed by the same `rm wxshop.db*`.
pub const SANDBOX_STATE_SUFFIX: &str = "-sandbox.json";

/// The sandbox's state file for `store`: beside a SQLite file; `None` for stores that do not
/// outlive the process (`memory`, SQLite's `:memory:`) and for DynamoDB (no file of ours).
pub fn sandbox_state_path(store: &StoreConfig) -> Option<std::path::PathBuf> {
    match store {
        StoreConfig::Sqlite(p) if p != ":memory:" => Some(std::path::PathBuf::from(format!(
            "{p}{SANDBOX_STATE_SUFFIX}"
        ))),
        _ => None,
    }
}

/// What to do when the store and the sandbox's state do not belong together.
fn start_afresh_hint(store: &str, state: &std::path::Path) -> String {
    format!(
        "to start afresh delete both {store} (with its -wal and -shm files) and {} (with the \
         .journal beside it) — with the default store: rm -r .wxlocal — or run with --store \
         memory",
        state.display()
    )
}

/// Every product our store has at WeChat must be known to the sandbox under the same id, as
/// it would be at WeChat: otherwise one of the two files was deleted or replaced (or the store
/// was made by a wxlocal that did not keep the sandbox's state), and seeding, ordering and
/// syncing would fail later with "product not exist" and nothing to say why.
async fn check_store_and_sandbox(app: &App, sandbox: &Sandbox, store: &str) -> Result<(), String> {
    let Some(state) = sandbox.state_file() else {
        return Ok(());
    };
    let known = sandbox.product_ids();
    let mut unknown = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = wxshop::store::repo::list_products(
            app.store.as_ref(),
            wxshop::store::repo::ProductFilter::All,
            100,
            cursor,
        )
        .await
        .map_err(|e| format!("cannot read the store {store}: {e}"))?;
        for p in page {
            let p = p.value;
            if let Some(wx) = p.wx_product_id {
                if known.get(p.product_id.as_str()) != Some(&wx) {
                    unknown.push(p.product_id.to_string());
                }
            }
        }
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the store {store} and the WeChat sandbox's state {} do not belong together: the \
         store's product(s) {} are not in the sandbox as the store knows them (was one of the \
         two files deleted or replaced, or the store made by an older wxlocal, which kept the \
         sandbox in memory only?); {}",
        state.display(),
        unknown.join(", "),
        start_afresh_hint(store, state)
    ))
}

/// Where a configuration value came from, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// [`Options::overrides`] (tests, the demo).
    Override,
    /// `--store` ([`Options::store`]).
    StoreFlag,
    /// The environment, as in Lambda (empty values count as unset, as there).
    Environment,
    /// [`LOCAL_DEFAULTS`], or a URL of the running gateway ([`SANDBOX_TIED`], `STORE`).
    LocalDefault,
}

/// The configuration a local stack runs with: every variable [`Config`] reads is looked up in
/// the overrides, then `--store` (for `STORE`), then the environment, then the local
/// defaults. Nothing is filtered by name, so a variable `Config` learns to read is honoured
/// here without a change.
pub struct LocalVars {
    defaults: HashMap<String, String>,
    store_flag: Option<String>,
    overrides: HashMap<String, String>,
    env: EnvLookup,
}

/// Stands in for `std::env::var` (tests pass their own).
type EnvLookup = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

impl LocalVars {
    /// `base_url` is the running gateway's (`http://127.0.0.1:PORT`): the sandbox and the
    /// callbacks live under it.
    pub fn new(
        base_url: &str,
        store_flag: Option<String>,
        overrides: HashMap<String, String>,
        env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let mut defaults: HashMap<String, String> = LOCAL_DEFAULTS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        for (k, v) in [
            ("WXPAY_BASE_URL", format!("{base_url}/sandbox/mch")),
            ("WX_API_BASE_URL", format!("{base_url}/sandbox/api")),
            ("WXPAY_NOTIFY_URL", format!("{base_url}/callbacks/pay")),
            (
                "WXPAY_REFUND_NOTIFY_URL",
                format!("{base_url}/callbacks/refund"),
            ),
            ("STORE", "sqlite:.wxlocal/wxshop.db".to_owned()),
        ] {
            defaults.insert(k.to_owned(), v);
        }
        LocalVars {
            defaults,
            store_flag,
            overrides,
            env: Box::new(env),
        }
    }

    /// The value of `key` and where it came from.
    pub fn lookup(&self, key: &str) -> Option<(String, Source)> {
        if let Some(v) = self.overrides.get(key) {
            return Some((v.clone(), Source::Override));
        }
        if key == "STORE" {
            if let Some(s) = &self.store_flag {
                return Some((s.clone(), Source::StoreFlag));
            }
        }
        if let Some(v) = (self.env)(key).filter(|v| !v.trim().is_empty()) {
            return Some((v, Source::Environment));
        }
        self.defaults
            .get(key)
            .map(|v| (v.clone(), Source::LocalDefault))
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.lookup(key).map(|(v, _)| v)
    }

    /// The local default of `key`, whatever overrides it.
    pub fn default_of(&self, key: &str) -> Option<&str> {
        self.defaults.get(key).map(String::as_str)
    }

    /// Logs which of `keys` came from the environment (names only: values may be secrets),
    /// and warns for each [`SANDBOX_TIED`] one that no longer points at this gateway.
    pub fn log_sources(&self, keys: &std::collections::BTreeSet<String>) {
        let from_env: Vec<&str> = keys
            .iter()
            .filter(|k| matches!(self.lookup(k), Some((_, Source::Environment))))
            .map(String::as_str)
            .collect();
        if !from_env.is_empty() {
            tracing::info!(variables = %from_env.join(", "), "configuration taken from the environment");
        }
        for (key, value, local) in self.away_from_sandbox() {
            tracing::warn!(
                "{key}={value} (from the environment) is used instead of this gateway's {local}: \
                 those calls or notifications do not reach the local sandbox"
            );
        }
    }

    /// `(key, value, local default)` of each [`SANDBOX_TIED`] variable the environment points
    /// somewhere other than this gateway.
    pub fn away_from_sandbox(&self) -> Vec<(&'static str, String, String)> {
        SANDBOX_TIED
            .iter()
            .filter_map(|key| match self.lookup(key) {
                Some((value, Source::Environment)) => {
                    let local = self.default_of(key).unwrap_or_default().to_owned();
                    (value.trim_end_matches('/') != local).then_some((*key, value, local))
                }
                _ => None,
            })
            .collect()
    }
}

pub struct Options {
    pub addr: SocketAddr,
    /// `sqlite:PATH`, `memory` (default from `STORE`, else `sqlite:.wxlocal/wxshop.db`).
    pub store: Option<String>,
    /// Create the demo catalog (`tea` / `tea-250g`, 1990 fen).
    pub seed: bool,
    /// Sandbox time scale (1.0 real time).
    pub time_scale: f64,
    /// Extra variables that win over `store`, the environment and the defaults (tests).
    pub overrides: HashMap<String, String>,
    /// Read the process environment (off in tests for isolation): every variable `Config`
    /// reads is taken from it when set, over the local defaults.
    pub use_env: bool,
    /// How often the outbox relay looks for due work.
    pub relay_every: Duration,
    /// How often the schedule runs (EventBridge `rate(5 minutes)` in AWS): a minute for
    /// wxlocal. `None`: never by itself — tests run it when they choose
    /// (`/admin/orderSync {"action":"schedule"}`), so that a test slowed down by a loaded host
    /// never meets a sweep it did not ask for.
    pub schedule_every: Option<Duration>,
    /// Where the handlers' CloudWatch metrics go: off, as in Lambda only the entry point turns
    /// them on; a test passes [`wxshop::metrics::Metrics::capture`] to see what would page.
    pub metrics: wxshop::metrics::Metrics,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 8787)),
            store: None,
            seed: false,
            time_scale: 1.0,
            overrides: HashMap::new(),
            use_env: true,
            relay_every: Duration::from_millis(100),
            schedule_every: Some(Duration::from_secs(60)),
            metrics: wxshop::metrics::Metrics::off(),
        }
    }
}

/// A running local stack.
pub struct Running {
    pub base_url: String,
    pub addr: SocketAddr,
    pub app: App,
    pub sandbox: Sandbox,
    pub admin_token: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Requests under way, and whether new ones are still taken ([`Running::serve_until`]).
    life: Arc<Life>,
    /// Held as long as this stack runs on a SQLite file store ([`crate::lock`]).
    _store_lock: Option<crate::lock::StoreLock>,
}

/// How [`Running::serve_until`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The server ended on its own (it does not, unless it fails).
    Ended,
    /// Asked to stop: every request under way was answered, the sandbox's changes are saved.
    Drained,
    /// Asked to stop, and requests were still under way when the grace period ran out or a
    /// second stop came: they end as in a crash.
    Cut,
}

impl Running {
    /// Stops serving and the background loops.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Waits until the server task ends (never, unless stopped).
    pub async fn wait(mut self) {
        if let Some(server) = self.tasks.pop() {
            let _ = server.await;
        }
    }

    /// Serves until `stop()` resolves (Ctrl-C), then stops as a Lambda deployment does: new
    /// requests to the functions are answered 503 `STOPPING` (the sandbox still answers),
    /// requests under way run to their end — at most `grace`, or
    /// until `stop()` resolves again — and the sandbox's changes are on disk before the
    /// background loops stop. Killed outright instead, a request half done (an order made,
    /// its idempotency key still claimed) would answer the client's retry with
    /// `REQUEST_IN_PROGRESS` for 30 s after the restart.
    pub async fn serve_until<F, Fut>(mut self, stop: F, grace: Duration) -> Stopped
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let Some(mut server) = self.tasks.pop() else {
            return Stopped::Ended;
        };
        tokio::select! {
            _ = &mut server => return Stopped::Ended,
            () = stop() => {}
        }
        self.life.stopping.store(true, Ordering::SeqCst);
        // The listener stays open meanwhile: the requests under way call the sandbox (and it
        // calls back) through it.
        let under_way = async {
            while self.life.in_flight.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let drained = tokio::select! {
            r = tokio::time::timeout(grace, under_way) => r.is_ok(),
            () = stop() => false,
        };
        if drained {
            // Bounded: a sandbox that cannot write has logged why already. After a failed
            // write it tries once more now, the disk may have room again.
            let _ = tokio::time::timeout(grace, self.sandbox.flush()).await;
        }
        server.abort();
        self.stop();
        if drained {
            Stopped::Drained
        } else {
            Stopped::Cut
        }
    }
}

/// The gateway's requests under way, and whether it still takes new ones.
#[derive(Default)]
struct Life {
    stopping: AtomicBool,
    in_flight: AtomicUsize,
}

/// One request under way, counted in [`Life::in_flight`] until it is dropped.
struct UnderWay(Arc<Life>);

impl UnderWay {
    /// `None` once the gateway is stopping: the request is not taken.
    fn begin(life: &Arc<Life>) -> Option<UnderWay> {
        // Counted before the check: a stop that comes between them waits for this request.
        life.in_flight.fetch_add(1, Ordering::SeqCst);
        let taken = UnderWay(life.clone());
        (!life.stopping.load(Ordering::SeqCst)).then_some(taken)
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Clone)]
struct GatewayState {
    app: App,
    admin_token: Arc<String>,
    life: Arc<Life>,
    /// Each function's time ([`FUNCTION_TIME_VAR`]), as its Lambda's Timeout.
    function_time: Arc<FunctionTimes>,
}

/// The local variable that gives functions a time of their own, as their Lambda's `Timeout`
/// does: `unifiedOrder=3000,orderSync=60000` (function names as in the template, ms). A
/// request to such a function gets a deadline that long after it arrives, and every WeChat
/// and WeChat Pay call it makes is bounded by it ([`wxshop::time::bounded`]), as in Lambda.
/// Unset, or a function not named: no deadline, calls wait `WX_HTTP_TIMEOUT_MS` each (a
/// developer stopped at a breakpoint is not cut off).
pub const FUNCTION_TIME_VAR: &str = "WXLOCAL_FUNCTION_TIME_MS";

/// Parsed [`FUNCTION_TIME_VAR`]: function name → its time.
pub type FunctionTimes = HashMap<&'static str, Duration>;

/// Reads [`FUNCTION_TIME_VAR`]'s value; what is wrong with it, naming the functions, if it
/// does not read.
pub fn parse_function_times(text: &str) -> Result<FunctionTimes, String> {
    let mut times = FunctionTimes::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            let names: Vec<&str> = handlers::Function::ALL.iter().map(|f| f.name()).collect();
            format!(
                "{FUNCTION_TIME_VAR}: `{part}` is not FUNCTION=MS (MS 1..=900000, FUNCTION \
                 one of {})",
                names.join(", ")
            )
        };
        let (name, ms) = part.split_once('=').ok_or_else(bad)?;
        let function = handlers::Function::ALL
            .into_iter()
            .find(|f| f.name() == name.trim())
            .ok_or_else(bad)?;
        let ms: u64 = ms
            .trim()
            .parse()
            .ok()
            .filter(|ms| (1..=900_000).contains(ms))
            .ok_or_else(bad)?;
        times.insert(function.name(), Duration::from_millis(ms));
    }
    Ok(times)
}

/// Binds, builds the app and the sandbox, seeds if asked, and serves in the background.
/// Configuration: `opts.overrides`, then `opts.store`, then the process environment (when
/// `opts.use_env`), then the local defaults ([`LocalVars`]).
pub async fn start(opts: Options) -> Result<Running, String> {
    let use_env = opts.use_env;
    start_with_env(
        opts,
        move |k| {
            if use_env {
                std::env::var(k).ok()
            } else {
                None
            }
        },
    )
    .await
}

/// [`start`] with `env` standing in for the process environment (`opts.use_env` is not
/// consulted): tests start a gateway as a developer's shell would, without touching the
/// process's own environment.
pub async fn start_with_env(
    opts: Options,
    env: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> Result<Running, String> {
    let listener = match tokio::net::TcpListener::bind(opts.addr).await {
        Ok(l) => l,
        Err(e) => {
            // Most often the same serve started twice: say which process holds the store,
            // as a second serve on another address is told.
            let vars = LocalVars::new(
                &format!("http://{}", opts.addr),
                opts.store.clone(),
                opts.overrides.clone(),
                env,
            );
            let held = vars
                .get("STORE")
                .and_then(|s| StoreConfig::parse(&s, None).ok())
                .filter(|s| sandbox_state_path(s).is_some())
                .and_then(|s| match s {
                    StoreConfig::Sqlite(p) => crate::lock::held_by_another(&p),
                    _ => None,
                });
            return Err(match held {
                Some(why) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    format!("cannot listen on {}: {e}; {why}", opts.addr)
                }
                _ => cannot_listen(opts.addr, &e),
            });
        }
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let base_url = format!("http://{addr}");

    let vars = LocalVars::new(&base_url, opts.store.clone(), opts.overrides.clone(), env);
    if let Some(path) = vars
        .get("STORE")
        .and_then(|s| s.strip_prefix("sqlite:").map(str::to_owned))
    {
        if let Some(dir) = std::path::Path::new(&path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "cannot make the directory {} for the store sqlite:{path}: {e}; give \
                     --store sqlite:PATH a path in a directory you can write to, or run with \
                     --store memory",
                    dir.display()
                )
            })?;
        }
    }
    let asked = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let config = Config::from_lookup(|k| {
        asked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k.to_owned());
        vars.get(k)
    })
    .map_err(|e| e.to_string())?;
    let asked = asked.into_inner().unwrap_or_else(|e| e.into_inner());
    vars.log_sources(&asked);
    // Before the store or the sandbox's state file is opened (the sandbox writes its file at
    // once): a second stack on this store stops here.
    let store_lock = match &config.store {
        StoreConfig::Sqlite(p) if sandbox_state_path(&config.store).is_some() => {
            crate::lock::StoreLock::acquire(p, &base_url)?
        }
        _ => None,
    };
    let store = open_store(&config.store)
        .await
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let admin_token = vars.get("ADMIN_TOKEN").unwrap_or_default();
    let function_time = Arc::new(match vars.get(FUNCTION_TIME_VAR) {
        Some(text) => parse_function_times(&text)?,
        None => FunctionTimes::new(),
    });
    let sandbox_cfg = SandboxConfig {
        appid: config.appid.clone(),
        appsecret: secrecy::ExposeSecret::expose_secret(&config.appsecret).to_owned(),
        mch_id: config.mch_id.clone(),
        api_key: config.api_key().to_owned(),
        sub_mch_id: config.sub_mch_id.clone(),
        sub_appid: config.sub_appid.clone(),
        push_url: Some(format!("{base_url}/callbacks/wechat")),
        push_token: secrecy::ExposeSecret::expose_secret(&config.push_token).to_owned(),
        push_aes_key: config
            .push_aes_key
            .as_ref()
            .map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned()),
        time_scale: opts.time_scale,
        auto_audit: true,
        refund_interval_ms: crate::sandbox::mch::REFUND_INTERVAL_MS,
        refund_notify_url: Some(config.refund_notify_url.clone()),
        log_cap: crate::sandbox::LOG_CAP,
    };
    let sandbox = match sandbox_state_path(&config.store) {
        Some(path) => {
            Sandbox::with_state_file(sandbox_cfg, Clock::default(), &path).map_err(|e| {
                match &config.store {
                    StoreConfig::Sqlite(store) => {
                        format!("{e}; {}", start_afresh_hint(store, &path))
                    }
                    _ => e,
                }
            })?
        }
        None => {
            if matches!(config.store, StoreConfig::Dynamo { .. }) {
                tracing::warn!(
                    "the DynamoDB table outlives this process but the WeChat sandbox's state does \
                     not: after a restart the sandbox will not know the products and orders the \
                     table refers to (use a fresh table, or STORE=sqlite:PATH, whose sandbox \
                     state is kept beside it)"
                );
            }
            Sandbox::new(sandbox_cfg)
        }
    };
    let store_name = match &config.store {
        StoreConfig::Sqlite(p) => p.clone(),
        _ => String::new(),
    };
    let mut app = App::new(config, store, Clock::default()).map_err(|e| e.to_string())?;
    app.metrics = opts.metrics.clone();
    check_store_and_sandbox(&app, &sandbox, &store_name).await?;

    let life = Arc::new(Life::default());
    let state = GatewayState {
        app: app.clone(),
        admin_token: Arc::new(admin_token.clone()),
        life: life.clone(),
        function_time: function_time.clone(),
    };
    let functions: Router = Router::new().fallback(gateway).with_state(state);
    let router = Router::new()
        .nest("/sandbox", sandbox.router())
        .fallback_service(functions);

    let mut tasks = Vec::new();
    // Outbox relay: in AWS the table's stream triggers orderSync; here we poll.
    let relay_app = app.clone();
    let every = opts.relay_every;
    let relay_time = function_time
        .get(handlers::Function::OrderSync.name())
        .copied();
    tasks.push(tokio::spawn(async move {
        loop {
            // A round of the relay is an orderSync invocation: bounded by its time, if set.
            let deadline = relay_time.map(wxshop::time::Deadline::after);
            let drained =
                wxshop::time::bounded(deadline, handlers::order_sync::drain(&relay_app, 200)).await;
            if let Err(e) = drained {
                tracing::warn!(error = %e, "outbox relay");
            }
            tokio::time::sleep(every).await;
        }
    }));
    // The schedule (EventBridge rate(5 minutes) in AWS), a minute here by default.
    if let Some(every) = opts.schedule_every {
        let sched_app = app.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let deadline =
                    wxshop::time::Deadline::after(handlers::order_sync::LOCAL_SCHEDULE_BUDGET);
                let report = handlers::order_sync::on_schedule(&sched_app, deadline).await;
                tracing::info!(%report, "schedule ran");
            }
        }));
    }
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        {
            tracing::error!(error = %e, "server stopped");
        }
    }));

    let running = Running {
        base_url,
        addr,
        app,
        sandbox,
        admin_token,
        tasks,
        life,
        _store_lock: store_lock,
    };
    if opts.seed {
        seed(&running)
            .await
            .map_err(|e| match running.sandbox.state_file() {
                Some(state) => format!(
                    "{e}\n(if the store and the WeChat sandbox's state {} disagree: {})",
                    state.display(),
                    start_afresh_hint(&store_name, state)
                ),
                None => e,
            })?;
    }
    Ok(running)
}

/// Why `addr` cannot be listened on, and what to do about it.
pub fn cannot_listen(addr: SocketAddr, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let what = match e.kind() {
        ErrorKind::AddrInUse => format!(
            "another program already listens on port {} (another wxlocal? `ss -ltnp` names \
             it). Stop it, or choose a free port: --addr 127.0.0.1:0 lets the system pick one",
            addr.port()
        ),
        ErrorKind::AddrNotAvailable => format!(
            "{} is not an address of this machine: use 127.0.0.1 (this machine only) or \
             0.0.0.0 (every interface, e.g. for a phone on the same network)",
            addr.ip()
        ),
        ErrorKind::PermissionDenied => format!(
            "port {} needs privileges (ports below 1024 do): choose one above 1023, e.g. \
             --addr 127.0.0.1:8787",
            addr.port()
        ),
        _ => "check the address given with --addr".to_owned(),
    };
    format!("cannot listen on {addr}: {e}; {what}")
}

/// Routes one request through `ROUTES` to the shared handlers.
async fn gateway(
    State(state): State<GatewayState>,
    req: axum::extract::Request,
) -> axum::response::Response {
    let Some(under_way) = UnderWay::begin(&state.life) else {
        // 503: the mini-program client and WeChat's notifications try again later, and
        // meet the next start.
        return to_axum(
            ApiError::unavailable(
                "STOPPING",
                "wxlocal is stopping; retry once it is started again",
            )
            .into_response(),
        );
    };
    let arrived = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let Some(route) = handlers::find_route(parts.method.as_str(), &path) else {
        // Each says what to send instead: the path's own method, or where the paths are
        // listed (a sandbox path is not one of ROUTES: its endpoints are in docs/SANDBOX.md).
        let methods: Vec<&str> = handlers::ROUTES
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.method)
            .collect();
        let err = if !methods.is_empty() {
            ApiError::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!(
                    "{} is not allowed on {path}; use {}",
                    parts.method,
                    methods.join(" or ")
                ),
            )
        } else if path.starts_with("/sandbox/") {
            ApiError::not_found(
                "NO_SUCH_ROUTE",
                format!(
                    "the WeChat sandbox has nothing at {path}: WeChat Pay is under \
                     /sandbox/mch/, the platform under /sandbox/api/, the control endpoints \
                     under /sandbox/_control/ (docs/SANDBOX.md)"
                ),
            )
        } else {
            ApiError::not_found(
                "NO_SUCH_ROUTE",
                format!(
                    "no function at {path}; the routes are in README's API table \
                     (docs/API.md)"
                ),
            )
        };
        return to_axum(err.into_response());
    };
    if route.caller == Caller::Admin {
        let given = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(wxshop::http::bearer_token);
        let ok = given.is_some_and(|g| {
            !state.admin_token.is_empty()
                && constant_time_eq(g.as_bytes(), state.admin_token.as_bytes())
        });
        if !ok {
            tracing::warn!(
                security = true,
                path,
                "admin route without valid authorisation"
            );
            return to_axum(
                ApiError::unauthenticated("admin routes need Authorization: Bearer $ADMIN_TOKEN")
                    .into_response(),
            );
        }
    }
    let bytes: Bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return to_axum(
                ApiError::new(
                    http::StatusCode::PAYLOAD_TOO_LARGE,
                    "BODY_TOO_LARGE",
                    format!("request body is over {MAX_BODY} bytes"),
                )
                .into_response(),
            )
        }
    };
    let mut req = http::Request::from_parts(parts, bytes);
    if route.caller == Caller::Admin {
        // Authorised above by the one admin token wxlocal has.
        req.extensions_mut().insert(wxshop::http::AdminCaller(
            "ADMIN_TOKEN (wxlocal)".to_owned(),
        ));
    }
    // The TCP peer, as API Gateway's `sourceIp`: what `spbill_create_ip` is made of.
    if let Some(peer) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    {
        req.extensions_mut().insert(wxshop::http::PeerIp(peer));
    }
    // Run to the end even if the caller hangs up, as Lambda does: a handler dropped halfway
    // would leave its work half done (an order created, its idempotency key never completed),
    // so a client's retry after its own timeout would meet "in progress" and then a second order.
    let app = state.app.clone();
    // The function's own time, if it has one, from the request's arrival (as Lambda's Timeout).
    let deadline = state
        .function_time
        .get(route.function.name())
        .map(|t| wxshop::time::Deadline::after(t.saturating_sub(arrived.elapsed())));
    let handled = tokio::spawn(async move {
        let _under_way = under_way; // until the handler ends, whoever still waits for it
        wxshop::time::bounded(deadline, handlers::handle(&app, route, req)).await
    });
    match handled.await {
        Ok(resp) => to_axum(resp),
        Err(e) => to_axum(ApiError::internal(format!("handler failed: {e}")).into_response()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn to_axum(resp: http::Response<Bytes>) -> axum::response::Response {
    let (parts, body) = resp.into_parts();
    axum::response::Response::from_parts(parts, Body::from(body)).into_response()
}

/// The demo catalog, created the way a merchant would: upload (audited by the sandbox, which
/// pushes the verdict to `/callbacks/wechat`), then list.
pub async fn seed(r: &Running) -> Result<(), String> {
    let client = reqwest::Client::new();
    let admin = |body: serde_json::Value| {
        let client = client.clone();
        let url = format!("{}/admin/catalogSync", r.base_url);
        let token = r.admin_token.clone();
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let text = resp.text().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("seeding failed: {status} {text}"));
            }
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| e.to_string())
        }
    };
    admin(serde_json::json!({
        "action": "upsert",
        "product": {
            "product_id": "tea", "title": "Longjing green tea 250 g",
            "head_img": ["https://mmecimage.cn/p/wxlocal/tea.jpg"], "third_cat_id": 6153, "brand_id": 2100000000,
            "skus": [{ "sku_id": "tea-250g", "price": 1990, "market_price": 2590, "stock": 1000 }]
        }
    }))
    .await?;
    // Wait (bounded) for the audit verdict to land, then list: WeChat lists approved
    // products only. A store kept from a run with the trading component off holds it approved
    // here only: the upsert sent it to WeChat as an edit, whose verdict is awaited too.
    for _ in 0..200 {
        let p = admin(serde_json::json!({ "action": "get", "product_id": "tea" })).await?;
        if p["product"]["audit"] == "APPROVED" && p["product"]["edit"].is_null() {
            admin(serde_json::json!({ "action": "listing", "product_id": "tea" })).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("seeding: the product's audit was not approved within 10 s".into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:8787";

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn function_times_read_by_name() {
        let t = parse_function_times(" unifiedOrder=3000, orderSync = 60000 ,").unwrap();
        assert_eq!(t.get("unifiedOrder"), Some(&Duration::from_millis(3000)));
        assert_eq!(t.get("orderSync"), Some(&Duration::from_secs(60)));
        assert_eq!(t.get("login"), None);
        assert!(parse_function_times("").unwrap().is_empty());
        for bad in ["unified=3000", "unifiedOrder", "unifiedOrder=0", "login=x"] {
            let e = parse_function_times(bad).unwrap_err();
            assert!(
                e.contains(FUNCTION_TIME_VAR) && e.contains("unifiedOrder"),
                "{e}"
            );
        }
    }

    #[test]
    fn overrides_beat_store_flag_beat_environment_beat_defaults() {
        let overrides: HashMap<String, String> = [("SESSION_TTL_SECS", "600"), ("STORE", "memory")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let vars = LocalVars::new(
            BASE,
            Some("sqlite:/tmp/flag.db".into()),
            overrides,
            env(&[
                ("SESSION_TTL_SECS", "3600"),
                ("WX_TOKEN_MODE", "classic"),
                ("STORE", "sqlite:/tmp/env.db"),
                ("WX_APPID", "wx1111111111111111"),
                ("WX_ORDER_PATH", "  "),
            ]),
        );
        assert_eq!(
            vars.lookup("SESSION_TTL_SECS"),
            Some(("600".into(), Source::Override))
        );
        assert_eq!(
            vars.lookup("STORE"),
            Some(("memory".into(), Source::Override))
        );
        assert_eq!(
            vars.lookup("WX_TOKEN_MODE"),
            Some(("classic".into(), Source::Environment))
        );
        assert_eq!(
            vars.lookup("WX_APPID"),
            Some(("wx1111111111111111".into(), Source::Environment))
        );
        assert_eq!(
            vars.lookup("WX_API_BASE_URL"),
            Some((format!("{BASE}/sandbox/api"), Source::LocalDefault))
        );
        // Empty means unset, as in Lambda; unknown stays unknown (Config's own default).
        assert_eq!(vars.lookup("WX_ORDER_PATH"), None);
        assert_eq!(vars.lookup("WX_RETURN_ADDRESS"), None);

        let flag_only = LocalVars::new(
            BASE,
            Some("sqlite:/tmp/flag.db".into()),
            HashMap::new(),
            env(&[("STORE", "sqlite:/tmp/env.db")]),
        );
        assert_eq!(
            flag_only.lookup("STORE"),
            Some(("sqlite:/tmp/flag.db".into(), Source::StoreFlag))
        );
    }

    #[test]
    fn every_variable_config_reads_is_taken_from_the_environment() {
        // Ask Config which variables it reads, then give each one through the environment.
        let asked = std::sync::Mutex::new(Vec::new());
        let _ = Config::from_lookup(|k| {
            asked.lock().unwrap().push(k.to_owned());
            None
        });
        let asked = asked.into_inner().unwrap();
        assert!(asked.len() > 20, "{asked:?}");
        for key in &asked {
            let k = key.clone();
            let vars = LocalVars::new(BASE, None, HashMap::new(), move |q| {
                (q == k).then(|| "from-env".to_owned())
            });
            assert_eq!(
                vars.lookup(key),
                Some(("from-env".into(), Source::Environment)),
                "{key}"
            );
        }
    }

    #[test]
    fn sandbox_urls_pointed_elsewhere_are_reported() {
        let vars = LocalVars::new(
            BASE,
            None,
            HashMap::new(),
            env(&[
                ("WXPAY_BASE_URL", "https://api.mch.weixin.qq.com"),
                // The sandbox's own address, written out: nothing to report.
                ("WX_API_BASE_URL", "http://127.0.0.1:8787/sandbox/api/"),
            ]),
        );
        let away = vars.away_from_sandbox();
        assert_eq!(
            away,
            vec![(
                "WXPAY_BASE_URL",
                "https://api.mch.weixin.qq.com".to_owned(),
                format!("{BASE}/sandbox/mch")
            )]
        );
        let overridden = LocalVars::new(
            BASE,
            None,
            [("WXPAY_BASE_URL".to_owned(), "http://127.0.0.1:9".to_owned())]
                .into_iter()
                .collect(),
            env(&[]),
        );
        assert!(
            overridden.away_from_sandbox().is_empty(),
            "tests' overrides are deliberate"
        );
    }
}
