//! One measurement per configuration against one server: each turns the
//! generator's report into the numbers the tables show.

use std::time::Duration;

use anyhow::Result;

use super::{Measured, Target};
use crate::conn::ConnectOptions;
use crate::fanout::{self, FanoutConfig};
use crate::idle::{self, IdleConfig};
use crate::ingest::{self, IngestConfig, Trace};
use crate::join_storm::{self, StormConfig};
use crate::presence::{self, PresenceConfig};

pub(super) async fn fanout_run(
    target: Target,
    clients: usize,
    rooms: usize,
    rate: f64,
    duration: Duration,
) -> Result<Measured> {
    let report = fanout::run(&fanout_config(&target, clients, rooms, rate, duration)).await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

/// One room of `clients` on a document of about `bytes`, 2 updates/s each.
pub(super) async fn hot_room_run(
    target: Target,
    clients: usize,
    bytes: usize,
    duration: Duration,
) -> Result<Measured> {
    let config = FanoutConfig {
        preload_bytes: bytes,
        // Every joiner is sent the whole document first.
        connect: ConnectOptions {
            timeout: Duration::from_secs(60),
            ..ConnectOptions::default()
        },
        ..fanout_config(&target, clients, 1, 2.0, duration)
    };
    let report = fanout::run(&config).await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

pub(super) async fn presence_run(
    target: Target,
    clients: usize,
    rate: f64,
    duration: Duration,
    echo: bool,
) -> Result<Measured> {
    let report = presence::run(&PresenceConfig {
        base: target.base.clone(),
        protocol: target.kind.protocol(),
        clients,
        rooms: 1,
        rate,
        arrivals: target.arrivals,
        duration,
        room_prefix: "presence".into(),
        connect: ConnectOptions::default(),
        connect_concurrency: 64,
        drain_timeout: Duration::from_secs(10),
        server_pid: Some(target.pid),
        echo,
    })
    .await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

fn fanout_config(
    target: &Target,
    clients: usize,
    rooms: usize,
    rate: f64,
    duration: Duration,
) -> FanoutConfig {
    FanoutConfig {
        bases: vec![target.base.clone()],
        protocol: target.kind.protocol(),
        clients,
        rooms,
        rate,
        arrivals: target.arrivals,
        duration,
        room_prefix: "fanout".into(),
        connect: ConnectOptions::default(),
        connect_concurrency: 64,
        drain_timeout: Duration::from_secs(10),
        server_pids: vec![target.pid],
        check_convergence: true,
        gapped_updates: 0,
        preload_bytes: 0,
    }
}

pub(super) async fn idle_run(
    target: Target,
    connections: usize,
    rooms: usize,
    idle: Duration,
) -> Result<Measured> {
    let report = idle::run(&IdleConfig {
        base: target.base.clone(),
        protocol: target.kind.protocol(),
        connections,
        rooms,
        idle,
        room_prefix: "idle".into(),
        connect: ConnectOptions {
            timeout: Duration::from_secs(30),
            read_buffer: 4 * 1024,
            ..ConnectOptions::default()
        },
        connect_concurrency: 128,
        server_pid: target.pid,
    })
    .await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

pub(super) async fn storm_run(target: Target, joiners: usize, bytes: usize) -> Result<Measured> {
    let report = join_storm::run(&StormConfig {
        base: target.base.clone(),
        protocol: target.kind.protocol(),
        room: "storm".into(),
        doc_bytes: bytes,
        joiners,
        spread: Duration::from_secs(1),
        timeout: Duration::from_secs(120),
        server_pid: target.pid,
    })
    .await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}

pub(super) async fn ingest_run(target: Target, trace: &Trace) -> Result<Measured> {
    let report = ingest::run(
        &IngestConfig {
            base: target.base.clone(),
            protocol: target.kind.protocol(),
            room: "b4".into(),
            observers: 10,
            window: 1024,
            timeout: Duration::from_secs(240),
            server_pid: target.pid,
        },
        trace,
    )
    .await?;
    Ok(Measured {
        metrics: report.metrics(),
        report: serde_json::to_value(&report)?,
    })
}
