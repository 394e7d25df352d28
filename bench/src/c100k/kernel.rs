//! What the kernel and the process limits allow a C100k run, checked
//! before it starts: a limit only root can raise stops it with a clear
//! message instead of failing halfway through the connections.

use serde::Serialize;

/// What the kernel allows, from `/proc/sys` (`None`: not readable).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Kernel {
    pub somaxconn: Option<u64>,
    /// `net.ipv4.ip_local_port_range`, inclusive.
    pub port_range: Option<(u64, u64)>,
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
    /// Files open on the whole machine now (`fs.file-nr`, first field).
    pub files_open: Option<u64>,
    /// `nf_conntrack_count`, `nf_conntrack_max` when the module is loaded.
    pub conntrack: Option<(u64, u64)>,
}

impl Kernel {
    pub fn read() -> Self {
        let read = |name: &str| std::fs::read_to_string(format!("/proc/sys/{name}")).ok();
        let first =
            |name: &str| -> Option<u64> { read(name)?.split_whitespace().next()?.parse().ok() };
        let port_range = read("net/ipv4/ip_local_port_range").and_then(|s| {
            let mut it = s.split_whitespace().map(str::parse::<u64>);
            Some((it.next()?.ok()?, it.next()?.ok()?))
        });
        let conntrack =
            first("net/netfilter/nf_conntrack_count").zip(first("net/netfilter/nf_conntrack_max"));
        Self {
            somaxconn: first("net/core/somaxconn"),
            port_range,
            nr_open: first("fs/nr_open"),
            file_max: first("fs/file-max"),
            files_open: first("fs/file-nr"),
            conntrack,
        }
    }

    /// Ports one source address has towards one server address and port.
    pub fn ephemeral_ports(&self) -> Option<u64> {
        self.port_range.map(|(lo, hi)| hi.saturating_sub(lo) + 1)
    }
}

/// What a run asks of the machine.
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    /// Open files each process (generator, server) needs.
    pub fds_per_process: u64,
    /// Processes on this machine holding one end of every connection.
    pub processes: u64,
    /// Connections from the busiest source address.
    pub per_address: u64,
    /// Connections (both ends on this machine count once in conntrack).
    pub connections: u64,
    pub concurrency: u64,
}

/// What stands in the way: problems that stop the run (each needs root
/// to fix, or a smaller run) and warnings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checks {
    pub fatal: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks `demand` against the kernel's limits.
pub fn check(kernel: &Kernel, demand: &Demand) -> Checks {
    let mut checks = Checks::default();
    if let Some(nr_open) = kernel.nr_open
        && demand.fds_per_process > nr_open
    {
        checks.fatal.push(format!(
            "fs.nr_open is {nr_open}, below the {} open files a process needs: as root, `sysctl -w fs.nr_open={}`",
            demand.fds_per_process, demand.fds_per_process
        ));
    }
    if let Some(file_max) = kernel.file_max {
        let want = kernel.files_open.unwrap_or(0) + demand.fds_per_process * demand.processes;
        if want > file_max {
            checks.fatal.push(format!(
                "fs.file-max is {file_max}, below the {want} files open on the machine during the run: as root, `sysctl -w fs.file-max={want}`"
            ));
        }
    }
    if let Some(ports) = kernel.ephemeral_ports() {
        if demand.per_address > ports {
            checks.fatal.push(format!(
                "{} connections from one source address, but net.ipv4.ip_local_port_range gives {ports} ports: lower --per-address",
                demand.per_address
            ));
        } else if demand.per_address * 10 > ports * 9 {
            checks.warnings.push(format!(
                "{} connections from one source address use over 90 % of its {ports} ephemeral ports",
                demand.per_address
            ));
        }
    }
    if let Some(somaxconn) = kernel.somaxconn
        && somaxconn < demand.concurrency
    {
        checks.warnings.push(format!(
            "net.core.somaxconn {somaxconn} is below --connect-concurrency {}: the listen queue may overflow (SYNs retried after 1 s)",
            demand.concurrency
        ));
    }
    if let Some((count, max)) = kernel.conntrack
        && count + demand.connections > max
    {
        checks.warnings.push(format!(
            "nf_conntrack holds {count} of {max} entries and the run adds {}: if loopback traffic is tracked, new connections are dropped once it is full (as root: `sysctl -w net.netfilter.nf_conntrack_max={}`)",
            demand.connections,
            count + demand.connections * 2
        ));
    }
    checks
}

/// The machine's TCP buffer memory in bytes (`/proc/net/sockstat`, "TCP:
/// … mem PAGES"); 0 when unreadable.
pub fn tcp_mem_bytes() -> u64 {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let pages = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let at = fields.iter().position(|&f| f == "mem")?;
            fields.get(at + 1)?.parse::<u64>().ok()
        })
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    pages * page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> Kernel {
        Kernel {
            somaxconn: Some(4096),
            port_range: Some((32768, 60999)),
            nr_open: Some(1_048_576),
            file_max: Some(2_466_246),
            files_open: Some(3_000),
            conntrack: Some((100, 262_144)),
        }
    }

    fn demand() -> Demand {
        Demand {
            fds_per_process: 100_256,
            processes: 2,
            per_address: 25_000,
            connections: 100_000,
            concurrency: 256,
        }
    }

    #[test]
    fn this_machine_allows_100k() {
        assert_eq!(machine().ephemeral_ports(), Some(28_232));
        assert_eq!(check(&machine(), &demand()), Checks::default());
    }

    #[test]
    fn limits_that_need_root_stop_the_run() {
        let kernel = Kernel {
            nr_open: Some(65_536),
            file_max: Some(150_000),
            port_range: Some((40_000, 60_000)),
            ..machine()
        };
        let checks = check(&kernel, &demand());
        assert_eq!(checks.fatal.len(), 3, "{checks:?}");
        assert!(checks.fatal[0].contains("fs.nr_open"));
        assert!(checks.fatal[1].contains("fs.file-max"));
        assert!(checks.fatal[2].contains("--per-address"));
    }

    #[test]
    fn soft_limits_only_warn() {
        let kernel = Kernel {
            somaxconn: Some(128),
            conntrack: Some((200_000, 262_144)),
            port_range: Some((32768, 60000)),
            ..machine()
        };
        let checks = check(
            &kernel,
            &Demand {
                per_address: 26_000,
                ..demand()
            },
        );
        assert!(checks.fatal.is_empty());
        assert_eq!(checks.warnings.len(), 3, "{checks:?}");
    }
}
