//! The async client: a pool of pipelined connections, and namespace handles on top.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use stategrid_proto::{
    BulkItem, ErrorCode, ErrorReply, ItemResult, Key, Meta, NsId, NsInfo, PutResult, Request,
    Response, Stats, Timeout, TimeoutKind, WriteOpts,
};
use tokio::net::TcpStream;

use crate::config::{ClientConfig, with_default_port};
use crate::conn::{Conn, ConnSettings, RawReply, ServerInfo};
use crate::error::{Error, Result};

/// A pooled, pipelined connection to one stategrid host. Cheap to clone (all clones share the
/// pool) and safe to use from many tasks at once.
///
/// Requests go to the pool's connections round-robin; each connection carries up to
/// `inflight_per_conn_max` requests at a time. With `shard_aware` (the default) the pool holds
/// connections per shard of the host, each served by its shard, and a keyed request goes on
/// one of its key's owner shard (the server then never passes it between cores). A connection that failed is replaced by the
/// next request that picks it. Every request gives up after `request_timeout_ms`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    config: ClientConfig,
    settings: ConnSettings,
    /// The store's map, when this client routes (the one `connect` made; the per-host
    /// clients it opens do not).
    routes: Option<std::sync::Mutex<Routes>>,
    /// The pool. An async mutex per slot, because replacing a connection awaits the connect.
    /// Shard-aware: `per_shard` slots per shard, shard `s` owning `s * per_shard ..`.
    slots: Vec<tokio::sync::Mutex<Option<Arc<Conn>>>>,
    next_slot: AtomicUsize,
    /// Set when the host this client was connected to failed (no connection, or no answer in
    /// time): requests that any host serves (namespaces, maps) go to the other hosts first
    /// until it answers again. An atomic: every request on the seed updates it.
    seed_failed: std::sync::atomic::AtomicBool,
    server: ServerInfo,
    /// The host's shards as keyed requests are routed to them: 1 when not shard-aware (or
    /// the server does not know shard-aware connections).
    shards: usize,
    per_shard: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.inner.addr)
            .field("connections", &self.inner.slots.len())
            .field("server", &self.inner.server)
            .finish()
    }
}

/// Where keyed requests go in a multi-host store: the primary of each partition, as the
/// store's map says (`GetMap`), refreshed when a host answers that the map changed
/// (`NotPrimary`, `StaleEpoch`) or cannot be reached.
#[derive(Default)]
struct Routes {
    epoch: u64,
    /// Client addresses of the hosts, as the map lists them.
    hosts: Vec<String>,
    /// Per partition, the index in `hosts` of its primary (`u16::MAX`: none).
    primaries: Vec<u16>,
    /// A pool per host, opened on first use.
    pools: std::collections::HashMap<String, Client>,
    /// Set when the map must be fetched again before the next routed request.
    stale: bool,
}

/// First wait between retries of a request the store could not serve yet; doubles up to
/// `RETRY_BACKOFF_MS_MAX`. A failover takes about a second, so this keeps retries cheap.
const RETRY_BACKOFF_MS_MIN: u64 = 10;
const RETRY_BACKOFF_MS_MAX: u64 = 200;

/// Opens one connection and finishes the handshake, within `connect_timeout_ms`.
async fn open(addr: &str, config: &ClientConfig, settings: &ConnSettings) -> Result<Conn> {
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(Error::Connect {
                addr: addr.to_owned(),
                source,
            });
        }
        Err(_) => {
            return Err(Error::connect_timeout(
                addr,
                format!(
                    "no connection within {} ms (connect_timeout_ms)",
                    config.connect_timeout_ms
                ),
            ));
        }
    };
    // Requests are small and latency matters more than packet count; the writer batches.
    stream.set_nodelay(true).map_err(|source| Error::Connect {
        addr: addr.to_owned(),
        source,
    })?;
    // A peer that vanished without a reset fails the connection after about this long, so
    // the request is retried elsewhere (see `dead_peer_timeout_ms`): TCP_USER_TIMEOUT when
    // sent bytes go unacknowledged, keepalive probes when a request was delivered and then
    // its host died (nothing unacknowledged, so only probes notice).
    let dead = Duration::from_millis(config.dead_peer_timeout_ms);
    let sock = socket2::SockRef::from(&stream);
    sock.set_tcp_user_timeout(Some(dead))
        .and_then(|_| {
            sock.set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    // The kernel counts these in whole seconds.
                    .with_time((dead / 2).max(Duration::from_secs(1)))
                    .with_interval((dead / 4).max(Duration::from_secs(1)))
                    .with_retries(2),
            )
        })
        .map_err(|source| Error::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    if let Some(tls) = &config.tls {
        // TLS first (within the same connect timeout), then Hello inside it.
        let connected = tokio::time::timeout(timeout, crate::tls::connect(stream, addr, tls)).await;
        let stream = match connected {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::connect_timeout(
                    addr,
                    format!(
                        "no TLS handshake within {} ms (connect_timeout_ms); is this the server's secure_svr_port?",
                        config.connect_timeout_ms
                    ),
                ));
            }
        };
        let (rd, wr) = tokio::io::split(stream);
        return greet(rd, wr, addr, config, settings).await;
    }
    let (rd, wr) = stream.into_split();
    greet(rd, wr, addr, config, settings).await
}

/// Says Hello on a connected byte stream, within `connect_timeout_ms`.
async fn greet<R, W>(
    rd: R,
    wr: W,
    addr: &str,
    config: &ClientConfig,
    settings: &ConnSettings,
) -> Result<Conn>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    match tokio::time::timeout(timeout, Conn::handshake(rd, wr, addr, settings)).await {
        Ok(conn) => conn,
        Err(_) => Err(Error::connect_timeout(
            addr,
            format!(
                "connected, but no answer to Hello within {} ms (connect_timeout_ms); is this a stategrid port?",
                config.connect_timeout_ms
            ),
        )),
    }
}

impl Client {
    /// Connects to `addr` (`HOST:PORT`; the port defaults to 2721) and opens the pool's
    /// connections, so a wrong address fails here rather than on the first request.
    ///
    /// All of it, the store's map included, happens within `connect_timeout_ms` (the connect
    /// budget): a host that accepts connections but does not answer (frozen, overloaded)
    /// fails here with [`Error::Connect`] instead of holding the caller.
    pub async fn connect(addr: &str, config: ClientConfig) -> Result<Client> {
        let budget = Duration::from_millis(config.connect_timeout_ms);
        let deadline = tokio::time::Instant::now() + budget;
        let budget_ms = config.connect_timeout_ms;
        let seed = with_default_port(addr);
        // The store's map lists the hosts' plaintext client ports: a TLS client sends
        // everything to the host it connected to, which relays to the primaries.
        let tls = config.tls.is_some();
        let mut client = match tokio::time::timeout_at(
            deadline,
            Client::connect_unrouted(addr, config),
        )
        .await
        {
            Ok(c) => c?,
            Err(_) => {
                return Err(Error::connect_timeout(
                    &seed,
                    format!(
                        "not connected within {budget_ms} ms (connect_timeout_ms); is the host frozen or overloaded?"
                    ),
                ));
            }
        };
        if tls {
            return Ok(client);
        }
        Arc::get_mut(&mut client.inner)
            .expect("a new client is not shared yet")
            .routes = Some(std::sync::Mutex::new(Routes {
            stale: true,
            ..Routes::default()
        }));
        // Best effort, within what is left of the budget: a host that has not joined a store
        // yet answers NotJoined, and the map is fetched again on the first routed request
        // (within that request's own deadline).
        match tokio::time::timeout_at(deadline, client.refresh_routes()).await {
            Ok(_) => Ok(client),
            Err(_) => Err(Error::connect_timeout(
                &seed,
                format!(
                    "connected, but the store's map did not come within {budget_ms} ms (connect_timeout_ms); is the host frozen or overloaded?"
                ),
            )),
        }
    }

    /// A pool to one host of the store, which does not route further.
    async fn connect_direct(addr: &str, config: ClientConfig) -> Result<Client> {
        Client::connect_unrouted(addr, config).await
    }

    async fn connect_unrouted(addr: &str, config: ClientConfig) -> Result<Client> {
        config.validate()?;
        let addr = with_default_port(addr);
        let settings = ConnSettings {
            inflight_per_conn_max: config.inflight_per_conn_max,
            frame_bytes_max: config.frame_bytes_max,
            recv_buffer_bytes: config.recv_buffer_bytes,
            client_name: config.client_name.clone(),
            shard: None,
            credentials: config.credentials.clone(),
        };
        // The first connection asks for shard 0 (every host has one) and learns the layout.
        let first_settings = ConnSettings {
            shard: config.shard_aware.then_some(0),
            ..settings.clone()
        };
        let first = open(&addr, &config, &first_settings).await?;
        let server = first.server.clone();
        // Shard-aware only when the server said which shard serves the connection.
        let shards = match server.shard {
            Some(_) if config.shard_aware => (server.shards as usize).max(1),
            _ => 1,
        };
        let mut slots = Vec::new();
        let per_shard;
        if shards > 1 {
            // One or more connections per shard, opened on first use: a client that only
            // touches a few keys does not connect to every core.
            per_shard = config.connections.div_ceil(shards);
            slots.resize_with(shards * per_shard, || tokio::sync::Mutex::new(None));
            slots[0] = tokio::sync::Mutex::new(Some(Arc::new(first)));
        } else {
            per_shard = config.connections;
            slots.push(tokio::sync::Mutex::new(Some(Arc::new(first))));
            for _ in 1..config.connections {
                let conn = open(&addr, &config, &settings).await?;
                slots.push(tokio::sync::Mutex::new(Some(Arc::new(conn))));
            }
        }
        Ok(Client {
            inner: Arc::new(Inner {
                server,
                addr,
                config,
                settings,
                routes: None,
                slots,
                next_slot: AtomicUsize::new(0),
                seed_failed: std::sync::atomic::AtomicBool::new(false),
                shards,
                per_shard,
            }),
        })
    }

    /// The shard of this host that serves `req` (its key's owner; shard 0 for `NsOpen`, whose
    /// registry lives there; a key page's cursor names its shard), when this client routes by
    /// shard. None: any connection (the server gathers from every shard).
    fn shard_of(&self, req: &Request) -> Option<usize> {
        if self.inner.shards <= 1 {
            return None;
        }
        match req {
            Request::NsOpen { .. } => return Some(0),
            Request::ListKeys { cursor, .. } => {
                let s = (cursor >> 32) as usize;
                return (s < self.inner.shards).then_some(s);
            }
            _ => {}
        }
        let key = req.key()?;
        let p = stategrid_proto::partition_of(stategrid_proto::key_hash(key.ns, &key.key));
        Some(stategrid_proto::owner_shard(p, self.inner.shards))
    }

    /// The shards this client routes keyed requests to (1: it does not route by shard).
    pub fn shards(&self) -> usize {
        self.inner.shards
    }

    /// Fetches the store's map from the seed host, or from any host the last map named.
    async fn refresh_routes(&self) -> Result<()> {
        let Some(routes) = &self.inner.routes else {
            return Ok(());
        };
        // The seed first, unless it failed: then every other host the last map named (a
        // pool opened if needed), and the seed last.
        let (seed_failed, others) = {
            let r = routes.lock().unwrap();
            let mut others: Vec<String> = r.pools.keys().cloned().collect();
            for h in &r.hosts {
                if *h != self.inner.addr && !others.contains(h) {
                    others.push(h.clone());
                }
            }
            (self.inner.seed_failed.load(Ordering::Relaxed), others)
        };
        let mut candidates: Vec<Option<String>> = others.into_iter().map(Some).collect();
        if seed_failed {
            candidates.push(None);
        } else {
            candidates.insert(0, None);
        }
        let mut last = None;
        for c in candidates {
            let answer = match &c {
                None => self.call_once(&Request::GetMap, &[]).await,
                Some(addr) => match self.pool_for(addr).await {
                    Ok(pool) => pool.call_once(&Request::GetMap, &[]).await,
                    Err(e) => Err(e),
                },
            };
            if c.is_none() {
                self.note_seed(&answer);
            }
            match answer {
                Ok(RawReply {
                    response: Response::Map(map),
                    ..
                }) => {
                    let mut r = routes.lock().unwrap();
                    if map.epoch >= r.epoch || r.stale {
                        r.epoch = map.epoch;
                        r.hosts = map.hosts.into_iter().map(|h| h.svr_addr).collect();
                        r.primaries = map.primaries;
                        let keep: std::collections::HashSet<&String> = r.hosts.iter().collect();
                        let gone: Vec<String> = r
                            .pools
                            .keys()
                            .filter(|a| !keep.contains(a))
                            .cloned()
                            .collect();
                        for a in gone {
                            r.pools.remove(&a);
                        }
                    }
                    r.stale = false;
                    return Ok(());
                }
                Ok(other) => last = Some(unexpected(&Request::GetMap, &other.response)),
                Err(Error::Server(reply)) if reply.code == ErrorCode::InvalidRequest => {
                    // A server from before multi-host stores: it serves everything itself, so
                    // there is nothing to route (and no reason to ask again per request).
                    routes.lock().unwrap().stale = false;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least the seed was asked"))
    }

    /// The pool to host `addr` of the store, opened on first use.
    async fn pool_for(&self, addr: &str) -> Result<Client> {
        if let Some(routes) = &self.inner.routes
            && let Some(pool) = routes.lock().unwrap().pools.get(addr)
        {
            return Ok(pool.clone());
        }
        let pool = Client::connect_direct(addr, self.inner.config.clone()).await?;
        if let Some(routes) = &self.inner.routes {
            routes
                .lock()
                .unwrap()
                .pools
                .insert(addr.to_owned(), pool.clone());
        }
        Ok(pool)
    }

    /// Records whether the seed host answered (any answer) or failed as a host. Cost: one
    /// atomic load per request, a store only when it changes.
    fn note_seed<T>(&self, answer: &Result<T>) {
        if self.inner.routes.is_none() {
            return;
        }
        let failed = matches!(
            answer,
            Err(Error::Connect { .. } | Error::Closed { .. } | Error::Timeout { .. })
        );
        if self.inner.seed_failed.load(Ordering::Relaxed) != failed {
            self.inner.seed_failed.store(failed, Ordering::Relaxed);
        }
    }

    /// The pool that serves `req`: its partition's primary in a multi-host store, else this.
    /// A request any host serves (no key) goes to another host of the store while the seed
    /// host is failing, so a client is not tied to the one host it was given.
    async fn route(&self, req: &Request) -> Result<Option<Client>> {
        let Some(routes) = &self.inner.routes else {
            return Ok(None);
        };
        let Some(key) = req.key() else {
            let other = {
                if !self.inner.seed_failed.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                let r = routes.lock().unwrap();
                if r.hosts.len() <= 1 {
                    return Ok(None);
                }
                let turn = self.inner.next_slot.fetch_add(1, Ordering::Relaxed);
                let others: Vec<&String> =
                    r.hosts.iter().filter(|h| **h != self.inner.addr).collect();
                if others.is_empty() {
                    return Ok(None);
                }
                others[turn % others.len()].clone()
            };
            return self.pool_for(&other).await.map(Some);
        };
        if routes.lock().unwrap().stale {
            let _ = self.refresh_routes().await;
        }
        let addr = {
            let r = routes.lock().unwrap();
            // One host (or no map): nothing to route, not even a hash to compute.
            if r.hosts.len() <= 1 {
                return Ok(None);
            }
            let p = stategrid_proto::partition_of(stategrid_proto::key_hash(key.ns, &key.key));
            match r
                .primaries
                .get(p as usize)
                .and_then(|&i| r.hosts.get(i as usize))
            {
                Some(a) if *a == self.inner.addr => return Ok(None),
                Some(a) => {
                    if let Some(pool) = r.pools.get(a) {
                        return Ok(Some(pool.clone()));
                    }
                    a.clone()
                }
                None => return Ok(None),
            }
        };
        let pool = Client::connect_direct(&addr, self.inner.config.clone()).await?;
        routes.lock().unwrap().pools.insert(addr, pool.clone());
        Ok(Some(pool))
    }

    /// Does this client talk to a store of several hosts (so host failures are retried, and
    /// multi-key requests are split per key)?
    fn multi_host(&self) -> bool {
        self.inner
            .routes
            .as_ref()
            .is_some_and(|r| r.lock().unwrap().hosts.len() > 1)
    }

    /// The address this client connects to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// What the server said when the first connection opened.
    pub fn server_info(&self) -> &ServerInfo {
        &self.inner.server
    }

    /// The next connection round-robin (among `shard`'s when given), opened or replaced first
    /// if it failed.
    async fn conn(&self, shard: Option<usize>) -> Result<Arc<Conn>> {
        let turn = self.inner.next_slot.fetch_add(1, Ordering::Relaxed);
        let index = match shard {
            Some(s) => s * self.inner.per_shard + turn % self.inner.per_shard,
            None => turn % self.inner.slots.len(),
        };
        let mut slot = self.inner.slots[index].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        // Drop the dead one first: it aborts its tasks and closes its socket.
        *slot = None;
        let mut settings = self.inner.settings.clone();
        if self.inner.shards > 1 {
            settings.shard = Some((index / self.inner.per_shard) as u32);
        }
        let conn = Arc::new(open(&self.inner.addr, &self.inner.config, &settings).await?);
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// Sends one request with its trailer (`values` back to back) and waits for the answer,
    /// all within `request_timeout_ms`. A `Response::Error` arrives as [`Error::Server`].
    ///
    /// In a multi-host store a keyed request goes straight to its partition's primary, and a
    /// request the store could not serve at that moment (a map change, a failover: the
    /// retryable [`ErrorCode`]s, or the host it went to failing) is retried, with the map
    /// fetched again, until `request_timeout_ms` runs out. A retried request may have been
    /// applied by its first attempt: an `add` then reports `AlreadyExists`.
    async fn call_parts(&self, req: &Request, values: &[&[u8]]) -> Result<RawReply> {
        self.call_parts_on(req, values, None).await
    }

    /// As [`Client::call_parts`], on a connection of `shard` of this host when given (a
    /// multi-key request whose keys that shard owns).
    async fn call_parts_on(
        &self,
        req: &Request,
        values: &[&[u8]],
        shard: Option<usize>,
    ) -> Result<RawReply> {
        let ms = self.inner.config.request_timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        let mut backoff_ms = RETRY_BACKOFF_MS_MIN;
        loop {
            let attempt = async {
                match self.route(req).await {
                    Ok(Some(pool)) => pool.call_once(req, values).await,
                    Ok(None) => {
                        let r = self.call_once_on(req, values, shard).await;
                        self.note_seed(&r);
                        r
                    }
                    Err(e) => Err(e),
                }
            };
            let result = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    // The host may be gone without a reset (its address unreachable): look at
                    // the map again before the next request rather than going back to it.
                    if let Some(r) = &self.inner.routes {
                        r.lock().unwrap().stale = true;
                    }
                    return Err(Error::Timeout { ms });
                }
            };
            let retry = match &result {
                Err(Error::Server(reply)) => reply.code.is_retryable(),
                Err(Error::Connect { .. } | Error::Closed { .. }) => self.multi_host(),
                _ => false,
            };
            if !retry || self.inner.routes.is_none() {
                return result;
            }
            if let Some(r) = &self.inner.routes {
                r.lock().unwrap().stale = true;
            }
            let wait = Duration::from_millis(backoff_ms);
            if tokio::time::Instant::now() + wait >= deadline {
                return result;
            }
            tokio::time::sleep(wait).await;
            backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MS_MAX);
        }
    }

    /// One attempt on this client's own pool: on the key's owner shard when routing by shard.
    async fn call_once(&self, req: &Request, values: &[&[u8]]) -> Result<RawReply> {
        self.call_once_on(req, values, None).await
    }

    async fn call_once_on(
        &self,
        req: &Request,
        values: &[&[u8]],
        shard: Option<usize>,
    ) -> Result<RawReply> {
        let conn = self.conn(shard.or_else(|| self.shard_of(req))).await?;
        conn.call(req, values).await
    }

    /// Sends any request and returns the raw answer: the escape hatch for requests this API
    /// does not wrap (and for tools such as load generators). `value` is the frame's trailer.
    pub async fn raw_request(&self, req: &Request, value: &[u8]) -> Result<RawReply> {
        self.call_parts(req, &[value]).await
    }

    /// Opens (creating if missing) the namespace `name` and returns a handle to it.
    /// A handle to the namespace `name` made here, without asking the server: namespace ids
    /// derive from names, so no round trip is needed. The name is not registered, so
    /// `namespaces` does not list it until some client opens it with [`Client::namespace`].
    /// Use it for reads and removals, so that a mistyped name does not create a namespace.
    pub fn namespace_unregistered(&self, name: &str) -> Namespace {
        Namespace {
            client: self.clone(),
            id: stategrid_proto::hash::namespace_id(name),
            name: Arc::from(name),
        }
    }

    pub async fn namespace(&self, name: &str) -> Result<Namespace> {
        let req = Request::NsOpen {
            name: name.to_owned(),
        };
        match self.call_parts(&req, &[]).await?.response {
            Response::Namespace { id } => Ok(Namespace {
                client: self.clone(),
                id,
                name: Arc::from(name),
            }),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Every namespace with its object count.
    pub async fn namespaces(&self) -> Result<Vec<NsInfo>> {
        let req = Request::NsList;
        match self.call_parts(&req, &[]).await?.response {
            Response::Namespaces { items } => Ok(items),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// The connected host's status: version, shards, objects, memory, parameters, ...
    pub async fn stats(&self) -> Result<Stats> {
        let req = Request::Stats;
        match self.call_parts(&req, &[]).await?.response {
            Response::Stats(stats) => Ok(stats),
            other => Err(unexpected(&req, &other)),
        }
    }
}

/// Per-item results of requests run one per item (in a multi-host store), in item order: a
/// server's refusal is the item's error; anything else (timeout, lost connection) fails all.
async fn collect_items<T: Send + 'static>(
    mut set: tokio::task::JoinSet<(usize, Result<T>)>,
    n: usize,
) -> Result<Vec<std::result::Result<T, ErrorReply>>> {
    let mut out: Vec<Option<std::result::Result<T, ErrorReply>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (i, r) = joined.map_err(|e| Error::Protocol(format!("a per-item task failed: {e}")))?;
        out[i] = Some(match r {
            Ok(v) => Ok(v),
            Err(Error::Server(reply)) => Err(reply),
            Err(e) => return Err(e),
        });
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every item answered"))
        .collect())
}

/// Runs `futs` concurrently on the calling task (no spawn, so they may borrow) and returns
/// their outputs in order.
async fn join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Puts the per-shard parts' item results back in item order (`groups` as from
/// `Namespace::shard_groups`). A part that failed as a whole fails the request.
fn merge_parts<T>(
    groups: &[(usize, Vec<usize>)],
    parts: Vec<Result<Vec<std::result::Result<T, ErrorReply>>>>,
    n: usize,
) -> Result<Vec<std::result::Result<T, ErrorReply>>> {
    let mut out: Vec<Option<std::result::Result<T, ErrorReply>>> = (0..n).map(|_| None).collect();
    for ((_, idx), part) in groups.iter().zip(parts) {
        let part = part?;
        if part.len() != idx.len() {
            return Err(Error::Protocol(format!(
                "a part of {} items answered {} results",
                idx.len(),
                part.len()
            )));
        }
        for (&i, r) in idx.iter().zip(part) {
            out[i] = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| r.expect("every item is in one part"))
        .collect())
}

/// The error for an answer that does not fit its request.
fn unexpected(req: &Request, got: &Response) -> Error {
    let got = format!("{got:?}");
    let got: String = got.chars().take(120).collect();
    Error::Protocol(format!("unexpected answer to {}: {got}", req.name()))
}

/// Options for a write, built from defaults: no timeout change, evictable.
///
/// Any write method takes either this or the protocol's [`WriteOpts`].
///
/// ```
/// use stategrid_client::{TimeoutKind, WriteOptions, WriteOpts};
/// let opts: WriteOpts = WriteOptions::sliding(1200).not_evictable().into();
/// assert_eq!(opts.timeout.unwrap().kind, TimeoutKind::Sliding);
/// assert!(!opts.evictable);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOptions(WriteOpts);

impl WriteOptions {
    /// No timeout change (a new object never expires), evictable.
    pub fn new() -> Self {
        WriteOptions(WriteOpts::default())
    }

    /// Sets the timeout: `timeout_s` 0 means never; at most [`stategrid_proto::TIMEOUT_S_MAX`].
    pub fn timeout(mut self, timeout_s: u32, kind: TimeoutKind) -> Self {
        self.0.timeout = Some(Timeout { timeout_s, kind });
        self
    }

    /// Expires `timeout_s` after this write.
    pub fn absolute(timeout_s: u32) -> Self {
        Self::new().timeout(timeout_s, TimeoutKind::Absolute)
    }

    /// Expires after `timeout_s` without a read or update (sessions).
    pub fn sliding(timeout_s: u32) -> Self {
        Self::new().timeout(timeout_s, TimeoutKind::Sliding)
    }

    /// Expires after `timeout_s` without an update; reads do not extend it.
    pub fn reset_on_update(timeout_s: u32) -> Self {
        Self::new().timeout(timeout_s, TimeoutKind::ResetOnUpdate)
    }

    /// Removes any timeout: the object never expires.
    pub fn never_expires(self) -> Self {
        self.timeout(0, TimeoutKind::Absolute)
    }

    /// The LRU may not evict this object when memory runs short. (Every write sets
    /// evictability; the default is evictable.)
    pub fn not_evictable(mut self) -> Self {
        self.0.evictable = false;
        self
    }
}

impl From<WriteOptions> for WriteOpts {
    fn from(o: WriteOptions) -> WriteOpts {
        o.0
    }
}

/// A read: the value and the object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadResult {
    pub value: Vec<u8>,
    pub meta: Meta,
}

/// A read that took the object's lock. Pass `lock_token` to
/// [`Namespace::update_and_unlock`], [`Namespace::unlock`] or [`Namespace::refresh_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    pub value: Vec<u8>,
    pub meta: Meta,
    pub lock_token: u64,
}

/// One page of [`Namespace::list_keys`]. `next_cursor` 0 means there are no more pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    pub keys: Vec<Vec<u8>>,
    pub next_cursor: u64,
}

/// Keys asked for per page by [`Namespace::keys`]; lowered to the server's limit if it
/// answers `TooManyItems`.
pub const KEY_PAGE_LIMIT: u32 = 1000;

/// A handle to one namespace: every object call goes through it. Cheap to clone.
///
/// Keys and values are any byte slices (`&str`, `&[u8]`, `Vec<u8>`, ...). Values come back as
/// `Vec<u8>`: the answer is copied once out of the connection's receive buffer (which is
/// reused for the next frames), and a `Vec` is the plainest owner of that copy.
#[derive(Clone, Debug)]
pub struct Namespace {
    client: Client,
    id: NsId,
    name: Arc<str>,
}

impl Namespace {
    /// The namespace's id (derived from its name).
    pub fn id(&self) -> NsId {
        self.id
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client this handle uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, key: &[u8]) -> Key {
        Key {
            ns: self.id,
            key: key.to_vec(),
        }
    }

    async fn call(&self, req: Request, value: Option<&[u8]>) -> Result<(Request, RawReply)> {
        let values: &[&[u8]] = match &value {
            Some(v) => std::slice::from_ref(v),
            None => &[],
        };
        let reply = self.client.call_parts(&req, values).await?;
        Ok((req, reply))
    }

    /// A write that answers `Written { version }`.
    async fn write(&self, req: Request, value: &[u8]) -> Result<u64> {
        match self.call(req, Some(value)).await? {
            (
                _,
                RawReply {
                    response: Response::Written { version },
                    ..
                },
            ) => Ok(version),
            (req, reply) => Err(unexpected(&req, &reply.response)),
        }
    }

    /// A request whose success carries nothing the caller needs.
    async fn done(&self, req: Request) -> Result<()> {
        match self.call(req, None).await? {
            (
                _,
                RawReply {
                    response:
                        Response::Ok
                        | Response::Written { .. }
                        | Response::Meta { .. }
                        | Response::Count { .. },
                    ..
                },
            ) => Ok(()),
            (req, reply) => Err(unexpected(&req, &reply.response)),
        }
    }

    /// Creates the object; fails with `AlreadyExists` if it is there. Returns the new version.
    pub async fn add(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
    ) -> Result<u64> {
        let req = Request::Add {
            key: self.key(key.as_ref()),
            opts: opts.into(),
        };
        self.write(req, value.as_ref()).await
    }

    /// Creates or replaces the object, ignoring any lock (ScaleOut's AddOrUpdate). Returns
    /// the new version.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
    ) -> Result<u64> {
        let req = Request::Put {
            key: self.key(key.as_ref()),
            opts: opts.into(),
        };
        self.write(req, value.as_ref()).await
    }

    /// Replaces an existing object (`NotFound` if missing, `Locked` if someone holds its
    /// lock). Returns the new version.
    pub async fn update(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
    ) -> Result<u64> {
        let req = Request::Update {
            key: self.key(key.as_ref()),
            opts: opts.into(),
            lock_token: None,
        };
        self.write(req, value.as_ref()).await
    }

    /// Replaces an object this caller has locked, keeping the lock. Returns the new version.
    pub async fn update_with_lock(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
        lock_token: u64,
    ) -> Result<u64> {
        let req = Request::Update {
            key: self.key(key.as_ref()),
            opts: opts.into(),
            lock_token: Some(lock_token),
        };
        self.write(req, value.as_ref()).await
    }

    /// Replaces the object only if its version is still `version` (optimistic concurrency);
    /// `VersionMismatch` otherwise ([`Error::stored_version`] has the current one).
    pub async fn update_if_version(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
        version: u64,
    ) -> Result<u64> {
        let req = Request::UpdateIfVersion {
            key: self.key(key.as_ref()),
            opts: opts.into(),
            version,
            lock_token: None,
        };
        self.write(req, value.as_ref()).await
    }

    /// Reads the value and metadata (restarts a sliding timeout). `NotFound` if missing.
    pub async fn read(&self, key: impl AsRef<[u8]>) -> Result<ReadResult> {
        let req = Request::Read {
            key: self.key(key.as_ref()),
        };
        let (req, reply) = self.call(req, None).await?;
        match reply.response {
            Response::Value { meta, .. } => Ok(ReadResult {
                value: checked_value(&req, meta, reply.trailer)?,
                meta,
            }),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Reads and locks the object atomically. `Locked` while another client holds the lock
    /// ([`Error::lock_expires_in_ms`] says how long); the lock expires by itself after the
    /// server's `lock_timeout` unless refreshed.
    pub async fn read_and_lock(&self, key: impl AsRef<[u8]>) -> Result<Locked> {
        let req = Request::ReadAndLock {
            key: self.key(key.as_ref()),
        };
        let (req, reply) = self.call(req, None).await?;
        match reply.response {
            Response::Value {
                meta,
                lock_token: Some(lock_token),
            } => Ok(Locked {
                value: checked_value(&req, meta, reply.trailer)?,
                meta,
                lock_token,
            }),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Replaces the value and releases the lock atomically (`LockLost` if the token no longer
    /// holds it). Returns the new version.
    pub async fn update_and_unlock(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: impl Into<WriteOpts>,
        lock_token: u64,
    ) -> Result<u64> {
        let req = Request::UpdateAndUnlock {
            key: self.key(key.as_ref()),
            opts: opts.into(),
            lock_token,
        };
        self.write(req, value.as_ref()).await
    }

    /// Releases a lock without changing the value.
    pub async fn unlock(&self, key: impl AsRef<[u8]>, lock_token: u64) -> Result<()> {
        self.done(Request::Unlock {
            key: self.key(key.as_ref()),
            lock_token,
        })
        .await
    }

    /// Restarts a held lock's expiry.
    pub async fn refresh_lock(&self, key: impl AsRef<[u8]>, lock_token: u64) -> Result<()> {
        self.done(Request::RefreshLock {
            key: self.key(key.as_ref()),
            lock_token,
        })
        .await
    }

    /// Removes the object (`NotFound` if missing, `Locked` if someone holds its lock).
    pub async fn remove(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.done(Request::Remove {
            key: self.key(key.as_ref()),
            lock_token: None,
            force: false,
        })
        .await
    }

    /// Removes an object this caller has locked (the session provider's "abandon").
    pub async fn remove_with_lock(&self, key: impl AsRef<[u8]>, lock_token: u64) -> Result<()> {
        self.done(Request::Remove {
            key: self.key(key.as_ref()),
            lock_token: Some(lock_token),
            force: false,
        })
        .await
    }

    /// Removes the object even if it is locked.
    pub async fn remove_forced(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.done(Request::Remove {
            key: self.key(key.as_ref()),
            lock_token: None,
            force: true,
        })
        .await
    }

    /// Restarts the object's timeout, or replaces it with `timeout` when given.
    pub async fn touch(&self, key: impl AsRef<[u8]>, timeout: Option<Timeout>) -> Result<()> {
        self.done(Request::Touch {
            key: self.key(key.as_ref()),
            timeout,
        })
        .await
    }

    /// The object's metadata, without its value; does not restart a sliding timeout.
    pub async fn meta(&self, key: impl AsRef<[u8]>) -> Result<Meta> {
        let req = Request::Meta {
            key: self.key(key.as_ref()),
        };
        let (req, reply) = self.call(req, None).await?;
        match reply.response {
            Response::Meta { meta } => Ok(meta),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// One page of keys, at most `limit` of them. Start with `cursor` 0 and pass each page's
    /// `next_cursor` until it is 0. Keys added or removed meanwhile may or may not be listed.
    pub async fn list_keys(&self, cursor: u64, limit: u32) -> Result<KeyPage> {
        let req = Request::ListKeys {
            ns: self.id,
            cursor,
            limit,
        };
        let (req, reply) = self.call(req, None).await?;
        match reply.response {
            Response::Keys { keys, next_cursor } => Ok(KeyPage { keys, next_cursor }),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Every key of the namespace, page by page. Holds them all in memory: for a very large
    /// namespace, walk [`Namespace::list_keys`] instead.
    pub async fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        let mut cursor = 0;
        let mut limit = KEY_PAGE_LIMIT;
        loop {
            match self.list_keys(cursor, limit).await {
                Ok(page) => {
                    all.extend(page.keys);
                    if page.next_cursor == 0 {
                        return Ok(all);
                    }
                    cursor = page.next_cursor;
                }
                // The server's page limit is lower than ours: use its limit.
                Err(Error::Server(r))
                    if r.code == ErrorCode::TooManyItems
                        && r.detail > 0
                        && r.detail < u64::from(limit) =>
                {
                    limit = r.detail as u32;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads several keys in one request. One result per key, in order: the value and
    /// metadata, or the item's own error (`NotFound`, ...).
    pub async fn multi_read<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Result<ReadResult, ErrorReply>>> {
        if self.client.multi_host() {
            // The keys live on several hosts: one read each, all in flight at once, each to
            // its partition's primary.
            let mut set = tokio::task::JoinSet::new();
            for (i, k) in keys.iter().enumerate() {
                let (ns, key) = (self.clone(), k.as_ref().to_vec());
                set.spawn(async move { (i, ns.read(&key).await) });
            }
            return collect_items(set, keys.len()).await;
        }
        if self.client.shards() > 1 {
            // One part per shard that owns some of the keys, on that shard's connection, all
            // in flight at once; the results go back in key order.
            let groups = self.shard_groups(keys.iter().map(|k| k.as_ref()));
            let parts = join_all(groups.iter().map(|(shard, idx)| {
                self.multi_read_part(idx.iter().map(|&i| keys[i].as_ref()), Some(*shard))
            }))
            .await;
            return merge_parts(&groups, parts, keys.len());
        }
        self.multi_read_part(keys.iter().map(|k| k.as_ref()), None)
            .await
    }

    /// Item indexes grouped by the shard of the host that owns their key, in first-seen order.
    fn shard_groups<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> Vec<(usize, Vec<usize>)> {
        let shards = self.client.shards();
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (i, k) in keys.enumerate() {
            let p = stategrid_proto::partition_of(stategrid_proto::key_hash(self.id, k));
            let s = stategrid_proto::owner_shard(p, shards);
            match groups.iter_mut().find(|(g, _)| *g == s) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((s, vec![i])),
            }
        }
        groups
    }

    /// One `MultiRead` of `keys`, on `shard`'s connection when given.
    async fn multi_read_part<'a>(
        &self,
        keys: impl Iterator<Item = &'a [u8]>,
        shard: Option<usize>,
    ) -> Result<Vec<Result<ReadResult, ErrorReply>>> {
        let keys: Vec<Vec<u8>> = keys.map(|k| k.to_vec()).collect();
        let n = keys.len();
        let req = Request::MultiRead { ns: self.id, keys };
        let reply = self.client.call_parts_on(&req, &[], shard).await?;
        let items = match reply.response {
            Response::Multi { items } => items,
            other => return Err(unexpected(&req, &other)),
        };
        if items.len() != n {
            return Err(Error::Protocol(format!(
                "multi-read of {n} keys answered {} items",
                items.len()
            )));
        }
        let mut offset = 0usize;
        let trailer = reply.trailer;
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(match item {
                ItemResult::Found(meta) => {
                    let end = offset + meta.value_bytes as usize;
                    let Some(value) = trailer.get(offset..end) else {
                        return Err(Error::Protocol(format!(
                            "multi-read trailer of {} bytes is shorter than its items' values",
                            trailer.len()
                        )));
                    };
                    // The object's content type (HTTP) follows its value: skipped.
                    offset = end + meta.content_type_bytes as usize;
                    Ok(ReadResult {
                        value: value.to_vec(),
                        meta,
                    })
                }
                ItemResult::Failed(reply) => Err(reply),
            });
        }
        if offset != trailer.len() {
            return Err(Error::Protocol(format!(
                "multi-read trailer has {} bytes, its items' values {offset}",
                trailer.len()
            )));
        }
        Ok(results)
    }

    /// Puts several objects in one request (create or replace, like [`Namespace::put`]), all
    /// with the same options. One result per item, in order: its new version or its own error.
    pub async fn bulk_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        items: &[(K, V)],
        opts: impl Into<WriteOpts>,
    ) -> Result<Vec<Result<u64, ErrorReply>>> {
        let opts = opts.into();
        if self.client.multi_host() {
            // As in multi_read: each put goes to its own primary (and is replicated there).
            let mut set = tokio::task::JoinSet::new();
            for (i, (k, v)) in items.iter().enumerate() {
                let (ns, key, value) = (self.clone(), k.as_ref().to_vec(), v.as_ref().to_vec());
                set.spawn(async move { (i, ns.put(&key, &value, opts).await) });
            }
            return collect_items(set, items.len()).await;
        }
        if self.client.shards() > 1 {
            // As in multi_read: one part per owner shard, results back in item order.
            let groups = self.shard_groups(items.iter().map(|(k, _)| k.as_ref()));
            let parts = join_all(groups.iter().map(|(shard, idx)| {
                let part = idx
                    .iter()
                    .map(|&i| (items[i].0.as_ref(), items[i].1.as_ref()));
                self.bulk_put_part(part, opts, Some(*shard))
            }))
            .await;
            return merge_parts(&groups, parts, items.len());
        }
        self.bulk_put_part(
            items.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
            opts,
            None,
        )
        .await
    }

    /// One `BulkPut` of `items`, on `shard`'s connection when given.
    async fn bulk_put_part<'a>(
        &self,
        items: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
        opts: WriteOpts,
        shard: Option<usize>,
    ) -> Result<Vec<Result<u64, ErrorReply>>> {
        let n = items.len();
        let mut bulk = Vec::with_capacity(n);
        let mut values: Vec<&[u8]> = Vec::with_capacity(n);
        for (key, value) in items {
            bulk.push(BulkItem {
                key: key.to_vec(),
                value_bytes: u32::try_from(value.len()).map_err(|_| {
                    Error::Server(ErrorReply::with_message(
                        ErrorCode::ObjectTooLarge,
                        u64::from(u32::MAX),
                        "a value must be under 4 GiB (client-side check)",
                    ))
                })?,
                opts,
            });
            values.push(value);
        }
        let req = Request::BulkPut {
            ns: self.id,
            items: bulk,
        };
        let reply = self.client.call_parts_on(&req, &values, shard).await?;
        let results = match reply.response {
            Response::Bulk { items } => items,
            other => return Err(unexpected(&req, &other)),
        };
        if results.len() != n {
            return Err(Error::Protocol(format!(
                "bulk put of {n} items answered {} results",
                results.len()
            )));
        }
        Ok(results
            .into_iter()
            .map(|r| match r {
                PutResult::Written { version } => Ok(version),
                PutResult::Failed(reply) => Err(reply),
            })
            .collect())
    }

    /// Objects in the namespace.
    pub async fn count(&self) -> Result<u64> {
        let (req, reply) = self.call(Request::NsCount { ns: self.id }, None).await?;
        match reply.response {
            Response::Count { objects } => Ok(objects),
            other => Err(unexpected(&req, &other)),
        }
    }

    /// Removes every object of the namespace, locked ones included.
    pub async fn clear(&self) -> Result<()> {
        self.done(Request::NsClear { ns: self.id }).await
    }
}

/// A read's value, checked against the length its metadata announces.
/// The value of a `Value` answer: the trailer holds the value, then the object's content type
/// (`meta.content_type_bytes`, set by the HTTP API), which is cut off here.
fn checked_value(req: &Request, meta: Meta, mut trailer: Vec<u8>) -> Result<Vec<u8>> {
    let value_bytes = meta.value_bytes as usize;
    if trailer.len() != value_bytes + meta.content_type_bytes as usize {
        return Err(Error::Protocol(format!(
            "{} answered a value of {} bytes, its metadata says {} (+{} of content type)",
            req.name(),
            trailer.len(),
            meta.value_bytes,
            meta.content_type_bytes
        )));
    }
    trailer.truncate(value_bytes);
    Ok(trailer)
}
