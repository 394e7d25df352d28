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
    /// `target/release/crdt-hub serve` on a fresh SQLite file.
    CrdtHub,
    /// `@y/websocket-server` (the y-websocket reference server), no persistence.
    YWebsocket,
    /// `@hocuspocus/server` with no extensions (no persistence).
    Hocuspocus,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::CrdtHub => "crdt-hub",
            Self::YWebsocket => "y-websocket",
            Self::Hocuspocus => "hocuspocus",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Self::Hocuspocus => Protocol::Hocuspocus,
            Self::CrdtHub | Self::YWebsocket => Protocol::YWebsocket,
        }
    }
}

/// Where things are.
#[derive(Debug, Clone)]
pub struct Paths {
    pub crdt_hub: PathBuf,
    /// Extra arguments for `crdt-hub serve` (e.g. to lift per-IP limits:
    /// the whole benchmark connects from 127.0.0.1).
    pub crdt_hub_args: Vec<String>,
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
            peers: tidy(bench.join("peers")),
        }
    }

    /// Checks that every server in `kinds` can start; installs the Node
    /// peers with `npm ci` when their node_modules is missing.
    ///
    /// # Errors
    /// A missing crdt-hub binary, or a failed `npm ci`.
    pub fn prepare(&self, kinds: &[ServerKind]) -> Result<()> {
        if kinds.contains(&ServerKind::CrdtHub) && !self.crdt_hub.is_file() {
            bail!(
                "{} is missing: build it first with `cargo build --release -p crdt-hub`",
                self.crdt_hub.display()
            );
        }
        let needs_node = kinds.iter().any(|k| *k != ServerKind::CrdtHub);
        if needs_node && !self.peers.join("node_modules").is_dir() {
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
        Ok(())
    }
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
            ServerKind::CrdtHub => {
                let mut c = Command::new(&paths.crdt_hub);
                c.arg("serve")
                    .arg("--bind")
                    .arg(format!("127.0.0.1:{port}"))
                    .arg("--database-url")
                    .arg(database_url.map_or_else(
                        || format!("sqlite://{}", dir.path().join("bench.db").display()),
                        str::to_owned,
                    ))
                    // Every generated client comes from 127.0.0.1 and the
                    // B4 sender pushes 260k updates as fast as it can: lift
                    // the abuse limits (flags in --crdt-hub-arg still win
                    // over these environment defaults).
                    .env("CRDT_HUB_RATE_CONNECTIONS_PER_IP", "1000000")
                    .env("CRDT_HUB_RATE_CONNECTION_BURST_PER_IP", "1000000")
                    .env("CRDT_HUB_RATE_MESSAGES", "10000000")
                    .env("CRDT_HUB_RATE_MESSAGE_BURST", "10000000")
                    .env("CRDT_HUB_RATE_BYTES", "4GiB")
                    .env("CRDT_HUB_RATE_BYTE_BURST", "4GiB")
                    .env("CRDT_HUB_MAX_CONNECTIONS", "1000000")
                    // Since d8a97e2 one address holds at most 256 sockets:
                    // the idle run (2,000 and 10,000 connections) measured
                    // 256 until this was lifted too.
                    .env("CRDT_HUB_MAX_CONNECTIONS_PER_IP", "1000000")
                    .args(extra)
                    .args(&paths.crdt_hub_args);
                c
            }
            ServerKind::YWebsocket => {
                let mut c = Command::new("node");
                c.arg("node_modules/@y/websocket-server/src/server.js")
                    .current_dir(&paths.peers);
                c
            }
            ServerKind::Hocuspocus => {
                let mut c = Command::new("node");
                c.arg("hocuspocus.mjs").current_dir(&paths.peers);
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

/// `node --version`, or why not.
pub fn node_version() -> String {
    Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map_or_else(
            || "node not found".into(),
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
