//! The process's file descriptor limit, raised at start.
//!
//! Every socket is a file descriptor, and many systems still start
//! processes with a soft `RLIMIT_NOFILE` of 1,024 while allowing far more
//! (the hard limit): a server left at the soft limit runs out of sockets
//! long before it runs out of memory (issue 27, item 2). An unprivileged
//! process may raise its soft limit up to the hard one, so `serve` does
//! that first and logs both numbers: an operator who sees 1,024 there knows
//! to raise the hard limit (`LimitNOFILE=` in systemd, `ulimit -Hn`).

/// The limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit the process started with.
    pub soft_before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the most the soft limit can be raised to).
    pub hard: u64,
}

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum NofileError {
    #[error("reading RLIMIT_NOFILE")]
    Read(#[source] std::io::Error),
    #[error("raising the soft RLIMIT_NOFILE to the hard limit")]
    Raise(#[source] std::io::Error),
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (on macOS, to what
/// the kernel allows a process) and returns the numbers.
///
/// # Errors
/// When the limit cannot be read or set; the process keeps the limit it had.
#[cfg(unix)]
pub fn raise() -> Result<NofileLimit, NofileError> {
    use rlimit::Resource;
    let (soft_before, _) = Resource::NOFILE.get().map_err(NofileError::Read)?;
    rlimit::increase_nofile_limit(u64::MAX).map_err(NofileError::Raise)?;
    let (soft, hard) = Resource::NOFILE.get().map_err(NofileError::Read)?;
    Ok(NofileLimit {
        soft_before,
        soft,
        hard,
    })
}

/// Raises the limit (see [`raise`]) and logs the outcome; never fails the
/// start.
pub fn raise_and_log() {
    #[cfg(unix)]
    match raise() {
        Ok(limit) => tracing::info!(
            soft_before = limit.soft_before,
            soft = limit.soft,
            hard = limit.hard,
            "file descriptor limit (RLIMIT_NOFILE): each open connection takes one"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            cause = ?std::error::Error::source(&e),
            "could not raise the file descriptor limit; serving with the one inherited"
        ),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limit = raise().unwrap();
        assert!(limit.soft >= limit.soft_before);
        // Linux: exactly the hard limit. macOS caps it lower.
        assert!(limit.soft <= limit.hard);
        #[cfg(target_os = "linux")]
        assert_eq!(limit.soft, limit.hard);
    }
}
