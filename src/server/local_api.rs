//! The shard's local-submit API as other modules on the shard's thread use it (the HTTP data
//! API): open a local connection, send native request frames through the shard's own routing,
//! await the native answers. See `shard/local.rs` for how the shard serves them (its
//! local connections are `shard/conn.rs`'s).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use stategrid_proto::frame;

use super::shard::{Answer, LocalConn, Mailbox, Shard};
use crate::config::Config;
use crate::net::AlignedBuf;

/// A handle on this thread's shard for local callers.
#[derive(Clone)]
pub struct ShardHandle {
    shard: Rc<RefCell<Shard>>,
    pub cfg: Arc<Config>,
    pub id: usize,
}

/// One caller's local connection (one HTTP connection's): one request at a time.
pub struct LocalSession {
    shard: Rc<RefCell<Shard>>,
    conn: LocalConn,
    mailbox: Rc<RefCell<Mailbox>>,
    next_id: std::cell::Cell<u32>,
}

pub use super::shard::{LocalAnswer, LocalError};

impl ShardHandle {
    pub(super) fn new(shard: Rc<RefCell<Shard>>) -> ShardHandle {
        let (cfg, id) = {
            let s = shard.borrow();
            (s.core.cfg.clone(), s.core.shard)
        };
        ShardHandle { shard, cfg, id }
    }

    /// The control plane's shared state (the installed map with every copy).
    pub fn plane(&self) -> Arc<crate::cluster::plane::Plane> {
        self.shard.borrow().plane()
    }

    /// Every shard's published `/metrics` counters.
    pub fn shared(&self) -> Arc<super::Shared> {
        self.shard.borrow().shared()
    }

    /// Counts one HTTP data API answer on this shard (`server::metrics`: a few adds).
    pub fn record_http(&self, op: usize, status: u16, us: u64) {
        if let Ok(mut s) = self.shard.try_borrow_mut() {
            s.core.metrics.http(op, status, us);
        }
    }

    /// Opens a local connection; fails while the shard drains or is full of connections.
    pub fn open(&self) -> Result<LocalSession, LocalError> {
        let (conn, mailbox) = self.shard.borrow_mut().open_local()?;
        Ok(LocalSession {
            shard: self.shard.clone(),
            conn,
            mailbox,
            next_id: std::cell::Cell::new(1),
        })
    }
}

impl LocalSession {
    /// A request id for the next frame this session encodes.
    pub fn next_request_id(&self) -> u32 {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1).max(1));
        id
    }

    /// Sets what this session's requests may do (None: nothing but `Auth`), as `user`.
    pub fn set_role(&self, role: Option<crate::auth::users::Role>, user: &str) {
        self.shard
            .borrow_mut()
            .set_local_role(self.conn, role, user);
    }

    /// Serves one whole request frame with id `request_id` and returns its answer.
    pub async fn call(
        &self,
        frame: &AlignedBuf,
        request_id: u32,
    ) -> Result<LocalAnswer, LocalError> {
        // An answer left from a request whose caller went away belongs to nobody now.
        self.mailbox.borrow_mut().discard_answer();
        self.shard.borrow_mut().submit_local(self.conn, frame)?;
        loop {
            let a = Answer(self.mailbox.clone()).await?;
            let id = frame::request_id(&a.bytes);
            if id == Some(request_id) {
                return Ok(a);
            }
        }
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        match self.shard.try_borrow_mut() {
            Ok(mut s) => s.close_local(self.conn),
            Err(_) => {
                // The shard is busy on this thread right now (a drop from inside its own
                // borrow): close it from a task instead.
                let (shard, conn) = (self.shard.clone(), self.conn);
                glommio::spawn_local(async move { shard.borrow_mut().close_local(conn) }).detach();
            }
        }
    }
}
