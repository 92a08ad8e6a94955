//! Ring invariants under random interleavings of one producer, gating consumers (which may crash and restart)
//! and lossy consumers.

use proptest::prelude::*;
use shm_protocol::layout::{ConsumerMode, Geometry, RegionSpec, RingKind, RingSpec};
use shm_protocol::{Region, RingError, StartAt};

#[derive(Debug, Clone)]
enum Op {
    Produce,
    Read(usize),
    Commit(usize),
    Restart(usize),
    Lossy(usize),
}

fn ops(gating: usize, lossy: usize) -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        4 => Just(Op::Produce),
        3 => (0..gating).prop_map(Op::Read),
        2 => (0..gating).prop_map(Op::Commit),
        1 => (0..gating).prop_map(Op::Restart),
        2 => (0..lossy.max(1)).prop_map(Op::Lossy),
    ];
    prop::collection::vec(op, 1..400)
}

fn region(slots: u32, consumers: u32) -> Region {
    Region::create(&RegionSpec {
        geometry: Geometry::default(),
        rings: vec![RingSpec { kind: RingKind::Bytes, slot_count: slots, slot_bytes: 64, max_consumers: consumers }],
        app_bytes: 0,
    })
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn interleavings_keep_the_invariants(
        slots in 2u32..7,
        (gating, lossy, script) in (1usize..4, 0usize..3)
            .prop_flat_map(|(g, l)| (Just(g), Just(l), ops(g, l))),
    ) {
        let region = region(slots, (gating + lossy) as u32);
        let ring = region.ring(0).unwrap();
        for i in 0..gating {
            ring.activate_consumer(i, ConsumerMode::Gating, StartAt::Seq(0)).unwrap();
        }
        for j in 0..lossy {
            ring.activate_consumer(gating + j, ConsumerMode::Lossy, StartAt::Seq(0)).unwrap();
        }
        let mut producer = ring.producer().unwrap();
        let mut cons: Vec<_> = (0..gating).map(|i| ring.consumer(i).unwrap()).collect();
        let mut lossy_c: Vec<_> = (0..lossy).map(|j| ring.consumer(gating + j).unwrap()).collect();
        // Per gating consumer: items read but not committed, and items whose effect was applied (on commit).
        let mut pending: Vec<Vec<u64>> = vec![vec![]; gating];
        let mut applied: Vec<Vec<u64>> = vec![vec![]; gating];
        let mut lossy_last: Vec<Option<u64>> = vec![None; lossy];
        let mut lossy_accounted: Vec<u64> = vec![0; lossy];

        for op in script {
            match op {
                Op::Produce => {
                    let p = producer.next_seq();
                    if let Some(mut s) = producer.try_claim() {
                        // No slot is reused before every gating consumer passed it.
                        for c in &cons {
                            prop_assert!(p < c.committed() + u64::from(slots), "slot of {p} reused while a consumer is at {}", c.committed());
                        }
                        s.bytes_mut()[..8].copy_from_slice(&p.to_le_bytes());
                        s.publish();
                    } else {
                        let min = cons.iter().map(|c| c.committed()).min().unwrap();
                        prop_assert_eq!(p, min + u64::from(slots), "claim refused though a slot was free");
                    }
                }
                Op::Read(i) => {
                    if let Some(r) = cons[i].try_next().unwrap() {
                        let v = u64::from_le_bytes(r.bytes().unwrap()[..8].try_into().unwrap());
                        prop_assert_eq!(v, r.seq());
                        pending[i].push(v);
                    }
                }
                Op::Commit(i) => {
                    cons[i].commit_read();
                    applied[i].append(&mut pending[i]);
                }
                Op::Restart(i) => {
                    // A crash: what was read but not committed is forgotten, and re-read after the restart.
                    pending[i].clear();
                    cons[i] = ring.consumer(i).unwrap();
                }
                Op::Lossy(j) if j < lossy => {
                    match lossy_c[j].try_next() {
                        Ok(Some(r)) => {
                            let mut b = [0u8; 8];
                            if r.copy_to(0, &mut b).unwrap() {
                                prop_assert_eq!(u64::from_le_bytes(b), r.seq());
                                prop_assert!(lossy_last[j].is_none_or(|l| r.seq() > l));
                                lossy_last[j] = Some(r.seq());
                            }
                            lossy_accounted[j] += 1;
                            lossy_c[j].commit_read();
                        }
                        Ok(None) => {}
                        Err(RingError::Overrun { missed }) => {
                            prop_assert!(missed > 0);
                            lossy_accounted[j] += missed;
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Lossy(_) => {}
            }
        }
        // Every gating consumer applied a gap-free, duplicate-free prefix of the published sequence.
        for a in &applied {
            let want: Vec<u64> = (0..a.len() as u64).collect();
            prop_assert_eq!(a, &want);
        }
        // Lossy consumers account for every sequence they passed: seen or reported missed.
        for (j, c) in lossy_c.iter().enumerate() {
            prop_assert_eq!(lossy_accounted[j], c.next_seq());
        }
    }
}

#[test]
fn threads_hand_off_through_futexes() {
    const N: u64 = 200_000;
    let region = region(8, 3);
    let ring = region.ring(0).unwrap();
    ring.activate_consumer(0, ConsumerMode::Gating, StartAt::Seq(0)).unwrap();
    ring.activate_consumer(1, ConsumerMode::Gating, StartAt::Seq(0)).unwrap();
    ring.activate_consumer(2, ConsumerMode::Lossy, StartAt::Seq(0)).unwrap();
    std::thread::scope(|s| {
        for i in 0..2 {
            s.spawn(move || {
                let mut c = ring.consumer(i).unwrap();
                for want in 0..N {
                    let r = c.next(Some(std::time::Duration::from_secs(20))).unwrap();
                    assert_eq!(u64::from_le_bytes(r.bytes().unwrap()[..8].try_into().unwrap()), want);
                    c.commit(want + 1);
                }
            });
        }
        let lossy = s.spawn(move || {
            let mut c = ring.consumer(2).unwrap();
            let (mut seen, mut missed) = (0u64, 0u64);
            while seen + missed < N {
                match c.next(Some(std::time::Duration::from_secs(20))) {
                    Ok(r) => {
                        let mut b = [0u8; 8];
                        if r.copy_to(0, &mut b).unwrap() {
                            assert_eq!(u64::from_le_bytes(b), r.seq());
                        }
                        seen += 1;
                    }
                    Err(RingError::Overrun { missed: m }) => missed += m,
                    Err(e) => panic!("{e}"),
                }
            }
            (seen, missed)
        });
        let mut p = ring.producer().unwrap();
        for i in 0..N {
            let mut s = p.claim(Some(std::time::Duration::from_secs(20))).unwrap();
            s.bytes_mut()[..8].copy_from_slice(&i.to_le_bytes());
            s.publish();
        }
        let (seen, missed) = lossy.join().unwrap();
        assert_eq!(seen + missed, N);
    });
}

#[test]
fn wrong_layout_version_is_refused_naming_both() {
    let region = region(4, 1);
    // SAFETY: offset 8 is the header's layout_version (asserted in layout.rs); nobody else maps this region.
    unsafe { region.base().add(8).cast::<u32>().write_unaligned(99) };
    let fd = region.fd().try_clone_to_owned().unwrap();
    let e = Region::attach(fd, shm_protocol::Access::ReadWrite).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("99") && msg.contains(&shm_protocol::layout::LAYOUT_VERSION.to_string()), "{msg}");
}
