//! Model test: random appends across a few runs, some with wrong expected
//! seqs or duplicate names, interleaved with reopens; the store and a plain
//! in-memory model agree, and every run verifies.

mod common;

use std::collections::BTreeMap;

use common::{open, update};
use ferry_store::{Error, RunId};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append {
        run: usize,
        n: usize,
        seq_off: i8,
        terminal: bool,
    },
    /// A new run that tries to take run 0's name.
    Steal {
        n: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3usize, 1..4usize, prop_oneof![6 => Just(0i8), 1 => -2..=2i8], prop::bool::weighted(0.1))
            .prop_map(|(run, n, seq_off, terminal)| Op::Append { run, n, seq_off, terminal }),
        1 => (1..3usize).prop_map(|n| Op::Steal { n }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Clone)]
struct ModelRun {
    events: Vec<Vec<u8>>,
    terminal: bool,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, ..ProptestConfig::default() })]
    #[test]
    fn store_agrees_with_model(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let dir = tempfile::tempdir().unwrap();
            let mut store = open(dir.path());
            let runs: Vec<RunId> = (0..3).map(|_| RunId::new()).collect();
            let mut model: BTreeMap<RunId, ModelRun> = BTreeMap::new();
            let mut counter = 0u64;
            for op in ops {
                match op {
                    Op::Reopen => {
                        drop(store);
                        store = open(dir.path());
                    }
                    Op::Steal { n } if model.contains_key(&runs[0]) => {
                        let thief = RunId::new();
                        let evs = (0..n).map(|i| vec![i as u8]).collect();
                        let got = store.append(thief, 0, 1, evs, update("run-0", "P", false)).await;
                        let taken = matches!(got, Err(Error::NameTaken { existing, .. }) if existing == runs[0]);
                        prop_assert!(taken, "{:?}", got);
                    }
                    Op::Steal { .. } => {}
                    Op::Append { run, n, seq_off, terminal } => {
                        let id = runs[run];
                        let m = model.get(&id).cloned().unwrap_or_default();
                        let actual = m.events.len() as u64;
                        let expected = actual.saturating_add_signed(i64::from(seq_off));
                        let evs: Vec<Vec<u8>> = (0..n).map(|_| { counter += 1; counter.to_be_bytes().to_vec() }).collect();
                        let got = store.append(id, expected, counter, evs.clone(), update(&format!("run-{run}"), "P", terminal)).await;
                        if expected != actual {
                            let mismatch = matches!(got, Err(Error::SeqMismatch { actual: a, .. }) if a == actual);
                            prop_assert!(mismatch, "{:?}", got);
                        } else if m.terminal {
                            prop_assert!(matches!(got, Err(Error::RunTerminal { .. })), "{:?}", got);
                        } else {
                            let a = got.unwrap();
                            prop_assert_eq!((a.first_seq, a.next_seq), (actual, actual + n as u64));
                            let e = model.entry(id).or_default();
                            e.events.extend(evs);
                            e.terminal = terminal;
                        }
                    }
                }
            }
            let listed: Vec<RunId> = store.list().unwrap().iter().map(|s| s.run).collect();
            prop_assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
            for (id, m) in &model {
                let log = store.read(*id, 0).unwrap();
                let got: Vec<Vec<u8>> = log.into_iter().map(|e| e.event).collect();
                prop_assert_eq!(&got, &m.events);
                let s = store.summary(*id).unwrap().unwrap();
                prop_assert_eq!(s.next_seq, m.events.len() as u64);
                prop_assert_eq!(s.terminal, m.terminal);
                let r = store.verify(*id).unwrap();
                prop_assert!(r.ok, "{:?}", r);
            }
            let unfinished: Vec<RunId> = store.list_unfinished().unwrap().iter().map(|s| s.run).collect();
            prop_assert_eq!(unfinished, model.iter().filter(|(_, m)| !m.terminal).map(|(id, _)| *id).collect::<Vec<_>>());
            Ok(())
        })?;
    }
}
