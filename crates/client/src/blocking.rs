//! A blocking client for scripts, tools and the CLI (feature `blocking`).
//!
//! It wraps the async [`crate::Client`] with a private current-thread tokio runtime, so there
//! is one implementation of the protocol, not two. Each call runs the async call to completion
//! on that runtime; the connections' reader and writer tasks make progress during calls.
//!
//! Do not call it from inside an async runtime (tokio panics on a nested `block_on`); use the
//! async client there.
//!
//! ```no_run
//! use stategrid_client::blocking::Client;
//! use stategrid_client::{ClientConfig, WriteOptions};
//!
//! let client = Client::connect("127.0.0.1:2721", ClientConfig::default())?;
//! let carts = client.namespace("carts")?;
//! carts.put("user-42", b"3 items", WriteOptions::sliding(1200))?;
//! assert_eq!(carts.read("user-42")?.value, b"3 items");
//! # Ok::<(), stategrid_client::Error>(())
//! ```

use std::sync::Arc;

use stategrid_proto::{ErrorReply, Meta, NsId, NsInfo, Request, Stats, Timeout, WriteOpts};
use tokio::runtime::Runtime;

use crate::client::{KeyPage, Locked, ReadResult};
use crate::config::ClientConfig;
use crate::conn::{RawReply, ServerInfo};
use crate::error::Result;

/// The blocking twin of [`crate::Client`]: same pool, same pipelining, same timeouts.
#[derive(Clone, Debug)]
pub struct Client {
    // Field order matters: the client (and its connection tasks) drop before the runtime.
    inner: crate::Client,
    runtime: Arc<Runtime>,
}

/// The blocking twin of [`crate::Namespace`].
#[derive(Clone, Debug)]
pub struct Namespace {
    inner: crate::Namespace,
    runtime: Arc<Runtime>,
}

impl Client {
    /// Starts the private runtime and connects; see [`crate::Client::connect`].
    pub fn connect(addr: &str, config: ClientConfig) -> Result<Client> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let inner = runtime.block_on(crate::Client::connect(addr, config))?;
        Ok(Client {
            inner,
            runtime: Arc::new(runtime),
        })
    }

    /// The async client underneath.
    pub fn as_async(&self) -> &crate::Client {
        &self.inner
    }

    /// The address this client connects to.
    pub fn addr(&self) -> &str {
        self.inner.addr()
    }

    /// What the server said when the first connection opened.
    pub fn server_info(&self) -> &ServerInfo {
        self.inner.server_info()
    }

    /// See [`crate::Client::namespace`].
    pub fn namespace(&self, name: &str) -> Result<Namespace> {
        let inner = self.runtime.block_on(self.inner.namespace(name))?;
        Ok(Namespace {
            inner,
            runtime: Arc::clone(&self.runtime),
        })
    }

    /// See [`crate::Client::namespace_unregistered`].
    pub fn namespace_unregistered(&self, name: &str) -> Namespace {
        Namespace {
            inner: self.inner.namespace_unregistered(name),
            runtime: Arc::clone(&self.runtime),
        }
    }

    /// See [`crate::Client::namespaces`].
    pub fn namespaces(&self) -> Result<Vec<NsInfo>> {
        self.runtime.block_on(self.inner.namespaces())
    }

    /// See [`crate::Client::stats`].
    pub fn stats(&self) -> Result<Stats> {
        self.runtime.block_on(self.inner.stats())
    }

    /// See [`crate::Client::raw_request`].
    pub fn raw_request(&self, req: &Request, value: &[u8]) -> Result<RawReply> {
        self.runtime.block_on(self.inner.raw_request(req, value))
    }
}

impl Namespace {
    /// The namespace's id.
    pub fn id(&self) -> NsId {
        self.inner.id()
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    fn run<T>(&self, fut: impl Future<Output = T>) -> T {
        self.runtime.block_on(fut)
    }

    /// See [`crate::Namespace::add`].
    pub fn add(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
    ) -> Result<u64> {
        self.run(self.inner.add(key, value, opts))
    }

    /// See [`crate::Namespace::put`].
    pub fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
    ) -> Result<u64> {
        self.run(self.inner.put(key, value, opts))
    }

    /// See [`crate::Namespace::update`].
    pub fn update(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
    ) -> Result<u64> {
        self.run(self.inner.update(key, value, opts))
    }

    /// See [`crate::Namespace::update_with_lock`].
    pub fn update_with_lock(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
        lock_token: u64,
    ) -> Result<u64> {
        self.run(self.inner.update_with_lock(key, value, opts, lock_token))
    }

    /// See [`crate::Namespace::update_if_version`].
    pub fn update_if_version(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
        version: u64,
    ) -> Result<u64> {
        self.run(self.inner.update_if_version(key, value, opts, version))
    }

    /// See [`crate::Namespace::read`].
    pub fn read(&self, key: impl AsRef<[u8]>) -> Result<ReadResult> {
        self.run(self.inner.read(key))
    }

    /// See [`crate::Namespace::read_and_lock`].
    pub fn read_and_lock(&self, key: impl AsRef<[u8]>) -> Result<Locked> {
        self.run(self.inner.read_and_lock(key))
    }

    /// See [`crate::Namespace::update_and_unlock`].
    pub fn update_and_unlock(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
        lock_token: u64,
    ) -> Result<u64> {
        self.run(self.inner.update_and_unlock(key, value, opts, lock_token))
    }

    /// See [`crate::Namespace::unlock`].
    pub fn unlock(&self, key: impl AsRef<[u8]>, lock_token: u64) -> Result<()> {
        self.run(self.inner.unlock(key, lock_token))
    }

    /// See [`crate::Namespace::refresh_lock`].
    pub fn refresh_lock(&self, key: impl AsRef<[u8]>, lock_token: u64) -> Result<()> {
        self.run(self.inner.refresh_lock(key, lock_token))
    }

    /// See [`crate::Namespace::remove`].
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.run(self.inner.remove(key))
    }

    /// See [`crate::Namespace::remove_with_lock`].
    pub fn remove_with_lock(&self, key: impl AsRef<[u8]>, lock_token: u64) -> Result<()> {
        self.run(self.inner.remove_with_lock(key, lock_token))
    }

    /// See [`crate::Namespace::remove_forced`].
    pub fn remove_forced(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.run(self.inner.remove_forced(key))
    }

    /// See [`crate::Namespace::touch`].
    pub fn touch(&self, key: impl AsRef<[u8]>, timeout: Option<Timeout>) -> Result<()> {
        self.run(self.inner.touch(key, timeout))
    }

    /// See [`crate::Namespace::meta`].
    pub fn meta(&self, key: impl AsRef<[u8]>) -> Result<Meta> {
        self.run(self.inner.meta(key))
    }

    /// See [`crate::Namespace::list_keys`].
    pub fn list_keys(&self, cursor: u64, limit: u32) -> Result<KeyPage> {
        self.run(self.inner.list_keys(cursor, limit))
    }

    /// See [`crate::Namespace::keys`].
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.run(self.inner.keys())
    }

    /// See [`crate::Namespace::multi_read`].
    pub fn multi_read<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Result<ReadResult, ErrorReply>>> {
        self.run(self.inner.multi_read(keys))
    }

    /// See [`crate::Namespace::bulk_put`].
    pub fn bulk_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        opts: impl Into<WriteOpts>,
    ) -> Result<Vec<Result<u64, ErrorReply>>> {
        self.run(self.inner.bulk_put(items, opts))
    }

    /// See [`crate::Namespace::count`].
    pub fn count(&self) -> Result<u64> {
        self.run(self.inner.count())
    }

    /// See [`crate::Namespace::clear`].
    pub fn clear(&self) -> Result<()> {
        self.run(self.inner.clear())
    }
}
