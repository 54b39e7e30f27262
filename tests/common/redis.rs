//! Real Redis servers for the client tests: a standalone `redis-server` and a 3-node Redis
//! Cluster on free loopback ports. Running the client programs against them first proves the
//! programs' expectations are Redis's own, so a failure against stategrid is stategrid's.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// How long Redis may take to accept, or a cluster to agree on its slots.
pub const REDIS_START_TIMEOUT_MS: u64 = 20_000;

/// A `redis-server` process, killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port, no persistence, with `extra` arguments.
    pub fn start(bin: &Path, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log.txt")).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn redis-server");
        let mut server = RedisServer { port, child, dir };
        server.wait_accepting();
        server
    }

    fn wait_accepting(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(REDIS_START_TIMEOUT_MS);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("redis-server exited with {status}:\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not accept on {} in {REDIS_START_TIMEOUT_MS} ms:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log.txt")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three `redis-server --cluster-enabled yes` nodes, primaries only, the 16,384 slots spread by
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(server: &Path, cli: &Path) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                // The bus port is drawn too: the default (port + 10,000) is not known free.
                let bus = free_port().to_string();
                RedisServer::start(
                    server,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-node-timeout",
                        "5000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Every node must see the whole cluster before clients ask it for the slots.
        let deadline = Instant::now() + Duration::from_millis(REDIS_START_TIMEOUT_MS);
        for n in &nodes {
            loop {
                let info = Command::new(cli)
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli cluster info");
                let info = String::from_utf8_lossy(&info.stdout);
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "Redis Cluster node {} not ready:\n{info}\n{}",
                    n.port,
                    n.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }
}
