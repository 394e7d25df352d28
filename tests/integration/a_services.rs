//! Named to sort first, so that it starts first: when `cargo test` runs
//! without PostgreSQL or Redis, this says so in one line at the top of the
//! failures, instead of the reader piecing it together from the tests
//! that need them (each of which also says which service it missed).
//! `scripts/test` checks the same before it builds anything.

use std::time::Duration;

#[tokio::test]
async fn postgres_and_redis_are_reachable() {
    let postgres = std::env::var("CRDT_HUB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut missing = Vec::new();
    let connect = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres);
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), connect).await,
        Ok(Ok(_))
    ) {
        missing.push(format!(
            "PostgreSQL at {postgres} (start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)"
        ));
    }
    let redis = async {
        let client = redis::Client::open("redis://127.0.0.1:6379")?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), redis).await,
        Ok(Ok(_))
    ) {
        missing.push(
            "Redis at 127.0.0.1:6379 (start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no)"
                .into(),
        );
    }
    assert!(
        missing.is_empty(),
        "these tests need services that are not running: {}",
        missing.join("; ")
    );
}
