//! Open TCP connections per client address (`--max-connections-per-ip`).
//!
//! Every accepted socket holds a file descriptor, and a process has only
//! `RLIMIT_NOFILE` of them (often 1,024). Without a per-address cap, about
//! 1,100 idle sockets from one machine (issue 27, item 2) left the server
//! unable to accept anyone: `/healthz` timed out and every new client
//! failed with `Too many open files`. So a socket is counted from the
//! moment it is accepted, before any byte of HTTP is read, until it closes
//! (after a WebSocket upgrade too), and one past the cap is closed at once:
//! it never costs more than the moment it takes to accept and drop it.
//!
//! IPv6 clients are counted per /64: one host usually holds a whole /64
//! and can pick any address in it, so counting single addresses would not
//! bound it at all.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

/// Counts open connections per client address, up to a cap.
#[derive(Debug)]
pub struct IpConnections {
    max_per_ip: usize,
    /// A std mutex: held only to bump a count, never across an `.await`.
    /// Addresses whose count drops to zero are removed, so the map holds
    /// only addresses with a socket open.
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One accepted socket's place under the cap; given back when the last
/// clone drops (the HTTP connection, and the WebSocket it upgrades into,
/// each hold one).
#[derive(Debug, Clone)]
pub struct IpSlot {
    /// Only held: dropping the last clone gives the place back.
    _held: Arc<Held>,
}

#[derive(Debug)]
struct Held {
    owner: Arc<IpConnections>,
    key: IpAddr,
}

impl IpConnections {
    /// Allows `max_per_ip` open connections per client address (at least 1).
    pub fn new(max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_per_ip: max_per_ip.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more socket from `ip`, or `None` when that address
    /// already has `max_per_ip` open.
    pub fn open(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = client_key(ip);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            _held: Arc::new(Held {
                owner: self.clone(),
                key,
            }),
        })
    }

    /// Sockets open from `ip` (its /64 for IPv6).
    pub fn count(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&client_key(ip)).copied().unwrap_or(0)
    }

    /// The configured cap.
    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self
            .owner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The address a client is counted under: IPv4 as is (also when it
/// arrives IPv4-mapped on a dual-stack socket), IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_per_address_and_slots_come_back() {
        let connections = IpConnections::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let first = connections.open(a).unwrap();
        let second = connections.open(a).unwrap();
        assert!(connections.open(a).is_none());
        assert!(
            connections.open(b).is_some(),
            "another address still gets in"
        );
        // A clone (the upgraded WebSocket's) keeps the place.
        let upgraded = first.clone();
        drop(first);
        assert!(connections.open(a).is_none());
        drop(upgraded);
        assert_eq!(connections.count(a), 1);
        assert!(connections.open(a).is_some());
        drop(second);
    }

    #[test]
    fn addresses_without_sockets_are_forgotten() {
        let connections = IpConnections::new(1);
        let slot = connections.open("10.1.2.3".parse().unwrap()).unwrap();
        drop(slot);
        assert!(connections.open.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let connections = IpConnections::new(1);
        let _held = connections
            .open("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(
            connections
                .open("2001:db8:1:2:ffff::9".parse().unwrap())
                .is_none()
        );
        assert!(
            connections
                .open("2001:db8:1:3::1".parse().unwrap())
                .is_some()
        );
        let _v4 = connections.open("192.0.2.7".parse().unwrap()).unwrap();
        assert!(
            connections
                .open("::ffff:192.0.2.7".parse().unwrap())
                .is_none()
        );
    }
}
