//! Programs of other languages that tests run (tests/clients/): where their interpreters are, and
//! running one to completion with a time limit, its output kept for the failure message.
//!
//! Everything here is installed by `scripts/install-test-deps.sh`. A missing interpreter or
//! package skips the test with a loud message, except under `CI=true`, where it fails: CI must
//! run every client test the README promises.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one client program may run before the test kills it and fails.
pub const PROGRAM_TIMEOUT_MS: u64 = 180_000;

/// The repository root (where `tests/clients` and `.venv-tests` are).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/clients/<name>`.
pub fn client_program(name: &str) -> PathBuf {
    repo().join("tests/clients").join(name)
}

/// An interpreter or tool a client program needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// The virtualenv's Python with redis-py, Flask-Session, django-redis...
    Python,
    /// `php` with the phpredis extension.
    Php,
    /// `node` with Debian's node-redis under /usr/share/nodejs.
    Node,
    /// `ruby` with the redis gem.
    Ruby,
    RedisCli,
    RedisServer,
}

/// Where Debian's node-redis lives (with its @redis/* dependencies); programs get it as
/// NODE_PATH, since a Node not built by Debian does not search there.
pub const NODE_PATH: &str = "/usr/share/nodejs";

/// The tool's executable, or why it cannot be used.
pub fn locate(tool: Tool) -> Result<PathBuf, String> {
    match tool {
        Tool::Python => {
            let py = repo().join(".venv-tests/bin/python");
            if py.is_file() {
                Ok(py)
            } else {
                Err(format!(
                    "no Python virtualenv for the client tests at {}",
                    py.display()
                ))
            }
        }
        Tool::Php => {
            let php = in_path("php")?;
            works(
                &php,
                &["-r", "exit(extension_loaded('redis') ? 0 : 1);"],
                "phpredis",
            )?;
            Ok(php)
        }
        Tool::Node => {
            let node = in_path("node")?;
            let pkg = Path::new(NODE_PATH).join("redis/package.json");
            if !pkg.is_file() {
                return Err(format!(
                    "node-redis is not installed ({} missing)",
                    pkg.display()
                ));
            }
            Ok(node)
        }
        Tool::Ruby => {
            let ruby = in_path("ruby")?;
            works(
                &ruby,
                &["-e", "require 'redis'"],
                "the redis gem (ruby-redis)",
            )?;
            Ok(ruby)
        }
        Tool::RedisCli => in_path("redis-cli"),
        Tool::RedisServer => in_path("redis-server"),
    }
}

fn in_path(bin: &str) -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(bin))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| format!("{bin} is not installed"))
}

fn works(bin: &Path, args: &[&str], what: &str) -> Result<(), String> {
    let ok = Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(format!("{} has no {what}", bin.display()))
    }
}

/// The tool, or `None` after saying loudly why the caller skips. Panics under `CI=true`.
pub fn require(tool: Tool, test: &str) -> Option<PathBuf> {
    match locate(tool) {
        Ok(p) => Some(p),
        Err(why) => {
            let why = format!("{why}; run scripts/install-test-deps.sh");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {why} (CI=true: client tests must not be skipped)");
            }
            eprintln!("\n!!! SKIPPED {test}: {why} !!!\n");
            None
        }
    }
}

/// The finished run of a program.
pub struct Run {
    pub status: ExitStatus,
    pub output: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
}

/// A program started with its stdout and stderr going to files (read at the end: a pipe
/// nobody reads would block a chatty program).
pub struct Running {
    pub child: Child,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Running {
    /// Spawns `cmd` with the environment every client program gets (NODE_PATH).
    pub fn spawn(mut cmd: Command, stdin: Stdio) -> Running {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = std::fs::File::create(dir.path().join("out.txt")).expect("output file");
        let err = out.try_clone().expect("output file");
        cmd.env("NODE_PATH", NODE_PATH)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(stdin)
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Running {
            child,
            dir,
            started: Instant::now(),
        }
    }

    /// What the program printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.txt")).unwrap_or_default()
    }

    /// Waits for the exit, killing the program after [`PROGRAM_TIMEOUT_MS`] (the run then
    /// reports failure with what it printed).
    pub fn wait(mut self) -> Run {
        let deadline = self.started + Duration::from_millis(PROGRAM_TIMEOUT_MS);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Run {
                    status,
                    output: self.output(),
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait");
                return Run {
                    status,
                    output: format!(
                        "{}\n(killed: still running after {PROGRAM_TIMEOUT_MS} ms)",
                        self.output()
                    ),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `cmd` to completion (stdin closed).
pub fn run(cmd: Command) -> Run {
    Running::spawn(cmd, Stdio::null()).wait()
}
