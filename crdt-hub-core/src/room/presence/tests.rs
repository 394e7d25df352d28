//! The room's awareness rules, entry by entry: ownership, caps, the
//! clock rule, departures.

use super::*;

fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
    AwarenessUpdate {
        clients: entries
            .iter()
            .map(|&(client, clock, json)| {
                (
                    ClientID::new(client),
                    AwarenessUpdateEntry {
                        clock,
                        json: json.into(),
                    },
                )
            })
            .collect(),
    }
}

const ANN: &str = r##"{"user":{"name":"ann","color":"#f00"}}"##;
const EVE: &str = r##"{"user":{"name":"ann (fake)","color":"#f00"}}"##;

#[test]
fn a_client_id_belongs_to_the_connection_that_set_it_first() {
    let mut presence = Presence::default();
    let set = presence.apply(Owner::Peer(1), update(&[(10, 1, ANN)]));
    assert_eq!(states(&set.frame().unwrap())[&10], (1, ANN.to_string()));

    // Peer 2 sends ann's id with a far higher clock: ignored, and
    // nothing is forwarded.
    let spoof = presence.apply(Owner::Peer(2), update(&[(10, 1000, EVE)]));
    assert!(spoof.frame().is_none());
    assert_eq!(spoof.ignored.not_owner, 1);
    assert_eq!(presence.state(ClientID::new(10)), Some(ANN));

    // Ann renews (clock 2, as y-protocols does every 15 s): accepted,
    // although the spoofer's clock was higher.
    let renewed = presence.apply(Owner::Peer(1), update(&[(10, 2, ANN)]));
    assert_eq!(states(&renewed.frame().unwrap())[&10], (2, ANN.to_string()));
}

#[test]
fn an_echo_of_anothers_state_is_stale_not_an_attempt() {
    // y-websocket sends back the changes it applies; they carry clocks
    // the room already has, and are dropped without counting.
    let mut presence = Presence::default();
    presence.apply(Owner::Peer(1), update(&[(10, 5, ANN)]));
    for clock in [4, 5] {
        let echo = presence.apply(Owner::Peer(2), update(&[(10, clock, ANN)]));
        assert!(echo.frame().is_none());
        assert!(!echo.ignored.any());
    }
    presence.apply(Owner::Peer(1), update(&[(10, 6, "null")]));
    let echo = presence.apply(Owner::Peer(2), update(&[(10, 6, "null")]));
    assert!(echo.frame().is_none());
    assert!(!echo.ignored.any());
}

#[test]
fn a_removal_by_anyone_but_the_owner_is_ignored() {
    let mut presence = Presence::default();
    presence.apply(Owner::Peer(1), update(&[(10, 5, ANN)]));
    for clock in [5, 6, u32::MAX - 1] {
        let removal = presence.apply(Owner::Peer(2), update(&[(10, clock, "null")]));
        assert!(removal.frame().is_none());
        assert_eq!(removal.ignored.not_owner, 1);
    }
    assert_eq!(presence.state(ClientID::new(10)), Some(ANN));
    // Nor can another node remove it.
    let remote = presence.apply(Owner::Remote, update(&[(10, 9, "null")]));
    assert_eq!(remote.ignored.not_owner, 1);
    assert_eq!(presence.state(ClientID::new(10)), Some(ANN));

    // The owner can (y-protocols' `setLocalState(null)`), and the id
    // stays its own while it is here.
    let removed = presence.apply(Owner::Peer(1), update(&[(10, 6, "null")]));
    assert_eq!(removed.removed, [ClientID::new(10)]);
    assert_eq!(states(&removed.frame().unwrap())[&10], (6, "null".into()));
    assert!(presence.is_empty());
    let taken = presence.apply(Owner::Peer(2), update(&[(10, 7, EVE)]));
    assert_eq!(taken.ignored.not_owner, 1);
    let back = presence.apply(Owner::Peer(1), update(&[(10, 7, ANN)]));
    assert_eq!(back.set, [ClientID::new(10)]);
}

#[test]
fn the_clock_rule_still_holds_for_the_owner() {
    let mut presence = Presence::default();
    presence.apply(Owner::Peer(1), update(&[(10, 5, ANN)]));
    // Older or equal clocks change nothing.
    assert!(
        presence
            .apply(Owner::Peer(1), update(&[(10, 4, EVE)]))
            .frame()
            .is_none()
    );
    assert!(
        presence
            .apply(Owner::Peer(1), update(&[(10, 5, EVE)]))
            .frame()
            .is_none()
    );
    // A removal at the same clock removes.
    let removed = presence.apply(Owner::Peer(1), update(&[(10, 5, " null ")]));
    assert_eq!(removed.removed, [ClientID::new(10)]);
}

#[test]
fn a_connection_holds_at_most_its_cap_of_client_ids() {
    let caps = PresenceCaps {
        clients_per_connection: 4,
        room_bytes: 1 << 20,
    };
    let mut presence = Presence::new(caps);
    let fakes: Vec<_> = (1..=2000).map(|c| (c, 1, ANN)).collect();
    let flood = presence.apply(Owner::Peer(1), update(&fakes));
    assert_eq!(flood.set.len(), 4);
    assert_eq!(flood.ignored.client_cap, 1996);
    assert_eq!(states(&flood.frame().unwrap()).len(), 4);
    assert_eq!(presence.len(), 4);
    // A removed id still counts: removing and adding cannot cycle
    // through ids.
    let kept = flood.set[0];
    presence.apply(Owner::Peer(1), update(&[(kept.get(), 2, "null")]));
    let another = presence.apply(Owner::Peer(1), update(&[(5000, 1, ANN)]));
    assert_eq!(another.ignored.client_cap, 1);
    // Its own ids it may still renew; other connections are unaffected.
    let renew = presence.apply(Owner::Peer(1), update(&[(kept.get(), 3, ANN)]));
    assert_eq!(renew.set, [kept]);
    let other = presence.apply(Owner::Peer(2), update(&[(6000, 1, ANN)]));
    assert_eq!(other.set.len(), 1);
    // Another node's clients are not a connection's: no cap.
    let remote: Vec<_> = (7000..7010).map(|c| (c, 1, ANN)).collect();
    assert_eq!(presence.apply(Owner::Remote, update(&remote)).set.len(), 10);
}

#[test]
fn the_rooms_states_stay_under_its_byte_cap() {
    let caps = PresenceCaps {
        clients_per_connection: 4,
        room_bytes: 100,
    };
    let mut presence = Presence::new(caps);
    let forty = format!("\"{}\"", "x".repeat(38));
    let sixty = format!("\"{}\"", "x".repeat(58));
    assert_eq!(
        presence
            .apply(Owner::Peer(1), update(&[(1, 1, &forty)]))
            .set
            .len(),
        1
    );
    assert_eq!(
        presence
            .apply(Owner::Peer(2), update(&[(2, 1, &sixty)]))
            .set
            .len(),
        1
    );
    assert_eq!(presence.local_bytes(), 100);
    // A third joiner's state would pass it: ignored.
    let full = presence.apply(Owner::Peer(3), update(&[(3, 1, ANN)]));
    assert_eq!(full.ignored.room_bytes, 1);
    // Growing a state past it is ignored too (the old one stays);
    // renewing or shrinking one is not.
    let grow = presence.apply(Owner::Peer(1), update(&[(1, 2, &sixty)]));
    assert_eq!(grow.ignored.room_bytes, 1);
    assert_eq!(presence.state(ClientID::new(1)), Some(forty.as_str()));
    assert_eq!(
        presence
            .apply(Owner::Peer(1), update(&[(1, 3, &forty)]))
            .set
            .len(),
        1
    );
    assert_eq!(
        presence
            .apply(Owner::Peer(2), update(&[(2, 2, "1")]))
            .set
            .len(),
        1
    );
    assert_eq!(presence.local_bytes(), 41);
    assert_eq!(
        presence
            .apply(Owner::Peer(3), update(&[(3, 1, ANN)]))
            .set
            .len(),
        1
    );
    // A joiner's greeting holds no more than the cap.
    let greeting = presence.everyone().unwrap();
    let total: usize = states(&greeting).values().map(|(_, json)| json.len()).sum();
    assert!(total <= 100, "{total}");
}

#[test]
fn leaving_removes_the_owners_states_and_frees_its_ids() {
    let mut presence = Presence::default();
    presence.apply(Owner::Peer(1), update(&[(10, 3, ANN), (11, 1, ANN)]));
    presence.apply(Owner::Peer(1), update(&[(11, 2, "null")]));
    presence.apply(Owner::Peer(2), update(&[(20, 1, EVE)]));
    let removal = encode_changes(presence.leave(1)).unwrap();
    // Only what the others still saw, at the clock they hold it at.
    assert_eq!(states(&removal), HashMap::from([(10, (3, "null".into()))]));
    assert_eq!(presence.owner(ClientID::new(10)), None);
    assert_eq!(presence.owner(ClientID::new(11)), None);
    assert_eq!(presence.local_bytes(), EVE.len());
    assert!(presence.leave(1).is_empty());
    // The freed id may be set by whoever comes next, with a clock past
    // its removal: the client itself, reconnecting, at its first change
    // or renewal (clients would ignore its unchanged state too).
    let unchanged = presence.apply(Owner::Peer(3), update(&[(10, 3, ANN)]));
    assert!(unchanged.set.is_empty());
    let next = presence.apply(Owner::Peer(3), update(&[(10, 4, ANN)]));
    assert_eq!(next.set, [ClientID::new(10)]);
    assert_eq!(presence.owner(ClientID::new(10)), Some(Owner::Peer(3)));
}

#[test]
fn an_echo_of_a_departed_clients_state_does_not_bring_it_back() {
    // y-websocket sends back every change it applies: Eve's client
    // echoes Ann's last state after Ann left.
    let mut presence = Presence::default();
    presence.apply(Owner::Peer(1), update(&[(10, 3, ANN)]));
    presence.apply(Owner::Peer(2), update(&[(20, 1, EVE)]));
    let removal = presence.leave(1);
    assert_eq!(
        removal[&ClientID::new(10)].clock,
        3,
        "the last state's clock"
    );
    for clock in [2, 3] {
        let echo = presence.apply(Owner::Peer(2), update(&[(10, clock, ANN)]));
        assert!(echo.changes.is_empty() && echo.set.is_empty());
        assert!(!echo.ignored.any(), "an honest client's echo is no offence");
    }
    assert_eq!(presence.owner(ClientID::new(10)), None);
    assert_eq!(
        states(&presence.everyone().unwrap()).len(),
        1,
        "no ghost for joiners"
    );
    // The same for an id that left on purpose, and for other nodes' ids.
    presence.apply(Owner::Peer(2), update(&[(21, 1, ANN)]));
    presence.apply(Owner::Peer(2), update(&[(21, 2, "null")]));
    presence.apply(Owner::Remote, update(&[(30, 7, ANN)]));
    presence.apply(Owner::Remote, update(&[(30, 8, "null")]));
    presence.apply(Owner::Remote, update(&[(31, 1, ANN)]));
    presence.expire_remote([ClientID::new(31)]);
    presence.leave(2);
    presence.apply(
        Owner::Peer(3),
        update(&[(21, 1, ANN), (30, 7, ANN), (31, 1, ANN)]),
    );
    presence.apply(Owner::Remote, update(&[(10, 3, ANN), (20, 1, EVE)]));
    assert!(presence.everyone().is_none(), "nobody is left");
}

#[test]
fn a_remote_client_id_cannot_be_taken_by_a_local_connection() {
    let mut presence = Presence::default();
    presence.apply(Owner::Remote, update(&[(30, 2, ANN)]));
    let spoof = presence.apply(Owner::Peer(1), update(&[(30, 99, EVE)]));
    assert_eq!(spoof.ignored.not_owner, 1);
    assert_eq!(presence.state(ClientID::new(30)), Some(ANN));
    // Its node removing it frees it.
    let removed = presence.apply(Owner::Remote, update(&[(30, 3, "null")]));
    assert_eq!(removed.removed, [ClientID::new(30)]);
    assert_eq!(presence.owner(ClientID::new(30)), None);
    // Expiry forgets remote states only.
    presence.apply(Owner::Remote, update(&[(31, 1, ANN)]));
    presence.apply(Owner::Peer(1), update(&[(32, 1, ANN)]));
    let expired = presence
        .expire_remote([ClientID::new(31), ClientID::new(32)])
        .unwrap();
    assert_eq!(states(&expired), HashMap::from([(31, (1, "null".into()))]));
    assert_eq!(presence.state(ClientID::new(32)), Some(ANN));
    assert!(presence.local().is_some_and(|f| states(&f).len() == 1));
}

#[test]
fn the_greeting_is_encoded_once_until_a_state_changes() {
    let mut presence = Presence::default();
    assert!(presence.everyone().is_none());
    presence.apply(Owner::Peer(1), update(&[(10, 1, ANN)]));
    let first = presence.everyone().unwrap();
    let again = presence.everyone().unwrap();
    assert_eq!(first.as_ptr(), again.as_ptr(), "cached");
    // Ignored entries change nothing, so the cache stays.
    presence.apply(Owner::Peer(2), update(&[(10, 9, EVE)]));
    assert_eq!(presence.everyone().unwrap().as_ptr(), first.as_ptr());
    presence.apply(Owner::Peer(1), update(&[(10, 2, ANN)]));
    assert_eq!(states(&presence.everyone().unwrap())[&10].0, 2);
}
