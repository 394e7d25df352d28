//! `crdt-hub webhooks list|redeliver`, and `serve` refusing bad webhook
//! flags, run as the real binary.

use std::process::{Output, Stdio};

use chrono::Utc;
use crdt_store::{NewWebhookEvent, WebhookRetry};

use crate::support::{sqlite_url, temp_dir};

async fn crdt_hub(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_crdt-hub-under-test"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("CRDT_HUB_WEBHOOK_URL")
        .env_remove("CRDT_HUB_WEBHOOK_SECRET")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run crdt-hub")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn list_shows_failed_events_and_redeliver_puts_them_back() {
    let dir = temp_dir();
    let url = sqlite_url(dir.path());
    let store = crdt_store::connect(&url).await.unwrap();
    let now = Utc::now();
    let event = |id: &str, room: &str| NewWebhookEvent {
        event_id: id.to_string(),
        event: "room.loaded".to_string(),
        room: room.to_string(),
        body: "{}".to_string(),
        created_at: now,
        expires_at: now,
    };
    store
        .enqueue_webhooks(&[event("evt_dead", "gone"), event("evt_fine", "fine")])
        .await
        .unwrap();
    let claimed = store.claim_webhooks(now, now, 10).await.unwrap();
    let dead = claimed.iter().find(|d| d.event_id == "evt_dead").unwrap();
    store
        .webhook_failed(dead.id, "HTTP 500", WebhookRetry::DeadLetter(now))
        .await
        .unwrap();

    let listed = crdt_hub(&[
        "webhooks",
        "list",
        "--failed",
        "--json",
        "--database-url",
        &url,
    ])
    .await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let records: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["event_id"], "evt_dead");
    assert_eq!(records[0]["state"], "dead");
    assert_eq!(records[0]["last_error"], "HTTP 500");

    let table = crdt_hub(&["webhooks", "list", "--database-url", &url]).await;
    let table = text(&table.stdout);
    assert!(
        table.contains("NUMBER") && table.contains("dead") && table.contains("pending"),
        "{table}"
    );

    let unknown = crdt_hub(&["webhooks", "redeliver", "999999", "--database-url", &url]).await;
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("no webhook event number 999999"));

    let id = dead.id.to_string();
    let again = crdt_hub(&["webhooks", "redeliver", &id, "--database-url", &url]).await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    // Pending again, due now; its last error stays until an attempt succeeds.
    let failed = store.webhooks(true, 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].state, crdt_store::WebhookState::Pending);
    assert!(failed[0].next_attempt_at <= Utc::now());
    assert_eq!(store.pending_webhooks().await.unwrap(), 2);
    let all = crdt_hub(&[
        "webhooks",
        "redeliver",
        "--all-failed",
        "--database-url",
        &url,
    ])
    .await;
    assert!(all.status.success(), "{}", text(&all.stderr));
    assert!(text(&all.stdout).contains("queued for delivery"));

    let neither = crdt_hub(&["webhooks", "redeliver", "--database-url", &url]).await;
    assert!(
        !neither.status.success(),
        "an id or --all-failed is required"
    );
}

#[tokio::test]
async fn serve_refuses_bad_webhook_flags_naming_the_flag() {
    let dir = temp_dir();
    let url = sqlite_url(dir.path());
    for (flags, needle) in [
        (vec!["--webhook-url", "ftp://example.com/"], "--webhook-url"),
        (
            vec![
                "--webhook-url",
                "http://127.0.0.1:9/",
                "--webhook-events",
                "doc.changed",
            ],
            "doc.changed",
        ),
        (vec!["--webhook-secret", "s"], "--webhook-url is not"),
        (
            vec![
                "--webhook-url",
                "http://127.0.0.1:9/",
                "--webhook-timeout",
                "0",
            ],
            "--webhook-timeout",
        ),
    ] {
        let mut args = vec!["serve", "--bind", "127.0.0.1:0", "--database-url", &url];
        args.extend(flags.iter().copied());
        let out = crdt_hub(&args).await;
        assert!(!out.status.success(), "{flags:?} was accepted");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(needle), "{flags:?}: {stderr}");
    }
}
