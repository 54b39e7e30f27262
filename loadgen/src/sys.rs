//! The few system interfaces used by hand: CPU affinity, CPU time, and io_uring set-up.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::IoUring;

/// Parses a CPU list like `0,2-3` (as `taskset -c` takes it).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("CPU list '{s}': '{t}' is not a CPU number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("CPU list '{s}': range {a}-{b} runs backwards"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("CPU list '{s}' names no CPU"));
    }
    if let Some(&c) = cpus.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        return Err(format!("CPU {c} is beyond CPU_SETSIZE"));
    }
    Ok(cpus)
}

/// The CPUs this process may run on (so `taskset -c 0 loadgen` is respected), in order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the calling thread's timed waits wake on time: the default 50 µs timer slack would
/// let the kernel delay an open-loop wake-up, and so every arrival behind it.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a value and touches only this thread's settings.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// User and system CPU time, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user_us: u64,
    pub sys_us: u64,
}

impl CpuTime {
    pub fn total_us(&self) -> u64 {
        self.user_us + self.sys_us
    }

    pub fn since(&self, earlier: &CpuTime) -> CpuTime {
        CpuTime {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            sys_us: self.sys_us.saturating_sub(earlier.sys_us),
        }
    }
}

fn rusage(who: libc::c_int) -> CpuTime {
    // SAFETY: getrusage fills the struct; both `who` values used here are always valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    CpuTime {
        user_us: us(ru.ru_utime),
        sys_us: us(ru.ru_stime),
    }
}

/// CPU time of the whole process (every thread).
pub fn process_cpu() -> CpuTime {
    rusage(libc::RUSAGE_SELF)
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> CpuTime {
    rusage(libc::RUSAGE_THREAD)
}

/// How a ring was set up, for reports.
pub const RING_BEST: &str = "single_issuer+defer_taskrun";
pub const RING_COOP: &str = "coop_taskrun";
pub const RING_PLAIN: &str = "default";

static WARNED: AtomicBool = AtomicBool::new(false);

/// Builds a ring for one thread, which must be the only thread that ever submits to it.
///
/// SINGLE_ISSUER + DEFER_TASKRUN: completions are posted only when this thread enters the ring
/// to wait, so the kernel never interrupts the thread to run completion work (each such
/// interrupt is an IPI, costly in a VM). Kernels before 6.1 refuse it; COOP_TASKRUN (5.19) is
/// the next best, then a default ring. A fallback prints one warning per process.
pub fn build_ring(entries: u32) -> io::Result<(IoUring, &'static str)> {
    let best = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_submit_all()
        .setup_cqsize(entries * 2)
        .build(entries);
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let err = match best {
        Ok(r) => return Ok((r, RING_BEST)),
        Err(e) if refused(&e) => e,
        Err(e) => return Err(e),
    };
    let warn = |mode: &str| {
        if !WARNED.swap(true, Ordering::Relaxed) {
            eprintln!(
                "loadgen: warning: the kernel refused an io_uring with SINGLE_ISSUER + DEFER_TASKRUN ({err}); \
                 using {mode}, which costs more CPU per completion (kernel 6.1+ has both)"
            );
        }
    };
    match IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(entries * 2)
        .build(entries)
    {
        Ok(r) => {
            warn(RING_COOP);
            Ok((r, RING_COOP))
        }
        Err(e) if refused(&e) => {
            warn(RING_PLAIN);
            Ok((
                IoUring::builder()
                    .setup_cqsize(entries * 2)
                    .build(entries)?,
                RING_PLAIN,
            ))
        }
        Err(e) => Err(e),
    }
}

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19, with COOP_TASKRUN): arm the socket's poll at once
/// instead of first trying a receive that would find nothing. A receive armed right after its
/// replies were consumed almost always waits for the next round trip, so the try is waste.
pub const RECV_POLL_FIRST: u16 = 1;

/// Whether a ring set up as `mode` runs on a kernel that knows [`RECV_POLL_FIRST`].
pub fn poll_first_supported(mode: &str) -> bool {
    mode == RING_BEST || mode == RING_COOP
}

/// Does the kernel's ring support waiting with a timeout in the same `io_uring_enter`
/// (IORING_FEAT_EXT_ARG, 5.11)? The event loops rely on it: one system call per loop.
pub fn check_ext_arg(ring: &IoUring) -> io::Result<()> {
    if ring.params().is_feature_ext_arg() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel's io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11+): cannot wait with a timeout",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert_eq!(parse_cpu_list(" 1 , 3 ").unwrap(), vec![1, 3]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("99999").is_err());
    }

    #[test]
    fn cpu_time_moves_forward() {
        let a = process_cpu();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let b = process_cpu();
        assert!(b.total_us() >= a.total_us());
        assert!(!allowed_cpus().unwrap().is_empty());
    }
}
