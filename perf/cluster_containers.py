"""perf/cluster-bench, section `containers` (issue 5): the store in containers on a bridge network.

Issue 5: "`perf/cluster-bench` runs loadgen against 1, 2 and 3 host containers with
`max_replicas` 0 and 1 and records throughput, p99 and server CPU-seconds per million operations
in `perf/RESULTS.md`: the cost of distribution per request, which is what stays meaningful on a
2-core machine."

What it does
  0. Builds the image `stategrid:bench` (and `stategrid-loadgen:bench`) from the release binaries
     cluster-bench snapshotted into its temporary directory: `deploy/offline-image.sh --no-build
     --bin-dir <that dir> --tag stategrid:bench` (a no-op when the image is up to date). Works out
     the `--ulimit memlock` setting as tests/container.rs does (`memlock=-1`, or this process's
     hard limit where the daemon may not raise the limit). Then waits (polling every 30 s, up to
     --idle-wait-minutes) until no OTHER perf/cluster-bench process runs.
  1. For each repetition, for each configuration (1 host max_replicas 0; 2 hosts x max_replicas
     0/1; 3 hosts x max_replicas 0/1; the order rotated every repetition): a fresh bridge network
     (`docker network create`, label io.stategrid.bench=1), one container per host (named
     sgbench-<pid>-<n>-...; STATEGRID_HOSTS names the other containers by name with :2720,
     STATEGRID_USE_MULTICAST=0, STATEGRID_MAX_REPLICAS, STATEGRID_SHARDS=1,
     STATEGRID_IO_MEMORY_BYTES=128KiB, deploy/seccomp-io_uring.json, the memlock setting, no
     restart policy, `--cpuset-cpus 1`: every server on core 1, loadgen on core 0 alone). Waits
     until `stategrid --mgt <container ip>:2720 --json query` from this machine shows every host
     active, every partition with a primary (and, with max_replicas 1, a full replica), nothing
     pending, on every host; prefills 100K keys of 1 KiB through the first host (repeated after
     1 s if it meets NotPrimary right after settling); then for each cell (workload put / 90:10 x
     pipeline 1, 16; quick: 16 only) a warm-up run and a measured run of loadgen on this machine
     (taskset -c 0, native protocol, 1 thread, 64 connections spread round-robin over every host
     of the store via --targets, 1 KiB values, 100K keys), the servers' CPU time read before and
     after: utime+stime of each container's stategrid process (`docker inspect` .State.Pid, which
     is the server: the entry point execs it; /proc/PID/stat on this machine), summed over the
     store. Then the containers and the network are removed, and the next configuration starts.
     Idle stores therefore never run: nothing else competes for core 1, and at most 3 servers
     share the locked-memory budget (`docker pause` was not used: frozen hosts would find their
     leases expired and their peers silent when thawed).
  2. Reports per cell and configuration the median (min-max) of ops/s, p50/p99/max and server
     CPU-seconds per million operations (= CPU µs per op), and the ratios of the medians against
     1 host max_replicas 0: the cost of distribution per request. A run with any error is failed:
     listed, left out of the medians.

Every container and network it creates is removed in finally blocks (also on Ctrl-C/SIGTERM,
which cluster-bench turns into KeyboardInterrupt); leftovers of a harness that was SIGKILLed
(names sgbench-<dead pid>-...) are removed at the next start. Only the networks it made are
touched; loadgen's traffic goes to the containers' addresses on those networks, nothing else.
Python 3.11 standard library only.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "stategrid:bench"
LABEL = "io.stategrid.bench"
PROFILE = ROOT / "deploy/seccomp-io_uring.json"
SERVER_CPUSET = "1"
MGT_PORT, SVR_PORT = 2720, 2721
IO_MEMORY = "128KiB"
# (label, hosts, max_replicas); the first is the baseline of the ratios.
CONFIGS = [("1 host, r0", 1, 0), ("2 hosts, r0", 2, 0), ("2 hosts, r1", 2, 1),
           ("3 hosts, r0", 3, 0), ("3 hosts, r1", 3, 1)]
BASELINE = CONFIGS[0][0]
NAME_RE = re.compile(r"^sgbench-(\d+)-")


class Docker:
    """`docker ...` calls; every container and network made through it is remembered and removed
    by `remove_all` (containers first, then networks, newest first)."""

    def __init__(self, log):
        self.log = log
        self.seq = 0
        self.containers: list[str] = []
        self.networks: list[str] = []

    @staticmethod
    def run(*args: str, timeout_s: float = 60.0, check: bool = True) -> str:
        try:
            cp = subprocess.run(["docker", *args], stdin=subprocess.DEVNULL, capture_output=True,
                                timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... timed out after {timeout_s:.0f} s")
        if check and cp.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed ({cp.returncode}): "
                               f"{cp.stderr.decode(errors='replace').strip()}")
        return cp.stdout.decode(errors="replace").strip()

    def name(self, what: str) -> str:
        self.seq += 1
        return f"sgbench-{os.getpid()}-{self.seq}-{what}"

    def network(self) -> str:
        name = self.name("net")
        self.networks.append(name)
        self.run("network", "create", "--label", f"{LABEL}=1", name)
        return name

    def container(self, name: str, argv: list[str]) -> None:
        self.containers.append(name)
        self.run("run", "--detach", "--name", name, "--label", f"{LABEL}=1", *argv)

    def remove(self, containers: list[str], networks: list[str]) -> list[str]:
        problems = []
        for c in reversed(containers):
            try:
                self.run("rm", "--force", "--volumes", c, timeout_s=60)
            except RuntimeError as e:
                if "No such container" not in str(e):
                    problems.append(str(e))
            if c in self.containers:
                self.containers.remove(c)
        for n in reversed(networks):
            try:
                self.run("network", "rm", n, timeout_s=60)
            except RuntimeError as e:
                if "not found" not in str(e):
                    problems.append(str(e))
            if n in self.networks:
                self.networks.remove(n)
        return problems

    def remove_all(self) -> list[str]:
        return self.remove(list(self.containers), list(self.networks))

    def remove_stale(self) -> list[str]:
        """Containers and networks of an earlier run whose harness is gone (killed -9)."""
        gone = []
        cs = self.run("ps", "-a", "--filter", f"label={LABEL}=1", "--format", "{{.Names}}",
                      check=False).split()
        ns = self.run("network", "ls", "--filter", f"label={LABEL}=1", "--format", "{{.Name}}",
                      check=False).split()
        dead = lambda n: (m := NAME_RE.match(n)) and not Path(f"/proc/{m.group(1)}").exists()
        cs, ns = [c for c in cs if dead(c)], [n for n in ns if dead(n)]
        if cs or ns:
            self.log(f"    removing leftovers of an earlier run: {' '.join(cs + ns)}")
            self.remove(cs, ns)
            gone = cs + ns
        return gone


def memlock_setting(d: Docker) -> dict:
    """As tests/container.rs: `memlock=-1` where the daemon may raise the limit, else this
    process's hard limit (the daemon's too)."""
    cp = subprocess.run(["docker", "run", "--rm", "--network", "none", "--ulimit", "memlock=-1",
                         IMAGE, "params"], stdin=subprocess.DEVNULL, capture_output=True,
                        timeout=60)
    if cp.returncode == 0:
        return {"ulimit": "memlock=-1", "why": "the daemon may raise RLIMIT_MEMLOCK"}
    err = cp.stderr.decode(errors="replace")
    if "rlimit" not in err:
        raise RuntimeError(f"docker run {IMAGE} params failed: {err.strip()}")
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    why = next((l.strip() for l in err.splitlines() if "rlimit" in l), "")
    why = why[why.find("error setting rlimit"):] if "error setting rlimit" in why else why
    why = why.removesuffix(": unknown")
    return {"ulimit": f"memlock={hard}",
            "why": f"this Docker daemon may not raise RLIMIT_MEMLOCK ({why}); its hard limit, "
                   f"{hard} bytes, shared by the store's servers"}


def build_image(bin_dir: Path, log) -> dict:
    t0 = time.monotonic()
    cp = subprocess.run([str(ROOT / "deploy/offline-image.sh"), "--no-build", "--bin-dir",
                         str(bin_dir), "--tag", IMAGE], cwd=ROOT, stdin=subprocess.DEVNULL,
                        capture_output=True, timeout=600)
    out = (cp.stdout + cp.stderr).decode(errors="replace").strip()
    if cp.returncode != 0:
        raise RuntimeError(f"deploy/offline-image.sh failed ({cp.returncode}):\n{out}")
    info = Docker.run("image", "inspect", "--format",
                      '{{.Id}} {{index .Config.Labels "io.stategrid.binary.sha256"}}', IMAGE).split()
    log(f"    image {IMAGE} {info[0][7:19]} in {time.monotonic() - t0:.1f} s: {out.splitlines()[-1]}")
    return {"tag": IMAGE, "id": info[0], "binary_sha256": info[1] if len(info) > 1 else None,
            "build_s": round(time.monotonic() - t0, 1), "output_tail": out.splitlines()[-3:]}


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            break
    return pids


def other_benches() -> list[str]:
    """Processes running perf/cluster-bench other than this one and its parents."""
    mine, found = _ancestors(), []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in mine:
            continue
        try:
            argv = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "perf/cluster-bench" in argv:
            found.append(f"{p.name} {argv.strip()[:80]}")
    return found


def wait_other_benches(minutes: float, log) -> dict:
    t0 = time.monotonic()
    first = other_benches()
    if not first or minutes <= 0:
        return {"waited_s": 0.0, "others_at_start": first, "gave_up": bool(first)}
    log(f"==> another perf/cluster-bench is running ({first[0]}); waiting up to {minutes:g} min, "
        f"polling every 30 s")
    while time.monotonic() - t0 < minutes * 60:
        time.sleep(30)
        if not other_benches():
            log(f"    it ended; waited {time.monotonic() - t0:.0f} s")
            return {"waited_s": round(time.monotonic() - t0, 1), "others_at_start": first,
                    "gave_up": False}
    log("    still running; measuring anyway (noted in the results)")
    return {"waited_s": round(time.monotonic() - t0, 1), "others_at_start": first,
            "gave_up": True, "others_at_end": other_benches()}


# --- one store in containers -----------------------------------------------------------------

class ContainerStore:
    def __init__(self, cb, bins, d: Docker, label: str, n: int, max_replicas: int, memlock: str):
        self.cb, self.d, self.label, self.n, self.mr = cb, d, label, n, max_replicas
        self.cb_bins = bins
        self.containers: list[str] = []
        self.net = d.network()
        slug = label.replace(" ", "").replace(",", "-")
        names = [d.name(f"{slug}-h{i + 1}") for i in range(n)]
        self.names = names
        for me in names:
            others = [f"{o}:{MGT_PORT}" for o in names if o != me]
            env = {"STATEGRID_MAX_REPLICAS": max_replicas, "STATEGRID_USE_MULTICAST": 0,
                   "STATEGRID_SHARDS": 1, "STATEGRID_IO_MEMORY_BYTES": IO_MEMORY}
            if others:
                env["STATEGRID_HOSTS"] = ",".join(others)
            argv = ["--network", self.net, "--cpuset-cpus", SERVER_CPUSET,
                    "--security-opt", f"seccomp={PROFILE}", "--ulimit", memlock]
            for k, v in env.items():
                argv += ["-e", f"{k}={v}"]
            self.containers.append(me)
            d.container(me, argv + [IMAGE])
        self.ips = [self.inspect(c, "{{with index .NetworkSettings.Networks \"%s\"}}"
                                    "{{.IPAddress}}{{end}}" % self.net) for c in names]
        self.pids = [int(self.inspect(c, "{{.State.Pid}}")) for c in names]
        for c, pid in zip(names, self.pids):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                comm = None
            if comm != "stategrid":
                raise RuntimeError(f"{c}: .State.Pid {pid} is {comm!r} on this machine, not the "
                                   f"server (a PID namespace apart?): cannot read its CPU time")

    def inspect(self, c: str, fmt: str) -> str:
        return self.d.run("inspect", "--format", fmt, c)

    @property
    def targets(self) -> str:
        return ",".join(f"{ip}:{SVR_PORT}" for ip in self.ips)

    def mgt(self, i: int) -> str:
        return f"{self.ips[i]}:{MGT_PORT}"

    def running(self) -> list[bool]:
        return [self.inspect(c, "{{.State.Running}}") == "true" for c in self.names]

    def logs(self, lines: int = 12) -> str:
        out = []
        for c in self.names:
            cp = subprocess.run(["docker", "logs", "--tail", str(lines), c],
                                capture_output=True, timeout=30)
            out.append(f"--- {c}\n" + (cp.stdout + cp.stderr).decode(errors="replace").rstrip())
        return "\n".join(out)

    def cpu_s(self) -> float | None:
        vals = [self.cb.compare.read_cpu_s(p) for p in self.pids]
        return None if any(v is None for v in vals) else sum(vals)

    def settled_q(self, q: dict | None) -> bool:
        if not q or not q.get("member"):
            return False
        hosts = self.cb.live_hosts(q)
        if len(hosts) != self.n or any(h["state"] != "active" for h in hosts):
            return False
        replicas = min(self.mr, self.n - 1)
        P = self.cb.PARTITIONS
        return (sum(h["primaries"] for h in hosts) == P
                and sum(h["replicas"] for h in hosts) == P * replicas
                and sum(h["pending"] for h in hosts) == 0
                and all(h["primaries"] > 0 for h in hosts))

    def wait_settled(self, timeout_s: float) -> tuple[dict, float]:
        """Every host's own answer settled, all at the same epoch."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout_s:
            if not all(self.running()):
                raise RuntimeError(f"{self.label}: a container exited:\n{self.logs()}")
            qs = [self.cb.query(self.cb_bins, self.mgt(i), 3.0) for i in range(self.n)]
            last = qs[0]
            if all(self.settled_q(q) for q in qs) and len({q.get("epoch") for q in qs}) == 1:
                return qs[0], time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"{self.label}: not settled within {timeout_s:.0f} s; last query: "
                           f"{self.cb.brief(last)}\n{self.logs(8)}")


# --- the section -----------------------------------------------------------------------------

def run(args, cb, bins: dict, lg, out: dict) -> None:
    """Measures; fills `out` (config, setup, runs, events). Raises cb.SetupError if it cannot
    start (image, docker)."""
    log = cb.log
    reps = args.containers_reps or (1 if args.quick else 3)
    duration = args.containers_duration or (3.0 if args.quick else 5.0)
    pipelines = [16] if args.quick else list(args.pipelines)
    cells = [(w, p) for w in args.workloads for p in pipelines]
    labels = [c[0] for c in CONFIGS]
    out.update({"cells": cells, "configs": labels, "baseline": BASELINE, "runs": [],
                "setup": [], "events": [],
                "config": {"reps": reps, "duration_s": duration, "warmup_s": args.warmup,
                           "pipelines": pipelines, "workloads": list(args.workloads),
                           "server_cpuset": SERVER_CPUSET, "client_cpu": cb.CLIENT_CPU,
                           "connections": cb.CONNECTIONS, "keys": cb.KEYS,
                           "value_bytes": cb.VALUE_BYTES, "shards": 1, "io_memory": IO_MEMORY,
                           "seccomp": str(PROFILE.relative_to(ROOT)), "restart_policy": "none",
                           "idle_stores": "removed: one store exists at a time"}})
    d = Docker(log)
    try:
        out["docker_version"] = d.run("version", "--format", "{{.Server.Version}}")
    except RuntimeError as e:
        raise cb.SetupError(f"containers: cannot use docker: {e}")
    try:
        out["stale_removed"] = d.remove_stale()
        out["image"] = build_image(Path(bins["stategrid"]).parent, log)
        ml = memlock_setting(d)
        out["memlock"] = ml
        log(f"    --ulimit {ml['ulimit']} ({ml['why']})")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        raise cb.SetupError(f"containers: {e}")
    out["waited_for_other_bench"] = wait_other_benches(args.idle_wait_minutes, log)
    total = reps * len(labels) * len(cells)
    log(f"==> containers: {reps} rep(s) × {len(labels)} stores × {len(cells)} cells = {total} "
        f"runs of {duration:g} s; a fresh store per rep and configuration")
    n = 0
    try:
        for rep in range(1, reps + 1):
            k = (rep - 1) % len(labels)
            for label in labels[k:] + labels[:k]:
                _, hosts, mr = next(c for c in CONFIGS if c[0] == label)
                n = _measure_store(args, cb, d, bins, lg, out, rep, label, hosts, mr, cells,
                                   duration, n, total)
    finally:
        problems = d.remove_all()
        if problems:
            out["events"].append("cleanup: " + "; ".join(problems))
            log("    cleanup problems: " + "; ".join(problems))


def _measure_store(args, cb, d, bins, lg, out, rep, label, hosts, mr, cells, duration, n, total):
    log = cb.log
    setup = {"rep": rep, "config": label, "ok": False}
    out["setup"].append(setup)
    store = None
    t0 = time.monotonic()
    try:
        try:
            store = ContainerStore(cb, bins, d, label, hosts, mr, out["memlock"]["ulimit"])
            setup.update({"containers": store.names, "network": store.net, "ips": store.ips,
                          "pids": store.pids})
            q, waited = store.wait_settled(cb.SETTLE_TIMEOUT_S)
            pf = cb.loadgen_prefill(lg, f"{store.ips[0]}:{SVR_PORT}", cb.KEYS)
            if not pf["ok"]:
                raise RuntimeError(f"prefill failed: {pf['reason']}")
            time.sleep(0.3)
            q = cb.query(bins, store.mgt(0)) or q
            objs = sum(h.get("objects") or 0 for h in cb.live_hosts(q))
            want = cb.KEYS * (1 + min(mr, hosts - 1))
            setup.update({"ok": True, "start_to_settled_s": round(waited, 2),
                          "prefill_s": (pf["json"] or {}).get("prefill_s"),
                          "prefill_refused_first": pf["earlier_attempts"],
                          "objects_after_prefill": objs, "query": q})
            log(f"    rep {rep} {label}: {' '.join(store.ips)} settled {waited:.1f} s after the "
                f"containers started, {cb.KEYS:,} keys prefilled in "
                f"{(pf['json'] or {}).get('prefill_s', 0):.1f} s"
                f"{' (after ' + str(len(pf['earlier_attempts'])) + ' refused attempt(s))' if pf['earlier_attempts'] else ''}"
                f", {objs:,} objects held")
            if objs != want:
                out["events"].append(f"rep {rep} {label}: holds {objs} objects after the prefill, "
                                     f"expected {want}")
                log("    " + out["events"][-1])
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            setup["reason"] = str(e)
            out["events"].append(f"rep {rep} {label}: set-up failed: {e}")
            log(f"    rep {rep} {label}: SET-UP FAILED: {e}")
            for wl, pipe in cells:
                n += 1
                out["runs"].append({"rep": rep, "workload": wl, "pipeline": pipe,
                                    "config": label, "ok": False,
                                    "reason": f"store set-up failed: {str(e).splitlines()[0]}"})
            return n
        for wl, pipe in cells:
            n += 1
            run = _one_run(args, cb, lg, store, rep, wl, pipe, label, duration)
            out["runs"].append(run)
            tag = f"[c {n}/{total}] rep {rep} {wl:>5} p{pipe:<2} {label:<12}"
            if run["ok"]:
                log(f"{tag} {run['ops_per_sec']:>9,.0f} ops/s  p99 {run['p99_us']:>7,.0f} µs  "
                    f"max {run['max_us']:>7,.0f} µs  server {run['server_cpu_s_per_mops']:5.2f} "
                    f"CPU-s/1M ops  client {run['client_cpu_pct']:3.0f}%")
            else:
                log(f"{tag} FAILED: {run['reason']}; {run.get('ops_per_sec') or 0:,.0f} ops/s")
        setup["store_s"] = round(time.monotonic() - t0, 1)
        return n
    finally:
        if store is not None:
            setup["removed"] = not d.remove(store.containers, [store.net])
        elif d.networks:
            d.remove(list(d.containers), list(d.networks))


def _one_run(args, cb, lg, store, rep, wl, pipe, label, duration) -> dict:
    busy_before = cb.pause_for_builders(f"rep {rep} {wl} p{pipe} {label}")
    common = ["--keys", str(cb.KEYS), "--connections", str(cb.CONNECTIONS), "--pipeline",
              str(pipe), "--seed", str(rep), "--warmup", "0"] + cb.WORKLOADS[wl]
    targets = store.targets
    warm = lg.run("stategrid", targets, common + ["--duration", str(args.warmup)],
                  timeout_s=args.warmup + 30)
    cpu0 = store.cpu_s()
    m = lg.run("stategrid", targets, common + ["--duration", str(duration), "--deadline",
                                               str(duration + 20)], timeout_s=duration + 40)
    cpu1 = store.cpu_s()
    busy_after = cb.builders_running()
    j = m["json"] or {}
    ops = j.get("ops") or 0
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    run = {"rep": rep, "workload": wl, "pipeline": pipe, "config": label, "targets": targets,
           "ok": m["ok"] and cpu is not None and ops > 0,
           "reason": m["reason"] or (None if cpu is not None else "a server process was gone"),
           "exit": m["exit"], "wall_s": m["wall_s"], "ops": ops,
           "ops_per_sec": j.get("ops_per_sec"), "duration_s": j.get("duration_s"),
           **cb.lat_fields(j), "errors": j.get("errors"), "errors_by_kind": j.get("errors_by_kind"),
           "error_examples": j.get("error_examples"), "misses": j.get("misses"),
           "client_cpu_pct": j.get("client_cpu_pct"),
           "client_bottleneck": j.get("client_bottleneck"), "server_cpu_s": cpu,
           "server_cpu_s_per_mops": cpu / ops * 1e6 if cpu is not None and ops else None,
           "ops_by_kind": {kk: {"ops": v.get("ops"),
                                "p99_us": (v.get("latency_us") or {}).get("p99")}
                           for kk, v in (j.get("ops_by_kind") or {}).items()},
           "warmup_ok": warm["ok"], "warmup_reason": warm["reason"],
           "builders_running": sorted(set(busy_before + busy_after)),
           "other_benches_running": other_benches()}
    if m.get("stderr_tail") and not m["ok"]:
        run["stderr_tail"] = m["stderr_tail"]
    return run


# --- summary and markdown --------------------------------------------------------------------

METRICS = ("ops_per_sec", "p50_us", "p99_us", "max_us", "server_cpu_s_per_mops", "client_cpu_pct")


def summarize(out: dict, med_range) -> None:
    runs = out.get("runs", [])
    summary, ratios = {}, {}
    for wl, pipe in [tuple(c) for c in out.get("cells", [])]:
        for label in out["configs"]:
            rs = [r for r in runs if (r["workload"], r["pipeline"], r["config"]) == (wl, pipe, label)]
            ok = [r for r in rs if r["ok"]]
            summary[f"{wl}|{pipe}|{label}"] = {
                "runs": len(rs), "ok": len(ok), "errors": sum(r.get("errors") or 0 for r in rs),
                **{m: med_range([r[m] for r in ok if r.get(m) is not None]) for m in METRICS}}
        base = summary.get(f"{wl}|{pipe}|{out['baseline']}") or {}
        for label in out["configs"]:
            s = summary[f"{wl}|{pipe}|{label}"]
            ratios[f"{wl}|{pipe}|{label}"] = {
                m: (s[m]["median"] / base[m]["median"]
                    if s.get(m) and base.get(m) and base[m]["median"] else None)
                for m in ("ops_per_sec", "p99_us", "server_cpu_s_per_mops")}
    out["summary"], out["ratios"] = summary, ratios


def markdown(out: dict, fmt_range) -> list[str]:
    c = out["config"]
    L = ["", "### Containers: the cost of distribution per request (issue 5)", ""]
    ml = out.get("memlock") or {}
    img = out.get("image") or {}
    L.append(
        f"Each store runs as host containers of the image `{img.get('tag')}` (`{(img.get('id') or '')[7:19]}`, "
        f"built by `deploy/offline-image.sh --no-build` from the same release binaries as the "
        f"rest of this run; Docker {out.get('docker_version')}) on a bridge network of its own "
        f"made for the run; the hosts find each other through `STATEGRID_HOSTS` naming the other "
        f"containers (`name:2720`), `STATEGRID_USE_MULTICAST=0`, 1 shard, `io_memory_bytes` "
        f"{c['io_memory']}, `--security-opt seccomp={c['seccomp']}`, `--ulimit {ml.get('ulimit')}` "
        f"({ml.get('why')}). Every server container has `--cpuset-cpus {c['server_cpuset']}`: "
        f"the hosts of a store share core {c['server_cpuset']}, and loadgen runs on this machine "
        f"on core {c['client_cpu']} alone (`taskset -c {c['client_cpu']}`, native protocol, 1 "
        f"thread, {c['connections']} connections spread round-robin over every host of the store "
        f"via `--targets` at their bridge addresses; loadgen does not route, so with n hosts "
        f"about (n-1)/n of the requests reach a host that relays them to the partition's "
        f"primary). One store exists at a time: per repetition each configuration is started, "
        f"waited for until `stategrid query --json` on every host shows all hosts active, every "
        f"partition with a primary (and a full replica with max_replicas 1) and nothing pending, "
        f"prefilled with {c['keys']:,} keys of 1 KiB through its first host, measured for every "
        f"cell ({c['warmup_s']:g} s warm-up, then {c['duration_s']:g} s), and removed; "
        f"{c['reps']} rep(s), rep-major, the configurations' order rotated each repetition. "
        f"Idle stores are removed rather than `docker pause`d: nothing else runs on core 1, "
        f"and frozen hosts would wake to expired leases and silent peers. **Server CPU-s per 1M "
        f"ops** = utime+stime of every container's stategrid process (`docker inspect` "
        f".State.Pid, /proc/PID/stat on this machine) over the measured run ÷ ops × 10⁶ "
        f"(numerically, CPU µs per request, all hosts together). Medians with (min–max) over "
        f"the successful runs; a run with any error is failed and left out.")
    failed = [r for r in out.get("runs", []) if not r["ok"]]
    if failed:
        L.append("")
        L.append(f"**{len(failed)} failed run(s)**, left out of the medians:")
        for r in failed[:15]:
            L.append(f"- rep {r['rep']} {r['workload']} p{r['pipeline']} {r['config']}: "
                     f"{r['reason']}; {r.get('ops_per_sec') or 0:,.0f} ops/s")
        if len(failed) > 15:
            L.append(f"- … and {len(failed) - 15} more (all in the JSON)")
    for ev in out.get("events") or []:
        L.append(f"- event: {ev}")
    busy = [r for r in out.get("runs", []) if r.get("builders_running") or r.get("other_benches_running")]
    if busy:
        L.append(f"- **{len(busy)} of {len(out['runs'])} runs had a build process or another "
                 f"benchmark running at their start or end**: their numbers are disturbed.")
    setups = [s for s in out.get("setup", []) if s.get("ok")]
    if setups:
        st = [s["start_to_settled_s"] for s in setups]
        L.append(f"- Stores settled {statistics.median(st):.1f} s (median; {min(st):.1f}–"
                 f"{max(st):.1f}) after their containers started.")
    L.append("")
    L.append(f"| workload | pipe | configuration | ops/s | p50 µs | p99 µs | max µs | server CPU-s "
             f"/ 1M ops | ok | ops/s ÷ {BASELINE} | p99 ÷ | CPU/op ÷ |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    f = lambda v: "—" if v is None else f"{v:.2f}×"
    for wl, pipe in [tuple(x) for x in out.get("cells", [])]:
        for label in out["configs"]:
            s = out["summary"].get(f"{wl}|{pipe}|{label}")
            if not s:
                continue
            r = out["ratios"].get(f"{wl}|{pipe}|{label}") or {}
            L.append(f"| {wl} | {pipe} | {label} | {fmt_range(s['ops_per_sec'])} | "
                     f"{fmt_range(s['p50_us'])} | {fmt_range(s['p99_us'])} | "
                     f"{fmt_range(s['max_us'])} | {fmt_range(s['server_cpu_s_per_mops'], 2)} | "
                     f"{s['ok']}/{s['runs']} | {f(r.get('ops_per_sec'))} | {f(r.get('p99_us'))} | "
                     f"{f(r.get('server_cpu_s_per_mops'))} |")
    return L
