//! CPU time and memory of a process, from `/proc` (Linux only).

use std::time::Duration;

use anyhow::{Context, Result};

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
    fn reads_own_process() {
        let own = sample(None).unwrap();
        assert!(own.rss_bytes > 0);
        assert!(own.hwm_bytes >= own.rss_bytes);
        // stdin, stdout and stderr at least.
        assert!(open_fds(std::process::id()).unwrap() >= 3);
    }
}
