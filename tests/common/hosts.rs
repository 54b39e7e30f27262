//! A stategrid store of several hosts on loopback for tests that only need it running: each
//! host a real `stategrid serve` bound to its own 127.0.0.x with the same ports, finding the
//! others through the static `hosts` list (as tests/multihost.rs does). Started, waited on until
//! the partition map settles (every partition with a primary and a replica), killed on drop.

use std::process::{Child, Command, Stdio};

use super::store::{client, wait_settled};
use super::{bin, free_port};

/// One host of a [`Store`].
pub struct Host {
    pub ip: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Host {
    /// The last lines the host wrote to stderr, for failure messages.
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- {} stderr ---\n{tail}", self.ip)
    }

    /// `kill -9` (SIGKILL), no goodbye to the others.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running store: hosts `127.0.0.<first_ip>`, `.<first_ip + 1>`... with shared ports.
pub struct Store {
    pub hosts: Vec<Host>,
    pub svr_port: u16,
}

impl Store {
    /// Starts `n` hosts (one shard each, one replica per partition) and waits until the map
    /// has settled over all of them. Panics with every host's output if it does not.
    pub fn start(n: u8, first_ip: u8) -> Store {
        Store::start_with(n, first_ip, |_| Vec::new())
    }

    /// As [`Store::start`], with more `--set`s for each host (given its IP), such as an HTTP
    /// port bound to that IP.
    pub fn start_with(
        n: u8,
        first_ip: u8,
        extra: impl Fn(&str) -> Vec<(&'static str, String)>,
    ) -> Store {
        let (svr, mgt, int) = (free_port(), free_port(), free_port());
        let ips: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.{}", first_ip + i))
            .collect();
        let hosts: Vec<Host> = ips
            .iter()
            .map(|me| {
                let peers: Vec<String> = ips
                    .iter()
                    .filter(|o| *o != me)
                    .map(|o| format!("{o}:{mgt}"))
                    .collect();
                let dir = tempfile::tempdir().expect("temp dir");
                let sets = [
                    ("net_interface", me.clone()),
                    ("svr_port", svr.to_string()),
                    ("mgt_port", mgt.to_string()),
                    ("int_port", int.to_string()),
                    ("use_multicast", "0".into()),
                    ("hosts", peers.join(",")),
                    ("shards", "1".into()),
                    ("max_replicas", "1".into()),
                    ("log_dir", dir.path().join("log").display().to_string()),
                    ("log_level", "info".into()),
                ];
                let mut cmd = Command::new(bin());
                cmd.arg("serve");
                for (name, value) in sets.iter().cloned().chain(extra(me)) {
                    cmd.arg("--set").arg(format!("{name}={value}"));
                }
                let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr);
                Host {
                    ip: me.clone(),
                    child: Some(cmd.spawn().expect("spawn stategrid serve")),
                    dir,
                }
            })
            .collect();
        let store = Store {
            hosts,
            svr_port: svr,
        };
        let svrs = store.svr_addrs();
        let c = client(&svrs[0], 10_000);
        wait_settled(&c, &svrs, 1, || store.outputs());
        store
    }

    /// `IP:svr_port` of every host, in start order.
    pub fn svr_addrs(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("{}:{}", h.ip, self.svr_port))
            .collect()
    }

    /// Every host's recent output, for failure messages.
    pub fn outputs(&self) -> String {
        self.hosts
            .iter()
            .map(|h| h.output())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
