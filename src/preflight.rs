//! io_uring preflight: run before any executor starts, so that a machine or container that
//! cannot run stategrid gets one clear sentence and a fix, never a glommio panic.
//!
//! Checks, in order: kernel version (`DEFER_TASKRUN` needs 6.1), the
//! `kernel.io_uring_disabled` sysctl, creating a ring with the flags the shards use (a seccomp
//! profile that blocks io_uring answers EPERM here), and RLIMIT_MEMLOCK against what glommio
//! registers (glommio refuses to start below 512 KiB, and registers `io_memory_bytes` in each of
//! its three rings per shard). Each failure exits with its own code (see [`exit`]).

use std::io;

/// Process exit codes of `stategrid serve`.
pub mod exit {
    /// Clean shutdown.
    pub const OK: i32 = 0;
    /// A runtime failure after start-up (the log says what).
    pub const RUNTIME: i32 = 1;
    /// Bad parameters or command line.
    pub const USAGE: i32 = 2;
    /// Kernel too old for the io_uring features stategrid needs.
    pub const KERNEL_TOO_OLD: i32 = 10;
    /// `kernel.io_uring_disabled` forbids io_uring for this process.
    pub const IO_URING_DISABLED: i32 = 11;
    /// io_uring system calls are blocked (a seccomp profile: Docker's default blocks them).
    pub const IO_URING_BLOCKED: i32 = 12;
    /// RLIMIT_MEMLOCK is below what the shards must lock.
    pub const MEMLOCK: i32 = 13;
    /// The client port could not be bound (in use, or a bad `net_interface`).
    pub const BIND: i32 = 14;
}

/// The smallest RLIMIT_MEMLOCK glommio accepts (it checks this itself and fails otherwise).
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 * 1024;
/// glommio registers its io memory in each of its three rings.
const GLOMMIO_RINGS_PER_SHARD: u64 = 3;
/// Smallest io memory glommio will use (it rounds up to this).
const GLOMMIO_IO_MEMORY_MIN_BYTES: u64 = 64 * 1024;

const DOCKER_FIX: &str = "in Docker, run with --security-opt seccomp=deploy/seccomp-io_uring.json --ulimit memlock=-1 (see README, 'Containers')";

/// A failed check: what is wrong, how to fix it, and the exit code.
#[derive(Debug)]
pub struct PreflightError {
    pub exit_code: i32,
    pub message: String,
}

impl std::fmt::Display for PreflightError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What preflight decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// io memory to give each shard's glommio executor.
    pub io_memory_bytes: u64,
    /// Set when `io_memory_bytes` was lowered to fit RLIMIT_MEMLOCK; logged at start-up.
    pub io_memory_note: Option<String>,
    pub kernel: (u32, u32),
}

/// Runs every check for `shards` shards wanting `io_memory_bytes` each.
pub fn check(shards: u32, io_memory_bytes: u64) -> Result<Plan, PreflightError> {
    let kernel = kernel_version()?;
    if kernel < (6, 1) {
        return Err(PreflightError {
            exit_code: exit::KERNEL_TOO_OLD,
            message: format!(
                "Linux {}.{} is too old: stategrid needs io_uring with IORING_SETUP_DEFER_TASKRUN (Linux 6.1 or newer). Upgrade the kernel (or the container host's kernel).",
                kernel.0, kernel.1
            ),
        });
    }
    check_sysctl()?;
    check_ring()?;
    let (io_memory_bytes, io_memory_note) = check_memlock(shards, io_memory_bytes)?;
    Ok(Plan {
        io_memory_bytes,
        io_memory_note,
        kernel,
    })
}

fn kernel_version() -> Result<(u32, u32), PreflightError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    parse_kernel_version(&release).ok_or_else(|| PreflightError {
        exit_code: exit::KERNEL_TOO_OLD,
        message: format!(
            "cannot tell the kernel version from /proc/sys/kernel/osrelease ('{}'); stategrid needs Linux 6.1 or newer",
            release.trim()
        ),
    })
}

fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_sysctl() -> Result<(), PreflightError> {
    // Absent on kernels before 6.6: io_uring is then always allowed.
    let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") else {
        return Ok(());
    };
    match v.trim() {
        "2" => Err(PreflightError {
            exit_code: exit::IO_URING_DISABLED,
            message: "io_uring is disabled on this machine (sysctl kernel.io_uring_disabled = 2). Fix: sysctl -w kernel.io_uring_disabled=0 (and set it in /etc/sysctl.d/ to keep it).".into(),
        }),
        // 1: only processes with CAP_SYS_ADMIN or in kernel.io_uring_group may create rings;
        // the ring check below tells whether this one may.
        _ => Ok(()),
    }
}

/// Creates (and drops) a ring with the shards' flags: the only reliable test for seccomp.
fn check_ring() -> Result<(), PreflightError> {
    let err = match io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
    {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    Err(match err.raw_os_error() {
        Some(libc::EPERM) if disabled => PreflightError {
            exit_code: exit::IO_URING_DISABLED,
            message: "io_uring is restricted on this machine (sysctl kernel.io_uring_disabled = 1) and this process may not use it. Fix: run as a member of the group in kernel.io_uring_group, or sysctl -w kernel.io_uring_disabled=0.".into(),
        },
        Some(libc::EPERM) | Some(libc::ENOSYS) => PreflightError {
            exit_code: exit::IO_URING_BLOCKED,
            message: format!(
                "io_uring system calls are blocked ({err}): a seccomp profile forbids them (Docker's default profile does). Fix: {DOCKER_FIX}."
            ),
        },
        Some(libc::EINVAL) => PreflightError {
            exit_code: exit::KERNEL_TOO_OLD,
            message: format!(
                "this kernel refuses an io_uring with SINGLE_ISSUER + DEFER_TASKRUN ({err}); stategrid needs Linux 6.1 or newer."
            ),
        },
        Some(libc::ENOMEM) => PreflightError {
            exit_code: exit::MEMLOCK,
            message: format!(
                "cannot create an io_uring ({err}): locked-memory limit too low. Fix: raise RLIMIT_MEMLOCK (ulimit -l unlimited; {DOCKER_FIX})."
            ),
        },
        _ => PreflightError {
            exit_code: exit::IO_URING_BLOCKED,
            message: format!("cannot create an io_uring: {err}. Fix: {DOCKER_FIX}."),
        },
    })
}

/// Decides each shard's glommio io memory so it fits RLIMIT_MEMLOCK.
fn check_memlock(shards: u32, wanted_bytes: u64) -> Result<(u64, Option<String>), PreflightError> {
    let limit = memlock_limit_bytes().map_err(|e| PreflightError {
        exit_code: exit::MEMLOCK,
        message: format!("cannot read RLIMIT_MEMLOCK: {e}"),
    })?;
    plan_io_memory(limit, has_cap_ipc_lock(), shards, wanted_bytes)
}

/// The pure decision behind [`check_memlock`], testable with any limit.
pub fn plan_io_memory(
    limit_bytes: u64,
    cap_ipc_lock: bool,
    shards: u32,
    wanted_bytes: u64,
) -> Result<(u64, Option<String>), PreflightError> {
    // glommio checks the soft limit itself, even with CAP_IPC_LOCK.
    if limit_bytes < GLOMMIO_MEMLOCK_MIN_BYTES {
        return Err(PreflightError {
            exit_code: exit::MEMLOCK,
            message: format!(
                "locked-memory limit (RLIMIT_MEMLOCK) is {limit_bytes} bytes; stategrid's runtime needs at least {GLOMMIO_MEMLOCK_MIN_BYTES}. Fix: ulimit -l unlimited (systemd: LimitMEMLOCK=infinity; {DOCKER_FIX})."
            ),
        });
    }
    if cap_ipc_lock || limit_bytes == u64::MAX {
        return Ok((wanted_bytes, None));
    }
    let per_shard = limit_bytes / (GLOMMIO_RINGS_PER_SHARD * shards.max(1) as u64);
    if per_shard >= wanted_bytes {
        return Ok((wanted_bytes, None));
    }
    let fitted = per_shard / 4096 * 4096;
    if fitted < GLOMMIO_IO_MEMORY_MIN_BYTES {
        let need = GLOMMIO_RINGS_PER_SHARD * shards as u64 * GLOMMIO_IO_MEMORY_MIN_BYTES;
        return Err(PreflightError {
            exit_code: exit::MEMLOCK,
            message: format!(
                "locked-memory limit (RLIMIT_MEMLOCK) is {limit_bytes} bytes; {shards} shards need at least {need}. Fix: ulimit -l unlimited, or fewer shards (--set shards=N); {DOCKER_FIX}."
            ),
        });
    }
    Ok((
        fitted,
        Some(format!(
            "io_memory_bytes lowered from {wanted_bytes} to {fitted} per shard to fit RLIMIT_MEMLOCK ({limit_bytes} bytes for {shards} shards); raise the limit (ulimit -l) to keep the requested size"
        )),
    ))
}

fn memlock_limit_bytes() -> io::Result<u64> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(if rl.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        rl.rlim_cur
    })
}

/// Is CAP_IPC_LOCK (bit 14) in this process's effective set? Then locked memory is unlimited.
fn has_cap_ipc_lock() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }

    #[test]
    fn memlock_planning() {
        // Below glommio's floor: always an error with the fix.
        let e = plan_io_memory(64 * 1024, true, 1, 512 << 10).unwrap_err();
        assert_eq!(e.exit_code, exit::MEMLOCK);
        assert!(e.message.contains("ulimit -l"), "{}", e.message);
        // Unlimited or CAP_IPC_LOCK: keep what was asked.
        assert_eq!(
            plan_io_memory(u64::MAX, false, 2, 1 << 20).unwrap().0,
            1 << 20
        );
        assert_eq!(
            plan_io_memory(1 << 20, true, 8, 1 << 20).unwrap().0,
            1 << 20
        );
        // 8 MiB (Docker's default) for 2 shards wanting 2 MiB each: lowered, and said so.
        let (bytes, note) = plan_io_memory(8 << 20, false, 2, 2 << 20).unwrap();
        assert!(((64 << 10)..=(8 << 20) / 6).contains(&bytes));
        assert!(note.unwrap().contains("lowered"));
        // Too many shards for the limit: an error naming the shards.
        let e = plan_io_memory(1 << 20, false, 64, 512 << 10).unwrap_err();
        assert!(e.message.contains("64 shards"), "{}", e.message);
    }

    #[test]
    fn this_machine_passes() {
        // The test machine runs the server, so preflight must pass here.
        check(1, 512 << 10).unwrap();
    }
}
