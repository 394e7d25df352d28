//! CPU time and memory of a process, from `/proc` (Linux only).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// One reading of a process' counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime of all its threads.
    pub cpu: Duration,
    /// Resident set size now.
    pub rss_bytes: u64,
    /// Peak resident set size since the process started.
    pub hwm_bytes: u64,
}

/// Reads the counters of `pid`, or of this process for `None`.
///
/// # Errors
/// The process is gone or `/proc` is not readable.
pub fn sample(pid: Option<u32>) -> Result<ProcSample> {
    let dir = pid.map_or_else(|| "/proc/self".to_owned(), |p| format!("/proc/{p}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat"))
        .with_context(|| format!("reading {dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))
        .with_context(|| format!("reading {dir}/status"))?;
    Ok(ProcSample {
        cpu: cpu_from_stat(&stat).context("parsing stat")?,
        rss_bytes: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
        hwm_bytes: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
    })
}

/// Current resident set size of `pid` in bytes (0 when unreadable).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| status_kib(&s, "VmRSS:"))
        .map_or(0, |kib| kib * 1024)
}

/// How many file descriptors `pid` holds open (`None` when its
/// `/proc/PID/fd` is not readable: gone, or another user's).
pub fn open_fds(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}

fn cpu_from_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) may contain spaces and parentheses: count
    // fields from the last ')'. utime and stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks_per_s = u64::try_from(ticks_per_s).ok().filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks_per_s as f64,
    ))
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Raises this process' open-file limit to its hard limit (children inherit
/// it) and returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// This process' open-file limit after [`ensure_fd_limit`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    /// The hard limit was below what was needed and has been raised (only
    /// a privileged process, `CAP_SYS_RESOURCE`, may do that).
    pub raised_hard: bool,
}

/// Makes sure this process (and the children it starts after this, which
/// inherit the limit) may open `needed` files: the soft limit goes to the
/// hard one, and when even the hard one is too low, to `needed` if the
/// process is allowed to raise it.
///
/// # Errors
/// The limit cannot be read, or stays below `needed`: the message says
/// what to change.
pub fn ensure_fd_limit(needed: u64) -> Result<FdLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading RLIMIT_NOFILE");
    }
    let hard_before = limit.rlim_max;
    let raised_hard = hard_before < needed;
    if raised_hard {
        limit.rlim_max = needed;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid rlimit; failure leaves the limit as it was.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    if set != 0 {
        let error = std::io::Error::last_os_error();
        if raised_hard {
            bail!(
                "need {needed} open files but the hard RLIMIT_NOFILE is {hard_before} and this process may not raise it ({error}; \
                 that takes CAP_SYS_RESOURCE: root, outside a container that drops it): raise it before starting the harness, \
                 e.g. as root `ulimit -Hn {needed}` in the shell that starts it, `nofile` in /etc/security/limits.conf, \
                 LimitNOFILE= for a systemd unit, `--ulimit nofile={needed}` for docker (fs.nr_open must be at least as high); \
                 or ask for fewer --connections"
            );
        }
        return Err(error).context("raising the soft RLIMIT_NOFILE to the hard limit");
    }
    Ok(FdLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
        raised_hard,
    })
}

/// The soft "Max open files" of process `pid`, from `/proc/PID/limits`.
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_open_files(&limits)
}

fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let stat = "123 (a) b (c)) S 1 1 1 0 -1 0 0 0 0 0 250 50 0 0 20 0";
        let cpu = cpu_from_stat(stat).unwrap();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!((cpu.as_secs_f64() - 300.0 / ticks).abs() < 1e-9);
    }

    #[test]
    fn reads_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95712                95712                processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(parse_open_files(limits), Some(20000));
        assert_eq!(parse_open_files("Max open files unlimited"), None);
        assert!(open_files_limit(std::process::id()).is_some());
    }

    #[test]
    fn reads_own_process() {
        let own = sample(None).unwrap();
        assert!(own.rss_bytes > 0);
        assert!(own.hwm_bytes >= own.rss_bytes);
        // stdin, stdout and stderr at least.
        assert!(open_fds(std::process::id()).unwrap() >= 3);
    }
}
