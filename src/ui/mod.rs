//! `graft ui`: the experiment record in a browser, served by this binary.
//!
//! The server is read-only over the store. It reads the record into memory
//! ([`snapshot`]) in short visits to the index and follows running
//! trainings through their journal files ([`live`], [`watch`]), so it never
//! holds the index lock while answering a request. It serves the page's
//! embedded files ([`assets`]) and JSON under `/api/` ([`api`]), to requests
//! that name this server as their host and come from no other origin
//! ([`guard`]).

pub mod api;
pub mod assets;
pub mod guard;
pub mod live;
pub mod snapshot;
pub mod watch;

use crate::store::{Store, StoreError};
use std::future::IntoFuture;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
}

/// A server bound to its address, with the record read, not yet answering.
pub struct Server {
    listener: std::net::TcpListener,
    address: SocketAddr,
    shared: Arc<watch::Shared>,
    watcher: watch::Watcher,
    router: axum::Router,
}

impl Server {
    /// Read the record and bind `host:port` (port 0: any free port).
    /// `store_flag` is the `--store` the page's copyable commands name.
    pub fn bind(
        store: &Store,
        host: IpAddr,
        port: u16,
        store_flag: Option<String>,
    ) -> Result<Server, UiError> {
        // A port in use is found before the (possibly long) read of the record.
        let requested = SocketAddr::new(host, port);
        let listener = std::net::TcpListener::bind(requested).map_err(|source| UiError::Bind {
            address: requested,
            source,
        })?;
        let (shared, watcher) = watch::start(store)?;
        let address = listener.local_addr().map_err(UiError::Serve)?;
        let allowed = guard::AllowedHosts::for_address(&host, address.port());
        let router = api::routes(api::Api {
            shared: shared.clone(),
            store_flag,
        })
        .route("/", axum::routing::get(assets::index))
        .fallback(assets::fallback)
        .layer(axum::middleware::from_fn_with_state(allowed, guard::check));
        Ok(Server {
            listener,
            address,
            shared,
            watcher,
            router,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Answer requests until Ctrl-C (or SIGTERM).
    pub fn run(self) -> Result<(), UiError> {
        let Server {
            listener,
            shared,
            watcher,
            router,
            ..
        } = self;
        let watching = std::thread::spawn(move || watcher.run());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(UiError::Serve)?;
        let served = runtime.block_on(async move {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            // Stop at once on the signal: an open long poll of the page
            // must not hold the process for its 20 s.
            tokio::select! {
                served = axum::serve(listener, router).into_future() => served,
                () = stop_signal() => Ok(()),
            }
        });
        shared.stop.store(true, Ordering::Relaxed);
        // The watcher ends within one poll.
        runtime.shutdown_timeout(std::time::Duration::from_millis(200));
        let _ = watching.join();
        served.map_err(UiError::Serve)
    }
}

async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = terminate.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
