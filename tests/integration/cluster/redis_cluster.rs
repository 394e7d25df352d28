//! A real Redis Cluster for one test: three masters (`redis-server
//! --cluster-enabled yes`) on free loopback ports, their files in a temp
//! dir, joined by `redis-cli --cluster create`; killed when dropped.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

const MASTERS: usize = 3;
/// Longest a cluster may take to start and agree on its slots.
const START: Duration = Duration::from_secs(20);

pub(super) struct RedisCluster {
    /// The masters' client ports (TLS ports for a TLS cluster).
    pub ports: Vec<u16>,
    /// The private CA's PEM file, for a cluster that speaks only TLS.
    ca_file: Option<String>,
    // Before `dir`: the servers go before their files.
    _servers: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub async fn start() -> Self {
        Self::launch(false, Self::reserve()).await
    }

    /// A cluster that speaks only TLS, clients and cluster bus alike, with
    /// a certificate from a private CA ([`Self::node_flags`] trusts it).
    pub async fn start_tls() -> Self {
        Self::launch(true, Self::reserve()).await
    }

    /// Ports for a cluster that [`Self::start_on`] starts later: the
    /// masters' first ([`Self::url_as`] names the first two).
    pub fn reserve() -> Vec<u16> {
        free_ports(MASTERS * 2)
    }

    pub async fn start_on(reserved: Vec<u16>) -> Self {
        Self::launch(false, reserved).await
    }

    async fn launch(tls: bool, free: Vec<u16>) -> Self {
        let dir = crate::support::temp_dir();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        let ca_file = tls.then(|| {
            let pki = crate::support::make_pki();
            std::fs::write(path("ca.pem"), &pki.ca_pem).unwrap();
            std::fs::write(path("redis.pem"), &pki.cert_pem).unwrap();
            std::fs::write(path("redis.key"), &pki.key_pem).unwrap();
            path("ca.pem")
        });
        // The cluster bus port is given too: the default (port + 10000)
        // may be taken, or beyond 65535.
        let (ports, bus_ports) = free.split_at(MASTERS);
        let mut servers = Vec::new();
        for (port, bus_port) in ports.iter().zip(bus_ports) {
            let mut command = Command::new("redis-server");
            command
                .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--dir", dir.path().to_str().unwrap()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"]);
            if tls {
                command
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-auth-clients", "no"])
                    .args(["--tls-cert-file", &path("redis.pem")])
                    .args(["--tls-key-file", &path("redis.key")])
                    .args(["--tls-ca-cert-file", &path("ca.pem")]);
            } else {
                command.args(["--port", &port.to_string()]);
            }
            servers.push(
                command
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("redis-server starts"),
            );
        }
        let cluster = Self {
            ports: ports.to_vec(),
            ca_file,
            _servers: servers,
            _dir: dir,
        };
        let deadline = Instant::now() + START;
        for port in &cluster.ports {
            while tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "redis-server :{port} did not start"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let created = cluster
            .cli()
            .args(["--cluster", "create"])
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        // Every master must know where every slot is before a test routes
        // by them.
        for port in &cluster.ports {
            loop {
                let info = cluster
                    .cli()
                    .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
                    .output()
                    .await
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not come up");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    /// `redis-cli` for this cluster (over TLS for a TLS cluster).
    fn cli(&self) -> Command {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1"]);
        if let Some(ca) = &self.ca_file {
            command.args(["--tls", "--cacert", ca]);
        }
        command.stdin(Stdio::null());
        command
    }

    /// `--redis-url`: two of the masters as seeds (the nodes find the
    /// third).
    pub fn url(&self) -> String {
        self.url_as("")
    }

    /// [`Self::url`] with `user:password@` (or nothing: "") in each seed.
    pub fn url_as(&self, credentials: &str) -> String {
        let scheme = if self.ca_file.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!(
            "{scheme}://{credentials}127.0.0.1:{},{scheme}://{credentials}127.0.0.1:{}",
            self.ports[0], self.ports[1]
        )
    }

    /// The flags besides `--redis-url` that put a node on this cluster.
    pub fn node_flags(&self) -> Vec<String> {
        let mut flags = vec!["--redis-cluster".to_string()];
        if let Some(ca) = &self.ca_file {
            flags.extend(["--redis-ca-file".to_string(), ca.clone()]);
        }
        flags
    }

    /// A connection to the master on `port` alone (not a cluster client):
    /// it sees that master's keys only.
    pub async fn master(&self, port: u16) -> redis::aio::MultiplexedConnection {
        let client = match &self.ca_file {
            Some(ca) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(ca).unwrap()),
                },
            ),
            None => redis::Client::open(format!("redis://127.0.0.1:{port}")),
        };
        client
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// The keys of `prefix` that the master on `port` holds.
    pub async fn keys_on(&self, port: u16, prefix: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut self.master(port).await)
            .await
            .unwrap()
    }

    /// The keys of `prefix` on every master.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        for port in &self.ports {
            keys.extend(self.keys_on(*port, prefix).await);
        }
        keys
    }

    /// The port of the master that serves `key`'s slot.
    pub async fn master_of(&self, key: &str) -> u16 {
        let mut redis = self.master(self.ports[0]).await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        // [[first slot, last slot, [ip, port, id, …], …replicas], …]
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut redis)
            .await
            .unwrap();
        for range in ranges {
            let first: u16 = redis::from_redis_value_ref(&range[0]).unwrap();
            let last: u16 = redis::from_redis_value_ref(&range[1]).unwrap();
            if (first..=last).contains(&slot) {
                let master: Vec<redis::Value> = redis::from_redis_value_ref(&range[2]).unwrap();
                return redis::from_redis_value_ref(&master[1]).unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Runs `command` on every master (ACLs, for one, are per node).
    pub async fn on_every_master(&self, command: &redis::Cmd) {
        for port in &self.ports {
            command
                .query_async::<()>(&mut self.master(*port).await)
                .await
                .unwrap();
        }
    }

    /// Deletes every key of `prefix`, one at a time (keys of different
    /// slots cannot go in one command).
    pub async fn delete_keys(&self, prefix: &str) {
        for port in &self.ports {
            let mut master = self.master(*port).await;
            for key in self.keys_on(*port, prefix).await {
                redis::cmd("DEL")
                    .arg(key)
                    .query_async::<()>(&mut master)
                    .await
                    .unwrap();
            }
        }
    }
}

/// `count` distinct ports that were free a moment ago.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}
