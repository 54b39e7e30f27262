//! The container image, tested with real containers: the image `deploy/offline-image.sh`
//! builds from this test build's `stategrid` binary, run the way the README says.
//!
//! - Without io_uring in the seccomp profile the server exits 12 and its log names the fix;
//!   with too little locked memory it exits 13.
//! - With `deploy/seccomp-io_uring.json` it turns healthy (the image's own health check),
//!   `docker exec <c> stategrid ...` reaches it with no flags, a client on this machine
//!   reaches it through a port published on 127.0.0.1, and `docker stop` (SIGTERM) ends it
//!   with exit code 0 and "stopped cleanly".
//! - The offline image declares what the Dockerfile declares (user, ports, volume, entry
//!   point, health check), and the compose files are valid; the bridge-network one starts
//!   three healthy hosts.
//!
//! Needs a Docker daemon. Without one the tests print why and pass, except under `CI=true`,
//! where they fail: CI must run them. Every container, network and compose project a test
//! creates has a unique name and is removed by a guard when the test ends, also on failure.
//! The image (`stategrid:test`) is kept: the build script skips it next time when nothing
//! that goes into it changed. `SG_TEST_IMAGE=<image>` (and `SG_TEST_LOADGEN_IMAGE`) run the
//! same tests on another image instead, such as one made with `docker build .`.
//!
//! Traffic goes only to the test's own containers and to 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod common;

/// The tag the offline script builds for the tests (apart from a user's `stategrid:local`).
const OFFLINE_TAG: &str = "stategrid:test";

/// Containers of this file run one at a time. io_uring charges the memory it pins to the
/// user (root, for every container here) against RLIMIT_MEMLOCK, and where the daemon may not
/// raise that limit each server plans its rings to use all of it: two at once made the second
/// fail with ENOMEM. A real deployment runs one host per machine.
/// Containers listen on their own (non-loopback) address, so each gets a cluster key: inline
/// here for brevity (docs/security.md prefers a mounted key file, as compose.yml does).
const CLUSTER_KEY_ENV: &str = "STATEGRID_CLUSTER_KEY=container-tests-cluster-key-0123456789";

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The image under test: `SG_TEST_IMAGE` if set (for example one made with `docker build .`
/// on a machine with a registry; used as it is), else [`OFFLINE_TAG`], built from this test
/// build's binary.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| std::env::var("SG_TEST_IMAGE").unwrap_or_else(|_| OFFLINE_TAG.into()))
}
/// How long a container may take to turn healthy, or to exit after a failed preflight. Generous:
/// the container tests run in parallel on a 2-core CI machine, up to 3 hosts each, and a bridge
/// store's hosts turned healthy after more than 30 s there once (16 s when run alone).
const START_TIMEOUT_S: u64 = 90;
/// `docker stop` grace period; the server drains well within it.
const STOP_TIMEOUT_S: u64 = 20;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// Running docker

/// Runs a command and returns its output; panics if it cannot be started at all.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args))
}

/// `docker args...`, which must succeed; returns its stdout, trimmed.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A container's stdout and stderr together (stategrid logs to stderr).
fn logs(name: &str) -> String {
    let out = docker(&["logs", name]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn inspect(name: &str, format: &str) -> String {
    docker_ok(&["inspect", "--format", format, name])
}

/// A name no other run or test uses: `sgtest-<pid>-<n>-<what>`.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "sgtest-{}-{}-{what}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes what a test created when it ends, also when it fails: containers (with their
/// anonymous volumes), networks, compose projects, in reverse order of creation.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
    /// (compose command, file, project)
    projects: Vec<(Vec<String>, PathBuf, String)>,
}

impl Cleanup {
    fn container(&mut self, what: &str) -> String {
        let name = unique(what);
        self.containers.push(name.clone());
        name
    }

    fn network(&mut self) -> String {
        let name = unique("net");
        docker_ok(&["network", "create", "--label", "io.stategrid.test=1", &name]);
        self.networks.push(name.clone());
        name
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (cmd, file, project) in self.projects.iter().rev() {
            let _ = run(Command::new(&cmd[0])
                .args(&cmd[1..])
                .args(["-p", project, "-f"])
                .arg(file)
                .args(["down", "-v", "--remove-orphans", "--timeout", "5"])
                .current_dir(repo().join("deploy"))
                .env("SG_IMAGE", image()));
        }
        for c in self.containers.iter().rev() {
            let _ = docker(&["rm", "--force", "--volumes", c]);
        }
        for n in self.networks.iter().rev() {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// Polls `check` every 250 ms until it returns `Some`, or panics with `what` after `timeout`.
fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until container `name` has exited; returns its exit code.
fn wait_exit(name: &str) -> i64 {
    wait_for(
        &format!("{name} to exit\n{}", logs(name)),
        Duration::from_secs(START_TIMEOUT_S),
        || {
            let state = inspect(name, "{{.State.Status}} {{.State.ExitCode}}");
            match state.split_once(' ') {
                Some(("exited", code)) => Some(code.parse().expect("exit code")),
                _ => None,
            }
        },
    )
}

/// Waits until container `name`'s health check reports healthy; panics if it exits first.
fn wait_healthy(name: &str) {
    wait_for(
        &format!("{name} to turn healthy"),
        Duration::from_secs(START_TIMEOUT_S),
        || {
            let state = inspect(name, "{{.State.Status}} {{.State.Health.Status}}");
            assert!(
                !state.starts_with("exited"),
                "{name} exited before turning healthy ({state}):\n{}",
                logs(name)
            );
            (state == "running healthy").then_some(())
        },
    )
}

// ---------------------------------------------------------------------------------------
// The environment: Docker, the image, locked memory

struct Env {
    /// The server's major version: Docker's default seccomp profile blocks io_uring from 25.
    docker_major: u32,
    /// `--ulimit memlock=...` for containers that should start.
    memlock: String,
}

/// Docker, the image and the memlock setting, checked once per test binary. `None`: no
/// Docker here, and not CI, so the tests skip (they said why).
fn env() -> Option<&'static Env> {
    static ENV: OnceLock<Option<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let version = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdin(Stdio::null())
            .output();
        let why = match &version {
            Err(e) => format!("cannot run docker: {e}"),
            Ok(out) if !out.status.success() => format!(
                "the Docker daemon does not answer: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(_) => String::new(),
        };
        if !why.is_empty() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "container tests cannot run under CI: {why}"
            );
            eprintln!("SKIPPED container tests: {why}");
            return None;
        }
        let version = String::from_utf8_lossy(&version.unwrap().stdout).to_string();
        let docker_major = version.trim().split('.').next().unwrap().parse().unwrap();
        if image() == OFFLINE_TAG {
            build_image();
        } else {
            docker_ok(&["image", "inspect", "--format", "{{.Id}}", image()]);
            eprintln!("image under test: {} (SG_TEST_IMAGE)", image());
        }
        Some(Env {
            docker_major,
            memlock: memlock_setting(),
        })
    })
    .as_ref()
}

/// Builds `stategrid:test` from this test build's binary with the offline script (which skips
/// the build when nothing that goes into it changed), and checks the image holds this binary.
fn build_image() {
    let started = Instant::now();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_stategrid"));
    let bin_dir = bin.parent().unwrap();
    let mut cmd = Command::new(repo().join("deploy/offline-image.sh"));
    cmd.args(["--no-build", "--tag", OFFLINE_TAG, "--bin-dir"])
        .arg(bin_dir);
    // The load generator's image only when its binary was built too (cargo test --workspace).
    if !bin_dir.join("loadgen").exists() {
        cmd.arg("--no-loadgen");
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "deploy/offline-image.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let sha = run(Command::new("sha256sum").arg(&bin));
    let sha = String::from_utf8_lossy(&sha.stdout);
    let sha = sha.split_whitespace().next().expect("sha256sum output");
    assert_eq!(
        inspect(
            OFFLINE_TAG,
            "{{ index .Config.Labels \"io.stategrid.binary.sha256\" }}"
        ),
        sha,
        "{OFFLINE_TAG} does not hold this build's stategrid binary"
    );
    eprintln!(
        "image {OFFLINE_TAG}: {} ({:.1} s)",
        String::from_utf8_lossy(&out.stdout).trim(),
        started.elapsed().as_secs_f64()
    );
}

/// `memlock=-1` (unlimited), as the README says, where the daemon may raise the limit; where
/// it may not (a sandbox without CAP_SYS_RESOURCE: "error setting rlimit type 8"), this
/// process's hard limit, which is what the daemon has too.
fn memlock_setting() -> String {
    let probe = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--ulimit",
        "memlock=-1",
        image(),
        "params",
    ]);
    if probe.status.success() {
        return "memlock=-1".into();
    }
    let err = String::from_utf8_lossy(&probe.stderr);
    assert!(
        err.contains("rlimit"),
        "docker run {} params failed:\n{err}",
        image()
    );
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) }, 0);
    let why = err
        .lines()
        .find(|l| l.contains("rlimit"))
        .unwrap_or("")
        .trim();
    eprintln!(
        "note: this Docker daemon may not raise RLIMIT_MEMLOCK ({why}); using its limit, {} bytes",
        rl.rlim_max
    );
    format!("memlock={}", rl.rlim_max)
}

/// `deploy/seccomp-io_uring.json` without the io_uring calls: Docker's default profile as it
/// is from Docker 25 on, whatever this daemon's default is.
fn blocking_profile(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/seccomp-io_uring.json")).unwrap();
    let mut profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut removed = 0;
    for rule in profile["syscalls"].as_array_mut().unwrap() {
        let names = rule["names"].as_array_mut().unwrap();
        let before = names.len();
        names.retain(|n| !n.as_str().unwrap().starts_with("io_uring_"));
        removed += before - names.len();
    }
    assert_eq!(
        removed, 3,
        "the profile should allow exactly the three io_uring calls"
    );
    let path = dir.join("seccomp-default-docker25.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    path
}

const PROFILE: &str = "seccomp=deploy/seccomp-io_uring.json";

// ---------------------------------------------------------------------------------------
// The tests

#[test]
fn without_io_uring_the_server_exits_with_the_preflight_fix() {
    let _serial = serial();
    let Some(env) = env() else { return };
    let started = Instant::now();
    let mut cleanup = Cleanup::default();
    let tmp = tempfile::tempdir().unwrap();
    let blocking = format!("seccomp={}", blocking_profile(tmp.path()).display());

    // io_uring blocked by seccomp (Docker's default since 25): exit 12, the fix in the log.
    let blocked = cleanup.container("blocked");
    docker_ok(&[
        "run",
        "--detach",
        "--name",
        &blocked,
        "--label",
        "io.stategrid.test=1",
        "--env",
        CLUSTER_KEY_ENV,
        "--network",
        "none",
        "--security-opt",
        &blocking,
        "--ulimit",
        &env.memlock,
        image(),
    ]);
    assert_eq!(wait_exit(&blocked), 12, "{}", logs(&blocked));
    let log = logs(&blocked);
    for needle in [
        "io_uring system calls are blocked",
        "--security-opt seccomp=deploy/seccomp-io_uring.json",
        "--ulimit memlock=-1",
        "README, 'Containers'",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }

    // Too little locked memory, io_uring allowed: exit 13, the fix in the log.
    let memlock = cleanup.container("memlock");
    docker_ok(&[
        "run",
        "--detach",
        "--name",
        &memlock,
        "--label",
        "io.stategrid.test=1",
        "--env",
        CLUSTER_KEY_ENV,
        "--network",
        "none",
        "--security-opt",
        PROFILE,
        "--ulimit",
        "memlock=65536",
        image(),
    ]);
    assert_eq!(wait_exit(&memlock), 13, "{}", logs(&memlock));
    assert!(
        logs(&memlock).contains("RLIMIT_MEMLOCK"),
        "{}",
        logs(&memlock)
    );

    // No --security-opt at all: this daemon's own default profile.
    let default = cleanup.container("default");
    docker_ok(&[
        "run",
        "--detach",
        "--name",
        &default,
        "--label",
        "io.stategrid.test=1",
        "--env",
        CLUSTER_KEY_ENV,
        "--network",
        "none",
        "--ulimit",
        &env.memlock,
        image(),
    ]);
    let outcome = wait_for(
        "the server to serve or exit under the daemon's default profile",
        Duration::from_secs(START_TIMEOUT_S),
        || {
            let state = inspect(&default, "{{.State.Status}} {{.State.ExitCode}}");
            if let Some(code) = state.strip_prefix("exited ") {
                return Some(Err(code.to_string()));
            }
            logs(&default).contains("serving on").then_some(Ok(()))
        },
    );
    match &outcome {
        Err(code) => {
            assert_eq!(code, "12", "{}", logs(&default));
            assert!(logs(&default).contains("seccomp-io_uring.json"));
        }
        // Docker 20.10-24's default profile allowed io_uring; 25 and later block it.
        Ok(()) => assert!(
            env.docker_major < 25,
            "Docker {} serves io_uring under its default profile?",
            env.docker_major
        ),
    }
    eprintln!(
        "preflight in containers: blocked -> 12, low memlock -> 13, Docker {} default profile -> {} ({:.1} s)",
        env.docker_major,
        match outcome {
            Ok(()) => "serves (io_uring allowed before Docker 25)".to_string(),
            Err(code) => code,
        },
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn with_the_profile_it_serves_checks_health_and_stops_cleanly() {
    let _serial = serial();
    let Some(env) = env() else { return };
    let started = Instant::now();
    let mut cleanup = Cleanup::default();
    let net = cleanup.network();
    let c = cleanup.container("serve");
    docker_ok(&[
        "run",
        "--detach",
        "--name",
        &c,
        "--label",
        "io.stategrid.test=1",
        "--env",
        CLUSTER_KEY_ENV,
        "--network",
        &net,
        "--security-opt",
        PROFILE,
        "--ulimit",
        &env.memlock,
        // The image's health check, checked every second instead of every 10.
        "--health-interval",
        "1s",
        "--publish",
        "127.0.0.1::2721",
        image(),
    ]);
    wait_healthy(&c);
    let healthy_s = started.elapsed().as_secs_f64();

    // PID 1 is stategrid itself (exec form), running as the image's non-root user.
    let proc1 = docker_ok(&[
        "exec",
        &c,
        "sh",
        "-c",
        "read comm < /proc/1/comm; while read k v rest; do case $k in Uid:) echo \"$comm $v\";; esac; done < /proc/1/status",
    ]);
    assert_eq!(proc1, "stategrid 10001");

    // The control program inside the container reaches the local host with no flags.
    let put = docker_ok(&[
        "exec",
        &c,
        "stategrid",
        "put",
        "sessions",
        "user-42",
        "in-container",
    ]);
    assert!(put.contains("version"), "{put}");
    assert_eq!(
        docker_ok(&["exec", &c, "stategrid", "get", "sessions", "user-42"]),
        "in-container"
    );
    let show = docker_ok(&["exec", &c, "stategrid", "show"]);
    assert!(
        show.contains("127.0.0.1:2721") && show.contains("0.0.0.0"),
        "{show}"
    );

    // A client on this machine, through the port published on 127.0.0.1.
    let published = docker_ok(&["port", &c, "2721/tcp"]);
    let addr = published
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no 127.0.0.1 port in {published:?}"));
    let cli = |args: &[&str]| {
        let out = run(Command::new(env!("CARGO_BIN_EXE_stategrid"))
            .args(["--host", addr])
            .args(args));
        assert!(out.status.success(), "stategrid {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["get", "sessions", "user-42"]), "in-container");
    cli(&["put", "sessions", "user-43", "from-host"]);
    assert_eq!(
        docker_ok(&["exec", &c, "stategrid", "get", "sessions", "user-43"]),
        "from-host"
    );

    // The log file in the volume is written by the non-root user.
    let file = docker_ok(&[
        "exec",
        &c,
        "sh",
        "-c",
        "while IFS= read -r l; do echo \"$l\"; done < /var/log/stategrid/stategrid.log",
    ]);
    assert!(file.contains("serving on 0.0.0.0:2721"), "{file}");

    // SIGTERM: drains, says so, exits 0.
    let stop = Instant::now();
    docker_ok(&["stop", "--time", &STOP_TIMEOUT_S.to_string(), &c]);
    let stop_s = stop.elapsed().as_secs_f64();
    assert_eq!(inspect(&c, "{{.State.ExitCode}}"), "0", "{}", logs(&c));
    assert!(logs(&c).contains("stopped cleanly"), "{}", logs(&c));
    eprintln!(
        "container: healthy after {healthy_s:.1} s, docker stop took {stop_s:.1} s, whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_params_file_and_environment_configure_the_container() {
    let _serial = serial();
    let Some(env) = env() else { return };
    let mut cleanup = Cleanup::default();
    let tmp = tempfile::tempdir().unwrap();
    let params = tmp.path().join("params.txt");
    std::fs::write(&params, "lock_timeout 33\nmax_memory 64MiB\n").unwrap();
    let mount = format!("{}:/etc/stategrid/params.txt:ro", params.display());
    let c = cleanup.container("params");
    docker_ok(&[
        "run",
        "--detach",
        "--name",
        &c,
        "--label",
        "io.stategrid.test=1",
        "--env",
        CLUSTER_KEY_ENV,
        "--network",
        "none",
        "--security-opt",
        PROFILE,
        "--ulimit",
        &env.memlock,
        "--health-interval",
        "1s",
        "--volume",
        &mount,
        "--env",
        "STATEGRID_MAX_MEMORY=96MiB",
        image(),
    ]);
    wait_healthy(&c);
    let show = docker_ok(&["exec", &c, "stategrid", "show"]);
    let value = |name: &str| {
        show.lines()
            .find_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(name)).then(|| w.next().unwrap_or("").to_string())
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{show}"))
    };
    assert_eq!(value("lock_timeout"), "33", "from the mounted params file");
    assert_eq!(
        value("max_memory"),
        (96u64 << 20).to_string(),
        "the environment beats the file"
    );
    assert_eq!(value("net_interface"), "0.0.0.0", "the image's default");
}

#[test]
fn the_offline_image_declares_what_the_dockerfile_declares() {
    if env().is_none() {
        return;
    }
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let stages = dockerfile_stages(&dockerfile);
    let loadgen_image = match std::env::var("SG_TEST_LOADGEN_IMAGE") {
        Ok(image) => Some(image),
        Err(_) if image() == OFFLINE_TAG => Some("stategrid-loadgen:test".to_string()),
        Err(_) => None,
    };
    let mut pairs = vec![("runtime", image().to_string())];
    if let Some(loadgen) = loadgen_image {
        // Built only when the loadgen binary was (see build_image).
        if docker(&["image", "inspect", &loadgen]).status.success() {
            pairs.push(("loadgen", loadgen));
        }
    }
    for (stage, image) in pairs {
        let declared = &stages[stage];
        let config: serde_json::Value =
            serde_json::from_str(&inspect(&image, "{{json .Config}}")).unwrap();
        let actual = image_settings(&config);
        assert_eq!(
            &actual, declared,
            "deploy/offline-image.sh's {image} differs from the Dockerfile's '{stage}' stage"
        );
    }
}

#[test]
fn the_compose_files_are_valid_and_the_bridge_store_starts_healthy() {
    let _serial = serial();
    let Some(env) = env() else { return };
    let Some(compose) = compose_command() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no docker compose / docker-compose under CI"
        );
        eprintln!(
            "SKIPPED compose test: neither `docker compose` nor `docker-compose` is installed"
        );
        return;
    };
    let started = Instant::now();
    let memlock = env.memlock.trim_start_matches("memlock=");
    let deploy = repo().join("deploy");
    // The bridge store listens on container addresses: it needs a cluster key (a file, as
    // docs/security.md shows).
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("cluster.key");
    std::fs::write(&key_file, "Y29tcG9zZS10ZXN0LWNsdXN0ZXIta2V5LTAxMjM0NQ==\n").unwrap();
    let compose_cmd = |file: &str, project: &str, args: &[&str]| {
        run(Command::new(&compose[0])
            .args(&compose[1..])
            .args(["-p", project, "-f", file])
            .args(args)
            .current_dir(&deploy)
            .env("SG_IMAGE", image())
            .env("SG_MEMLOCK", memlock)
            .env("SG_CLUSTER_KEY_FILE", &key_file))
    };
    for file in ["compose.yml", "compose.host-network.yml"] {
        let out = compose_cmd(file, "sgtest-config", &["config", "-q"]);
        assert!(out.status.success(), "{file} is invalid: {out:?}");
    }

    let project = unique("compose");
    let mut cleanup = Cleanup::default();
    cleanup
        .projects
        .push((compose.clone(), "compose.yml".into(), project.clone()));
    let up = compose_cmd("compose.yml", &project, &["up", "-d"]);
    assert!(up.status.success(), "compose up: {up:?}");
    let ids = compose_cmd("compose.yml", &project, &["ps", "-q"]);
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(ids.len(), 3, "three hosts, loadgen only on demand");
    for id in &ids {
        wait_healthy(id);
        // Each host read the mounted example params file (max_memory 256MiB).
        let show = docker_ok(&["exec", id, "stategrid", "show"]);
        assert!(show.contains(&(256u64 << 20).to_string()), "{show}");
    }
    eprintln!(
        "compose: 3 hosts healthy in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `docker compose` (v2) if there, else `docker-compose` (v1), else none.
fn compose_command() -> Option<Vec<String>> {
    let works = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [vec!["docker", "compose"], vec!["docker-compose"]]
        .into_iter()
        .find(|c| works(c))
        .map(|c| c.into_iter().map(str::to_string).collect())
}

// ---------------------------------------------------------------------------------------
// The Dockerfile's settings, and an image's

/// The settings both images must agree on, as text, by name.
type Settings = BTreeMap<&'static str, String>;

/// The image settings each named stage (`FROM ... AS name`) of a Dockerfile declares.
fn dockerfile_stages(text: &str) -> BTreeMap<String, Settings> {
    // Join continuation lines; drop comments and blank lines.
    let mut lines = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(t);
                lines.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut stages = BTreeMap::new();
    let mut current: Option<(String, Settings)> = None;
    for line in lines {
        let (instr, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let rest = rest.trim();
        let instr = instr.to_ascii_uppercase();
        if instr == "FROM" {
            if let Some((name, s)) = current.take() {
                stages.insert(name, s);
            }
            let name = rest.rsplit_once(" AS ").map(|(_, n)| n.trim().to_string());
            current = Some((name.unwrap_or_default(), Settings::new()));
            continue;
        }
        let Some((_, s)) = current.as_mut() else {
            continue;
        };
        match instr.as_str() {
            "USER" => {
                s.insert("user", rest.to_string());
            }
            "WORKDIR" => {
                s.insert("workdir", rest.to_string());
            }
            "ENTRYPOINT" => {
                s.insert("entrypoint", json_list(rest));
            }
            "CMD" => {
                s.insert("cmd", json_list(rest));
            }
            "ENV" => {
                let env = s.entry("env").or_default();
                env.push_str(rest);
                env.push(';');
            }
            "EXPOSE" => {
                let mut ports: BTreeSet<String> = rest
                    .split_whitespace()
                    .map(|p| {
                        if p.contains('/') {
                            p.to_string()
                        } else {
                            format!("{p}/tcp")
                        }
                    })
                    .collect();
                if let Some(old) = s.get("expose") {
                    ports.extend(old.split(' ').map(str::to_string));
                }
                s.insert("expose", ports.into_iter().collect::<Vec<_>>().join(" "));
            }
            "VOLUME" => {
                s.insert("volume", json_list(rest));
            }
            "HEALTHCHECK" => {
                let (flags, cmd) = rest.split_once("CMD").expect("HEALTHCHECK ... CMD [...]");
                s.insert(
                    "healthcheck",
                    format!("{} CMD {}", flags.trim(), json_list(cmd.trim())),
                );
            }
            _ => {}
        }
    }
    if let Some((name, s)) = current {
        stages.insert(name, s);
    }
    stages
}

/// `["a", "b"]` (or a plain word) as `a b`.
fn json_list(text: &str) -> String {
    match serde_json::from_str::<Vec<String>>(text) {
        Ok(v) => v.join(" "),
        Err(_) => text.to_string(),
    }
}

/// The same settings read from `docker inspect`'s `.Config` of an image.
fn image_settings(config: &serde_json::Value) -> Settings {
    let list = |v: &serde_json::Value| {
        v.as_array().map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        })
    };
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>().join(" "))
    };
    let mut s = Settings::new();
    let mut put = |k: &'static str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            s.insert(k, v);
        }
    };
    put("user", config["User"].as_str().map(str::to_string));
    put("workdir", config["WorkingDir"].as_str().map(str::to_string));
    put("entrypoint", list(&config["Entrypoint"]));
    put("cmd", list(&config["Cmd"]));
    // PATH is the import's (Debian's images set the same one); the rest is ours.
    put(
        "env",
        config["Env"].as_array().map(|a| {
            a.iter()
                .map(|x| x.as_str().unwrap())
                .filter(|e| !e.starts_with("PATH="))
                .map(|e| format!("{e};"))
                .collect::<String>()
        }),
    );
    put("expose", keys(&config["ExposedPorts"]));
    put("volume", keys(&config["Volumes"]));
    let hc = &config["Healthcheck"];
    if hc.is_object() {
        let secs = |k: &str| hc[k].as_u64().unwrap_or(0) / 1_000_000_000;
        let test = list(&hc["Test"]).unwrap();
        put(
            "healthcheck",
            Some(format!(
                "--interval={}s --timeout={}s --start-period={}s --retries={} {}",
                secs("Interval"),
                secs("Timeout"),
                secs("StartPeriod"),
                hc["Retries"].as_u64().unwrap_or(0),
                test
            )),
        );
    }
    s
}

// ---------------------------------------------------------------------------------------
// A 3-host store in containers, under faults

/// One host container of the fault test: its name and its address on the test's network.
struct StoreHost {
    name: String,
}

impl StoreHost {
    /// The container's address on `net` (empty while it is disconnected or stopped).
    fn ip(&self, net: &str) -> String {
        inspect(
            &self.name,
            &format!(
                "{{{{with index .NetworkSettings.Networks \"{net}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}"
            ),
        )
    }
    fn running(&self) -> bool {
        inspect(&self.name, "{{.State.Running}}") == "true"
    }
}

/// Starts a store host on `net` that finds the others by their container names (Docker's DNS),
/// restarted by Docker when it exits on its own (a crash; a host the store declared failed
/// rejoins in-process as a new member and does not exit).
fn start_store_host(env: &Env, net: &str, name: &str, others: &[String]) -> StoreHost {
    let hosts: Vec<String> = others.iter().map(|o| format!("{o}:2720")).collect();
    docker_ok(&[
        "run",
        "--detach",
        "--name",
        name,
        "--label",
        "io.stategrid.test=1",
        "--env",
        CLUSTER_KEY_ENV,
        "--network",
        net,
        "--restart",
        "on-failure",
        "--security-opt",
        PROFILE,
        "--ulimit",
        &env.memlock,
        "-e",
        "STATEGRID_MAX_REPLICAS=1",
        "-e",
        "STATEGRID_USE_MULTICAST=0",
        "-e",
        &format!("STATEGRID_HOSTS={}", hosts.join(",")),
        // Three servers share this machine's locked-memory budget (see `serial`).
        "-e",
        "STATEGRID_SHARDS=1",
        "-e",
        "STATEGRID_IO_MEMORY_BYTES=128KiB",
        image(),
    ]);
    StoreHost { name: name.into() }
}

#[test]
fn a_three_host_store_in_containers_survives_kill_partition_and_rolling_restart() {
    use common::store::*;

    let _serial = serial();
    let Some(env) = env() else { return };
    let started = Instant::now();
    let mut cleanup = Cleanup::default();
    let net = cleanup.network();
    let names: Vec<String> = (1..=3)
        .map(|i| cleanup.container(&format!("host{i}")))
        .collect();
    let hosts: Vec<StoreHost> = names
        .iter()
        .map(|me| {
            let others: Vec<String> = names.iter().filter(|o| *o != me).cloned().collect();
            start_store_host(env, &net, me, &others)
        })
        .collect();
    let all_logs = || {
        names
            .iter()
            .map(|n| {
                let l = logs(n);
                let tail: Vec<&str> = l.lines().rev().take(40).collect();
                format!(
                    "--- {n} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let svr = |h: &StoreHost| format!("{}:2721", h.ip(&net));
    let want = |hs: &[&StoreHost]| -> Vec<String> { hs.iter().map(|h| svr(h)).collect() };
    let c = client(&svr(&hosts[0]), 10_000);
    let m = wait_settled(&c, &want(&[&hosts[0], &hosts[1], &hosts[2]]), 1, all_logs);
    let formed_s = started.elapsed().as_secs_f64();

    // Load with every acknowledgement recorded, through the first host.
    let ns = "sessions";
    let all = keys(3_000, "k");
    let load = Load::start(&svr(&hosts[0]), ns, &all, write_all(&c, ns, &all), 2);
    std::thread::sleep(Duration::from_millis(500));

    // 1. docker kill (SIGKILL) of the second host: its keys are served again by the others.
    let victim = svr(&hosts[1]);
    let probes = keys_on(&m, ns, &all, &victim, 32);
    let quick = client(&svr(&hosts[0]), 200);
    let qn = quick.namespace_unregistered(ns);
    let killed = Instant::now();
    docker_ok(&["kill", &hosts[1].name]);
    let mut waiting = probes.clone();
    while !waiting.is_empty() {
        waiting.retain(|k| qn.read(k).is_err());
        assert!(
            killed.elapsed() < Duration::from_millis(SETTLE_TIMEOUT_MS),
            "keys of the killed host unreadable\n{}",
            all_logs()
        );
    }
    let kill_served_ms = killed.elapsed().as_millis();
    check_all(&c, ns, &load.acked.lock().unwrap().clone());
    // It comes back as a new member (docker kill is a manual stop: no automatic restart).
    if !hosts[1].running() {
        docker_ok(&["start", &hosts[1].name]);
    }
    let m = wait_settled(&c, &want(&[&hosts[0], &hosts[1], &hosts[2]]), 1, all_logs);

    // 2. A network cut isolates the third host: it stops acknowledging writes once its lease
    //    runs out; the two others keep serving (its partitions fail over to them).
    let minority = &hosts[2];
    let minority_key = keys_on(&m, ns, &all, &svr(minority), 1)[0].clone();
    let cut = Instant::now();
    docker_ok(&["network", "disconnect", &net, &minority.name]);
    let majority: Vec<&StoreHost> = vec![&hosts[0], &hosts[1]];
    let n = c.namespace(ns).unwrap();
    let v = n
        .put(
            &minority_key,
            value_of(&minority_key, 1 << 40),
            stategrid_client::WriteOptions::new(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "the majority does not serve {minority_key}: {e}\nmap: {:?}\n{}",
                map(&c).map(|m| (m.epoch, m.hosts)),
                all_logs()
            )
        });
    // Step 1 << 40 is no writer's (writer i counts from ((i + 1) << 40) + 1).
    load.acked
        .lock()
        .unwrap()
        .insert(minority_key.clone(), (1 << 40, v));
    let majority_serves_ms = cut.elapsed().as_millis();
    // Inside the isolated host, a write of a key it was primary of must be refused.
    let refused_after = wait_for(
        "the isolated host to stop acknowledging writes",
        Duration::from_secs(30),
        || {
            let out = docker(&[
                "exec",
                &minority.name,
                "stategrid",
                "put",
                ns,
                &minority_key,
                "from-the-minority",
            ]);
            (!out.status.success()).then(|| cut.elapsed())
        },
    );
    // From then on it keeps refusing (sampled), while the majority serves that key.
    for _ in 0..3 {
        let out = docker(&[
            "exec",
            &minority.name,
            "stategrid",
            "put",
            ns,
            &minority_key,
            "from-the-minority",
        ]);
        assert!(
            !out.status.success(),
            "the isolated host acknowledged a write: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // 3. Reconnected, the isolated host learns it was declared failed and rejoins in-process
    //    as a new member: the store heals to three hosts with replicas.
    docker_ok(&["network", "connect", &net, &minority.name]);
    let healed = Instant::now();
    wait_for(
        "the isolated host to have an address on the network again",
        Duration::from_millis(SETTLE_TIMEOUT_MS),
        || (!minority.ip(&net).is_empty()).then_some(()),
    );
    wait_settled(
        &c,
        &want(&[majority[0], majority[1], minority]),
        1,
        all_logs,
    );
    let heal_ms = healed.elapsed().as_millis();
    // It rejoined in the same process (rejoin_in_process, on by default): Docker did not
    // have to restart it, and it says so in its log.
    assert_eq!(
        inspect(&minority.name, "{{.RestartCount}}"),
        "0",
        "the isolated host exited instead of rejoining in-process\n{}",
        all_logs()
    );
    assert!(
        logs(&minority.name).contains("rejoining in-process as a new, empty member"),
        "the isolated host does not say it rejoined in-process\n{}",
        all_logs()
    );

    // 4. Rolling restart of all three (SIGTERM, then start) under load, one at a time.
    let mut restart_ms = Vec::new();
    for h in &hosts {
        let t = Instant::now();
        let before = map(&c).expect("a map");
        let old_id = before
            .hosts
            .iter()
            .find(|x| x.svr_addr == svr(h))
            .map(|x| x.id);
        docker_ok(&["restart", "--time", &STOP_TIMEOUT_S.to_string(), &h.name]);
        // The restarted host is a new member (a new id at the same address); only once it
        // is in and every partition has its replica again may the next host go.
        wait_for(
            "the restarted host to rejoin as a new member",
            Duration::from_millis(SETTLE_TIMEOUT_MS),
            || {
                map(&c).and_then(|m| {
                    m.hosts
                        .iter()
                        .any(|x| x.svr_addr == svr(h) && Some(x.id) != old_id && x.active)
                        .then_some(())
                })
            },
        );
        wait_settled(&c, &want(&[&hosts[0], &hosts[1], &hosts[2]]), 1, all_logs);
        restart_ms.push(t.elapsed().as_millis());
    }

    let (acked, errors) = load.stop();
    assert!(
        errors.is_empty(),
        "writes failed beyond retries: {:?}\n{}",
        &errors[..errors.len().min(5)],
        all_logs()
    );
    check_all(&c, ns, &acked);
    eprintln!(
        "containers: store of 3 formed in {formed_s:.1} s; docker kill: keys served again after {kill_served_ms} ms; \
         network cut: the majority served the cut-off host's keys {majority_serves_ms} ms after the cut, the cut-off host refused writes (checked at {} ms); \
         reconnect: healed to 3 hosts in {heal_ms} ms; rolling restart: {restart_ms:?} ms per host; \
         {} acknowledged writes, none lost, no client error beyond retries",
        refused_after.as_millis(),
        acked.len()
    );
}
