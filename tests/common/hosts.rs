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
    /// Everything the host wrote to stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default()
    }

    /// The last lines the host wrote to stderr, for failure messages.
    pub fn output(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("stderr.txt")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- {} stderr ---\n{tail}", self.ip)
    }

    /// The process is still running (neither exited nor killed).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    /// The process id, while it runs (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the host.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("the host runs") as i32;
        // SAFETY: a signal to our own child process.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
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
        if std::thread::panicking() {
            eprintln!("{}", self.output());
        }
        self.kill9();
    }
}

/// The ports every host of a store shares (each host binds its own 127.0.0.x).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub mgt: u16,
    pub svr: u16,
    pub int: u16,
}

impl Ports {
    pub fn free() -> Ports {
        Ports {
            svr: free_port(),
            mgt: free_port(),
            int: free_port(),
        }
    }
}

impl Host {
    /// Starts one host on `ip` (one shard, one replica per partition) that finds `peers`
    /// (their IPs) through the static `hosts` list; `extra` adds or replaces parameters
    /// (`--set NAME=VALUE`). Does not wait.
    pub fn spawn(ip: &str, peers: &[String], ports: Ports, extra: &[(&str, String)]) -> Host {
        Host::spawn_wrapped(&[], ip, peers, ports, extra)
    }

    /// As [`Host::spawn`], run through `wrapper` (a program and its arguments that end by
    /// executing the rest of the command line in the same process, such as `unshare`), so
    /// the pid is still the host's own.
    pub fn spawn_wrapped(
        wrapper: &[&str],
        ip: &str,
        peers: &[String],
        ports: Ports,
        extra: &[(&str, String)],
    ) -> Host {
        let peers: Vec<String> = peers.iter().map(|o| format!("{o}:{}", ports.mgt)).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut sets: Vec<(&str, String)> = vec![
            ("net_interface", ip.to_string()),
            ("svr_port", ports.svr.to_string()),
            ("mgt_port", ports.mgt.to_string()),
            ("int_port", ports.int.to_string()),
            ("use_multicast", "0".into()),
            ("hosts", peers.join(",")),
            ("shards", "1".into()),
            ("max_replicas", "1".into()),
            ("log_dir", dir.path().join("log").display().to_string()),
            ("log_level", "info".into()),
        ];
        for (name, value) in extra {
            sets.retain(|(n, _)| n != name);
            sets.push((name, value.clone()));
        }
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin());
                c
            }
        };
        cmd.arg("serve");
        for (name, value) in &sets {
            cmd.arg("--set").arg(format!("{name}={value}"));
        }
        let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        Host {
            ip: ip.to_string(),
            child: Some(cmd.spawn().expect("spawn stategrid serve")),
            dir,
        }
    }
}

/// A running store: hosts `127.0.0.<first_ip>`, `.<first_ip + 1>`... with shared ports.
pub struct Store {
    pub hosts: Vec<Host>,
    pub svr_port: u16,
    pub mgt_port: u16,
    pub int_port: u16,
}

impl Store {
    /// Starts `n` hosts (one shard each, one replica per partition) and waits until the map
    /// has settled over all of them. Panics with every host's output if it does not.
    pub fn start(n: u8, first_ip: u8) -> Store {
        Store::start_with(n, first_ip, |_| Vec::new())
    }

    /// As [`Store::start`], with more `--set`s for each host (given its IP), such as an HTTP
    /// port bound to that IP; each replaces a default of the same name.
    pub fn start_with(
        n: u8,
        first_ip: u8,
        extra: impl Fn(&str) -> Vec<(&'static str, String)>,
    ) -> Store {
        let ports = Ports::free();
        let ips: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.{}", first_ip + i))
            .collect();
        let hosts: Vec<Host> = ips
            .iter()
            .map(|me| {
                let peers: Vec<String> = ips.iter().filter(|o| *o != me).cloned().collect();
                Host::spawn(me, &peers, ports, &extra(me))
            })
            .collect();
        Store::settled(hosts, ports)
    }

    /// A store of hosts the caller spawned (sharing `ports`), once its map has settled over
    /// all of them. Panics with every host's output if it does not.
    pub fn settled(hosts: Vec<Host>, ports: Ports) -> Store {
        let store = Store {
            hosts,
            svr_port: ports.svr,
            mgt_port: ports.mgt,
            int_port: ports.int,
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
