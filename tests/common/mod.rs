//! Shared helpers for the integration tests: start a real `stategrid serve` process on free
//! loopback ports, wait until it accepts, and stop it when the test ends.
//!
//! ```ignore
//! mod common;
//! let server = common::TestServer::start(&[("lock_timeout", "2")]);
//! let client = server.blocking_client();
//! ```
//!
//! The server's stdout and stderr go to files in its temp dir (a pipe nobody reads would
//! block a chatty server once it fills); [`TestServer::output`] reads them, and a failing test
//! prints them.
#![allow(dead_code)] // each test file uses a different part of this module

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start accepting connections.
pub const START_TIMEOUT_MS: u64 = 20_000;
/// How long a graceful stop may take before the test fails.
pub const STOP_TIMEOUT_MS: u64 = 30_000;

/// The `stategrid` binary this test build made.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stategrid"))
}

pub mod hosts;
pub mod http;
pub mod pki;
#[path = "../support/ports.rs"]
mod ports;
pub mod programs;
pub mod raw;
pub mod redis;
pub mod resp;
pub mod store;
pub use ports::free_port;

/// A running `stategrid serve`, killed when dropped.
pub struct TestServer {
    /// `127.0.0.1:<svr_port>`: the client port.
    pub addr: SocketAddr,
    pub child: Child,
    /// Holds `log_dir` and the process's stdout/stderr files; removed on drop.
    pub dir: tempfile::TempDir,
    /// What the harness's own clients authenticate with (a server with client users).
    pub credentials: Option<stategrid_client::Credentials>,
}

impl TestServer {
    /// Starts a one-shard server on free loopback ports, with `extra_sets` as more
    /// `--set NAME=VALUE` (replacing a default of the same name), and waits until its client
    /// port accepts. Panics with the server's output if it exits or does not accept in time.
    pub fn start(extra_sets: &[(&str, &str)]) -> TestServer {
        Self::start_with(extra_sets, |_| {})
    }

    /// Like [`TestServer::start`], letting the caller adjust the command (environment,
    /// redirections, a wrapper) just before it is spawned.
    pub fn start_with(extra_sets: &[(&str, &str)], adjust: impl Fn(&mut Command)) -> TestServer {
        Self::start_as(extra_sets, None, adjust)
    }

    /// Like [`TestServer::start_with`], for a server with client users: the harness's own
    /// clients (readiness checks, [`TestServer::blocking_client`]) send `credentials`.
    pub fn start_as(
        extra_sets: &[(&str, &str)],
        credentials: Option<stategrid_client::Credentials>,
        adjust: impl Fn(&mut Command),
    ) -> TestServer {
        // Free ports are only free until someone binds them: another test's server may take
        // ours between `free_port` and our bind. Such a start is retried on new ports.
        const ATTEMPTS: usize = 5;
        let mut last = String::new();
        for _ in 0..ATTEMPTS {
            match Self::try_start(extra_sets, &credentials, &adjust) {
                Ok(server) => return server,
                Err(why) => last = why,
            }
        }
        panic!("stategrid serve did not start in {ATTEMPTS} attempts; last: {last}");
    }

    /// One start attempt. `Err` means "a port was taken, try others"; anything else panics.
    fn try_start(
        extra_sets: &[(&str, &str)],
        credentials: &Option<stategrid_client::Credentials>,
        adjust: &impl Fn(&mut Command),
    ) -> Result<TestServer, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_dir = dir.path().join("log");
        std::fs::create_dir_all(&log_dir).expect("log dir");
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut sets: Vec<(String, String)> = vec![
            ("svr_port".into(), ports[0].to_string()),
            ("shards".into(), "1".into()),
            ("log_dir".into(), log_dir.display().to_string()),
            ("mgt_port".into(), ports[1].to_string()),
            ("int_port".into(), ports[2].to_string()),
            // A lone host: nothing to discover, so it forms its one-host store at once.
            ("use_multicast".into(), "0".into()),
        ];
        for (name, value) in extra_sets {
            sets.retain(|(n, _)| n != name);
            sets.push((name.to_string(), value.to_string()));
        }
        let svr_port: u16 = sets
            .iter()
            .find(|(n, _)| n == "svr_port")
            .map(|(_, v)| v.parse().expect("svr_port is a port number"))
            .expect("svr_port is set");

        let mut cmd = Command::new(bin());
        cmd.arg("serve");
        for (name, value) in &sets {
            cmd.arg("--set").arg(format!("{name}={value}"));
        }
        let stdout = std::fs::File::create(dir.path().join("stdout.txt")).expect("stdout file");
        let stderr = std::fs::File::create(dir.path().join("stderr.txt")).expect("stderr file");
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        adjust(&mut cmd);
        let child = cmd.spawn().expect("spawn stategrid serve");
        let mut server = TestServer {
            addr: SocketAddr::from(([127, 0, 0, 1], svr_port)),
            child,
            dir,
            credentials: credentials.clone(),
        };
        server.wait_until_accepting(&sets)?;
        Ok(server)
    }

    /// Waits until the client port accepts and the server answering there is this one (its
    /// `log_dir` is ours: a port taken by another test's server would answer too).
    fn wait_until_accepting(&mut self, sets: &[(String, String)]) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let output = self.output();
                // 14: the client port was taken; "are both": two drawn ports collided.
                if status.code() == Some(14) || output.contains("are both") {
                    return Err(format!("port clash: {output}"));
                }
                panic!(
                    "stategrid serve {sets:?} exited with {status} before accepting on {}\n{output}",
                    self.addr
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                let ours = self.log_dir().display().to_string();
                let theirs =
                    stategrid_client::blocking::Client::connect(&self.host(), self.config())
                        .and_then(|c| c.stats())
                        .map(|st| {
                            st.params
                                .into_iter()
                                .find(|p| p.name == "log_dir")
                                .map(|p| p.value)
                        });
                match theirs {
                    Ok(Some(dir)) if dir == ours => {
                        self.wait_until_joined();
                        return Ok(());
                    }
                    Ok(_) => {
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        return Err(format!("{} is another test's server", self.addr));
                    }
                    // Accepting but not serving yet (still starting): look again.
                    Err(_) => {}
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "stategrid serve {sets:?} did not accept on {} within {START_TIMEOUT_MS} ms\n{}",
                    self.addr,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the host has formed (or joined) its store: until then keyed requests
    /// are answered `NotJoined` or `NotPrimary`, and tests that speak the raw protocol do not
    /// retry.
    fn wait_until_joined(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let client = self.blocking_client();
        loop {
            // A keyed request is served once the host has a map and a primary lease (the
            // client retries NotJoined and NotPrimary meanwhile).
            match client.namespace_unregistered("readiness").meta("probe") {
                Ok(_) => return,
                Err(e) if e.code() == Some(stategrid_proto::ErrorCode::NotFound) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("{} did not join a store: {e}\n{}", self.addr, self.output())
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The `HOST:PORT` to pass to `--host`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The server's `log_dir`.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// The temp dir holding the server's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A blocking client of this server with the default configuration (and the harness's
    /// credentials, if any).
    pub fn blocking_client(&self) -> stategrid_client::blocking::Client {
        stategrid_client::blocking::Client::connect(&self.host(), self.config())
            .expect("connect to the test server")
    }

    /// The default client configuration with the harness's credentials.
    pub fn config(&self) -> stategrid_client::ClientConfig {
        stategrid_client::ClientConfig {
            credentials: self.credentials.clone(),
            ..Default::default()
        }
    }

    /// What the process printed so far (unless `start_with` redirected it), for failure
    /// messages.
    pub fn output(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!(
            "--- server stdout ---\n{}--- server stderr ---\n{}",
            read("stdout.txt"),
            read("stderr.txt")
        )
    }

    /// Sends SIGTERM (unless the process already exited) and waits for it to exit; panics if
    /// that takes longer than [`STOP_TIMEOUT_MS`]. Returns its exit status.
    pub fn stop_graceful(&mut self) -> ExitStatus {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            return status;
        }
        // SAFETY: signalling our own child, which try_wait just found unreaped, so its pid
        // is still ours.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
        let deadline = Instant::now() + Duration::from_millis(STOP_TIMEOUT_MS);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let output = self.output();
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("server did not exit within {STOP_TIMEOUT_MS} ms of SIGTERM\n{output}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            if std::thread::panicking() {
                eprintln!("{}", self.output());
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
