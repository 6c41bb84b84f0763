//! `App`: everything a function needs, built once per container (Lambda) or process
//! (`wxlocal`) and borrowed by every invocation.

use crate::config::{Config, ConfigError, StoreConfig};
use crate::metrics::Metrics;
use crate::pay::client::PayClient;
use crate::pay::RefundKey;
use crate::push::PushConfig;
use crate::session::SessionKeys;
use crate::shop::client::WxClient;
use crate::store::{DynStore, StoreError};
use crate::time::Clock;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub pay: PayClient,
    pub wx: WxClient,
    pub push: Arc<PushConfig>,
    pub sessions: SessionKeys,
    /// Decrypts refund notifications (derived from the API key once).
    pub refund_key: Arc<RefundKey>,
    pub clock: Clock,
    /// Custom CloudWatch metrics: off unless the Lambda entry point turns them on.
    pub metrics: Metrics,
    /// Set once this process has read the catalog's re-indexing mark as done: the mark never
    /// goes back, so the shop's pages stop reading it (one store read a page view). Per `App`,
    /// not process-wide: an `App` is built on one store, and tests run several in a process.
    pub(crate) on_sale_indexed: Arc<AtomicBool>,
}

/// Why a container could not start; the message lists every problem.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build a WeChat client: {0}")]
    Client(String),
}

/// Opens the configured store.
pub async fn open_store(cfg: &StoreConfig) -> Result<DynStore, StoreError> {
    match cfg {
        #[cfg(feature = "sqlite")]
        StoreConfig::Memory => Ok(Arc::new(crate::store::sqlite::SqliteStore::memory()?)),
        #[cfg(feature = "sqlite")]
        StoreConfig::Sqlite(path) => Ok(Arc::new(crate::store::sqlite::SqliteStore::open(path)?)),
        #[cfg(feature = "dynamodb")]
        StoreConfig::Dynamo { table, endpoint } => Ok(Arc::new(
            crate::store::dynamo::DynamoStore::connect(table, endpoint.as_deref()).await?,
        )),
        #[allow(unreachable_patterns)]
        other => Err(StoreError::Backend(format!(
            "store {other:?} is not compiled into this binary"
        ))),
    }
}

impl App {
    /// Reads the environment and builds everything; every configuration problem at once.
    pub async fn from_env() -> Result<App, StartupError> {
        let config = Config::from_env()?;
        let store = open_store(&config.store).await?;
        App::new(config, store, Clock::default())
    }

    pub fn new(config: Config, store: DynStore, clock: Clock) -> Result<App, StartupError> {
        let pay =
            PayClient::from_config(&config).map_err(|e| StartupError::Client(e.to_string()))?;
        let wx = WxClient::from_config_with_clock(&config, store.clone(), clock.clone())
            .map_err(|e| StartupError::Client(e.to_string()))?;
        let push = PushConfig::new(
            config.user_appid(),
            secrecy::ExposeSecret::expose_secret(&config.push_token),
            config
                .push_aes_key
                .as_ref()
                .map(secrecy::ExposeSecret::expose_secret),
        )
        .map_err(|e| StartupError::Client(e.to_string()))?;
        let sessions = SessionKeys::new(&config.session_secret);
        let refund_key = Arc::new(RefundKey::new(config.api_key()));
        Ok(App {
            config: Arc::new(config),
            store,
            pay,
            wx,
            push: Arc::new(push),
            sessions,
            refund_key,
            clock,
            metrics: Metrics::off(),
            on_sale_indexed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// A unit test's `App` on `store`: a direct merchant (`wx0000000000000001`, merchant
    /// `1900000001`, API key [`App::TEST_API_KEY`]) whose WeChat URLs lead nowhere
    /// (`127.0.0.1:9`), metrics off.
    #[cfg(test)]
    pub(crate) fn for_tests(store: DynStore) -> App {
        let vars = [
            ("WX_APPID", "wx0000000000000001"),
            ("WX_APPSECRET", "appsecret"),
            ("WXPAY_MCH_ID", "1900000001"),
            ("WXPAY_API_KEY", App::TEST_API_KEY),
            ("SESSION_SECRET", "0123456789abcdef0123456789abcdef"),
            ("WX_PUSH_TOKEN", "token"),
            ("WXPAY_NOTIFY_URL", "http://127.0.0.1:9/callbacks/pay"),
            ("WXPAY_BASE_URL", "http://127.0.0.1:9"),
            ("WX_API_BASE_URL", "http://127.0.0.1:9"),
        ];
        let lookup = |k: &str| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        };
        match Config::from_lookup(lookup).map_err(StartupError::from) {
            Ok(config) => match App::new(config, store, Clock::default()) {
                Ok(app) => app,
                Err(e) => panic!("test app: {e}"),
            },
            Err(e) => panic!("test config: {e}"),
        }
    }

    /// The WeChat Pay API key of [`App::for_tests`].
    #[cfg(test)]
    pub(crate) const TEST_API_KEY: &'static str = "localapikey000000000000000000001";
}
