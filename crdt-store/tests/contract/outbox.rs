//! The webhook outbox: order per room, leases, retries, dead letters,
//! pruning, and claimers that never share an event.

use std::collections::HashSet;

use chrono::{DateTime, Duration as Span, Utc};
use crdt_store::{NewWebhookEvent, Redeliver, WebhookRetry, WebhookState};

use super::super::Ctx;

fn event(id: &str, room: &str, now: DateTime<Utc>) -> NewWebhookEvent {
    NewWebhookEvent {
        event_id: id.to_string(),
        event: "document.changed".to_string(),
        room: room.to_string(),
        body: format!("{{\"id\":\"{id}\"}}"),
        created_at: now,
        expires_at: now + Span::hours(24),
    }
}

fn ids(claimed: &[crdt_store::WebhookDelivery]) -> Vec<&str> {
    claimed.iter().map(|d| d.event_id.as_str()).collect()
}

pub async fn outbox_sends_each_room_in_order_one_event_at_a_time(Ctx { store, .. }: Ctx) {
    let now = Utc::now();
    let lease = now + Span::seconds(30);
    store
        .enqueue_webhooks(&[
            event("a1", "a", now),
            event("a2", "a", now),
            event("b1", "b", now),
        ])
        .await
        .unwrap();
    // Enqueuing the same event again changes nothing (a retried write).
    store
        .enqueue_webhooks(&[event("a1", "a", now)])
        .await
        .unwrap();
    assert_eq!(store.pending_webhooks().await.unwrap(), 3);

    let first = store.claim_webhooks(now, lease, 10).await.unwrap();
    assert_eq!(ids(&first), ["a1", "b1"], "one per room, the oldest");
    assert_eq!(first[0].body, r#"{"id":"a1"}"#);
    assert_eq!(first[0].attempts, 1);
    assert!(
        store
            .claim_webhooks(now, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased events are not claimed again, and a2 waits behind a1"
    );

    store.webhook_delivered(first[0].id, now).await.unwrap();
    let b1 = &first[1];
    store
        .webhook_failed(b1.id, "HTTP 500", WebhookRetry::At(now + Span::minutes(1)))
        .await
        .unwrap();
    // a2 is leased past the retry below, so only b1 comes back then.
    let a2_lease = now + Span::hours(1);
    assert_eq!(
        ids(&store.claim_webhooks(now, a2_lease, 10).await.unwrap()),
        ["a2"]
    );
    let later = now + Span::minutes(2);
    let retried = store
        .claim_webhooks(later, later + Span::seconds(30), 10)
        .await
        .unwrap();
    assert_eq!(ids(&retried), ["b1"], "due again after its backoff");
    assert_eq!(retried[0].attempts, 2);
    assert_eq!(store.pending_webhooks().await.unwrap(), 2);
}

pub async fn outbox_leases_expire_and_dead_letters_wait_for_redelivery_or_pruning(
    Ctx { store, .. }: Ctx,
) {
    let now = Utc::now();
    store
        .enqueue_webhooks(&[event("x1", "x", now), event("x2", "x", now)])
        .await
        .unwrap();
    let claimed = store
        .claim_webhooks(now, now + Span::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(ids(&claimed), ["x1"]);
    // The claimer died: after its lease, another claims the event.
    let after_lease = now + Span::seconds(2);
    let again = store
        .claim_webhooks(after_lease, after_lease + Span::seconds(1), 10)
        .await
        .unwrap();
    assert_eq!(ids(&again), ["x1"]);
    assert_eq!(again[0].attempts, 2);

    store
        .webhook_failed(
            again[0].id,
            "timed out",
            WebhookRetry::DeadLetter(after_lease),
        )
        .await
        .unwrap();
    let failed = store.webhooks(true, 100).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].state, WebhookState::Dead);
    assert_eq!(failed[0].last_error.as_deref(), Some("timed out"));
    // A dead letter no longer holds up the room's next event.
    assert_eq!(
        ids(&store
            .claim_webhooks(after_lease, after_lease, 10)
            .await
            .unwrap()),
        ["x2"]
    );

    let redelivered = store
        .redeliver_webhooks(
            Redeliver::AllFailed,
            after_lease,
            after_lease + Span::hours(1),
        )
        .await
        .unwrap();
    assert_eq!(redelivered, 1);
    assert_eq!(store.pending_webhooks().await.unwrap(), 2);
    assert_eq!(
        store
            .redeliver_webhooks(Redeliver::One(-1), now, now)
            .await
            .unwrap(),
        0,
        "an unknown id redelivers nothing"
    );

    // Dead letters are pruned by their own age, delivered events by theirs.
    for record in store.webhooks(false, 100).await.unwrap() {
        store.webhook_delivered(record.id, now).await.unwrap();
    }
    assert_eq!(store.pending_webhooks().await.unwrap(), 0);
    assert_eq!(
        store.prune_webhooks(now, now).await.unwrap(),
        0,
        "not older yet"
    );
    let pruned = store
        .prune_webhooks(now + Span::seconds(1), now)
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    assert!(store.webhooks(false, 100).await.unwrap().is_empty());
}

pub async fn outbox_concurrent_claimers_never_share_an_event(Ctx { store, .. }: Ctx) {
    let now = Utc::now();
    let events: Vec<_> = (0..60)
        .map(|n| event(&format!("e{n}"), &format!("room{}", n % 30), now))
        .collect();
    store.enqueue_webhooks(&events).await.unwrap();

    // Four claimers, each delivering what it claimed, until nothing is left.
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let now = Utc::now();
                let claimed = store
                    .claim_webhooks(now, now + Span::minutes(5), 3)
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    if store.pending_webhooks().await.unwrap() == 0 {
                        return mine;
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                for delivery in claimed {
                    store.webhook_delivered(delivery.id, now).await.unwrap();
                    mine.push(delivery.event_id);
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for claimer in claimers {
        for id in claimer.await.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "{id} was claimed twice");
        }
    }
    assert_eq!(total, 60);
}

fn updates(room: &str, n: usize) -> Vec<crdt_store::PendingUpdate> {
    let writer = super::super::Writer::new(7);
    (0..n)
        .map(|_| super::super::pending(&super::super::room(room), writer.insert(0, "x")))
        .collect()
}

/// Changes are counted by the append that stores them (only when asked),
/// listed once due, and reported once: the event and the count taken off
/// commit together, and edits counted meanwhile stay counted.
pub async fn unreported_changes_are_counted_with_the_edits_and_reported_once(
    Ctx { store, .. }: Ctx,
) {
    use crdt_store::UnreportedFilter;

    store.append(&updates("quiet", 2)).await.unwrap();
    assert!(
        store
            .unreported_changes(UnreportedFilter::Room("quiet"), 10)
            .await
            .unwrap()
            .is_empty(),
        "a plain append counts nothing"
    );

    let before = Utc::now() - Span::milliseconds(5);
    store.append_unreported(&updates("a", 3)).await.unwrap();
    store.append_unreported(&updates("a", 2)).await.unwrap();
    store.append_unreported(&updates("b", 1)).await.unwrap();
    let after = Utc::now() + Span::milliseconds(5);

    // Not quiet long enough and not waiting long enough: nothing due.
    let not_yet = UnreportedFilter::Due {
        quiet_since: before,
        waiting_since: before,
    };
    assert!(
        store
            .unreported_changes(not_yet, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let due = UnreportedFilter::Due {
        quiet_since: after,
        waiting_since: after,
    };
    let found = store.unreported_changes(due, 10).await.unwrap();
    let counts: Vec<(&str, i64)> = found.iter().map(|c| (c.room.as_str(), c.updates)).collect();
    assert_eq!(counts.len(), 2);
    assert!(
        counts.contains(&("a", 5)) && counts.contains(&("b", 1)),
        "{counts:?}"
    );
    let a = found.iter().find(|c| c.room == "a").unwrap().clone();
    assert!(
        a.first_at >= before && a.first_at <= a.last_at && a.last_at <= after,
        "{a:?}"
    );

    // More edits of `a` committed after its count was read.
    store.append_unreported(&updates("a", 4)).await.unwrap();
    let now = Utc::now();
    assert!(
        store
            .report_changes(&a, &event("ch-a", "a", now))
            .await
            .unwrap()
    );
    // A second reporter that read the same count writes nothing.
    assert!(
        !store
            .report_changes(&a, &event("ch-a-again", "a", now))
            .await
            .unwrap()
    );
    let left = store
        .unreported_changes(UnreportedFilter::Room("a"), 10)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].updates, 4, "the later edits stay counted");
    assert_eq!(left[0].first_at.timestamp_millis(), now.timestamp_millis());
    assert!(
        store
            .report_changes(&left[0], &event("ch-a2", "a", now))
            .await
            .unwrap()
    );
    assert!(
        store
            .unreported_changes(UnreportedFilter::Room("a"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let events: Vec<String> = store
        .webhooks(false, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert_eq!(events, ["ch-a2", "ch-a"]);
    assert_eq!(store.pending_webhooks().await.unwrap(), 2);

    // Deleting a room forgets its count with it.
    store
        .delete_room(&crdt_store::RoomName::parse("b").unwrap())
        .await
        .unwrap();
    assert!(store.unreported_changes(due, 10).await.unwrap().is_empty());
}
