//! Property tests: clients editing one document through a `Room` end with
//! identical replicas, whatever order the room's frames reach them in, even
//! duplicated, and however their joins interleave. Driven sans-IO through
//! `crdt_hub_core::fuzzing::Sim`, the harness the `convergence` fuzz target uses.

use crdt_hub_core::fuzzing::{Edit, Sim, Source, Step};
use proptest::prelude::*;

/// An edit read from random bytes, as the fuzz target reads them (shrinking
/// the bytes toward zero simplifies the edit).
fn edit() -> impl Strategy<Value = Edit> {
    proptest::collection::vec(any::<u8>(), 12)
        .prop_map(|bytes| Edit::read(&mut Source::new(&bytes)))
}

fn step(clients: usize) -> impl Strategy<Value = Step> {
    let client = 0..clients;
    prop_oneof![
        4 => (client.clone(), edit()).prop_map(|(client, edit)| Step::Edit { client, edit }),
        2 => (client.clone(), any::<bool>())
            .prop_map(|(client, one_frame)| Step::Send { client, one_frame }),
        3 => (client.clone(), 0..64usize, prop::bool::weighted(0.3))
            .prop_map(|(client, pick, keep)| Step::Deliver { client, pick, keep }),
        1 => client.clone().prop_map(|client| Step::Toggle { client }),
        1 => client.clone().prop_map(|client| Step::External { client }),
        1 => client.prop_map(|client| Step::Resync { client }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Edits, sends, out-of-order and duplicated deliveries, reconnects and
    /// external applies in any interleaving: all replicas converge.
    #[test]
    fn replicas_converge_under_reordering_and_duplication(
        steps in proptest::collection::vec(step(3), 1..80)
    ) {
        let mut sim = Sim::new(3);
        for client in 0..3 {
            sim.step(Step::Toggle { client });
        }
        for step in steps {
            sim.step(step);
        }
        sim.settle();
        sim.assert_converged();
    }

    /// Clients that edited offline join the room concurrently: their joins'
    /// sync steps and updates interleave in any order.
    #[test]
    fn concurrent_joins_with_offline_edits_converge(
        offline in proptest::collection::vec((0..4usize, edit()), 0..24),
        join_order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        deliveries in proptest::collection::vec((0..4usize, 0..64usize, any::<bool>()), 0..48),
    ) {
        let mut sim = Sim::new(4);
        for (client, edit) in offline {
            sim.step(Step::Edit { client, edit });
        }
        let mut deliveries = deliveries.into_iter();
        for client in join_order {
            sim.step(Step::Toggle { client });
            // Some of what is in flight arrives between two joins.
            for (client, pick, keep) in deliveries.by_ref().take(12) {
                sim.step(Step::Deliver { client, pick, keep });
            }
        }
        sim.settle();
        sim.assert_converged();
    }
}
