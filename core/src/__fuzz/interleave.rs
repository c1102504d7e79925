//! Several ranks' barrier / allgather machines over an honest in-memory store, stepped in an
//! order the fuzzer chooses; each rank runs ahead into its next call as soon as its current one
//! finished, as real ranks do.
//!
//! Invariants checked: no machine fails; no rank finishes call `g` before every rank arrived
//! at `g` (barrier semantics); every allgather delivers every rank's bytes in rank order; the
//! store never holds more than [`KEYS_MAX`] keys; every schedule completes (no deadlock).

use core::fmt::Write as _;

use heapless::{LinearMap, String, Vec};

use crate::collective::{Collective, Key, Reply, Step, StoreOp};

const RANKS_MAX: usize = 5;
const ROUNDS_MAX: usize = 12;
const SEND: usize = 3;
/// The keys one object can hold at once: generation `g - 1` (3 keys) until the last arriver of
/// `g` removed them, `g` (3) and `g + 1`'s slot and counter (2) of ranks that already ran on.
pub const KEYS_MAX: usize = 8;

type Value = Vec<u8, 24>;

struct Store {
    kv: LinearMap<Key, Value, 16>,
}

struct Rank {
    round: usize,
    machine: Option<Collective>,
    gathered: Vec<u8, { RANKS_MAX * SEND }>,
}

fn key(s: &str) -> Key {
    let mut k = Key::new();
    // INVARIANT: machine keys fit `Key` (they are built in one).
    let _ = k.push_str(s);
    k
}

fn send_bytes(rank: usize, round: usize) -> [u8; SEND] {
    [rank as u8, round as u8, 0xAB]
}

fn machine(n: usize, rank: usize, round: usize, gather: bool) -> Collective {
    let r = if gather {
        Collective::allgather("f/", round as u64, rank as u32, n as u32, SEND as u32)
    } else {
        Collective::barrier("f/", round as u64, rank as u32, n as u32)
    };
    r.expect("valid machine arguments")
}

/// Runs one step of rank `r`; returns false when it is blocked (waiting) or done.
fn step(
    store: &mut Store,
    ranks: &mut [Rank],
    arrived: &mut [usize; ROUNDS_MAX],
    r: usize,
    n: usize,
    kinds: u16,
    rounds: usize,
) -> bool {
    let rank = &mut ranks[r];
    if rank.round >= rounds {
        return false;
    }
    let gather = kinds & (1 << rank.round) != 0;
    let m = rank
        .machine
        .get_or_insert_with(|| machine(n, r, rank.round, gather));
    let reply = match m.poll() {
        Step::Finished => unreachable!("finished machines are replaced"),
        Step::Run(StoreOp::WriteSendBytes { key: k, offset }) => {
            let v = match store.kv.get_mut(&key(k)) {
                Some(v) => v,
                None => {
                    let _ = store.kv.insert(key(k), Value::new());
                    store.kv.get_mut(&key(k)).expect("just inserted")
                }
            };
            let end = offset as usize + SEND;
            if v.len() < end {
                v.resize(end, 0).expect("value fits");
            }
            v[offset as usize..end].copy_from_slice(&send_bytes(r, rank.round));
            Reply::Done
        }
        Step::Run(StoreOp::Add { key: k, delta }) => {
            let old: i64 = store
                .kv
                .get(&key(k))
                .and_then(|v| core::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            let new = old + delta;
            let mut text: String<24> = String::new();
            let _ = write!(text, "{new}");
            let _ = store
                .kv
                .insert(key(k), Vec::from_slice(text.as_bytes()).expect("fits"));
            arrived[rank.round] += 1;
            Reply::Added(new)
        }
        Step::Run(StoreOp::Set { key: k, value }) => {
            let _ = store
                .kv
                .insert(key(k), Vec::from_slice(value).expect("fits"));
            Reply::Done
        }
        Step::Run(StoreOp::WaitGet { key: k }) => match store.kv.get(&key(k)) {
            Some(v) => Reply::Value(v.len()),
            None => return false,
        },
        Step::Run(StoreOp::GetGathered { key: k }) => {
            let v = store.kv.get(&key(k)).cloned().unwrap_or_default();
            rank.gathered = Vec::from_slice(&v).unwrap_or_default();
            Reply::Value(v.len())
        }
        Step::Run(StoreOp::Remove { key: k }) => {
            let _ = store.kv.remove(&key(k));
            Reply::Done
        }
    };
    m.complete(reply)
        .expect("an honest store never fails a machine");
    assert!(
        store.kv.len() <= KEYS_MAX,
        "the store grew to {} keys",
        store.kv.len()
    );
    if m.is_finished() {
        assert_eq!(
            arrived[rank.round], n,
            "rank {r} left call {} before every rank arrived",
            rank.round
        );
        if gather {
            for (from, chunk) in rank.gathered.chunks(SEND).enumerate() {
                assert_eq!(chunk, send_bytes(from, rank.round), "gathered bytes");
            }
            assert_eq!(rank.gathered.len(), n * SEND);
        }
        rank.machine = None;
        rank.round += 1;
    }
    true
}

/// The fuzz entry point: `[ranks, rounds, kinds lo, kinds hi, schedule...]`.
pub fn collective_interleaved(data: &[u8]) {
    let [a, b, c, d, schedule @ ..] = data else {
        return;
    };
    let n = 2 + usize::from(*a) % (RANKS_MAX - 1);
    let rounds = 1 + usize::from(*b) % ROUNDS_MAX;
    let kinds = u16::from_le_bytes([*c, *d]);
    let mut store = Store {
        kv: LinearMap::new(),
    };
    let mut ranks: Vec<Rank, RANKS_MAX> = Vec::new();
    for _ in 0..n {
        let _ = ranks.push(Rank {
            round: 0,
            machine: None,
            gathered: Vec::new(),
        });
    }
    let mut arrived = [0usize; ROUNDS_MAX];
    for s in schedule {
        step(
            &mut store,
            &mut ranks,
            &mut arrived,
            usize::from(*s) % n,
            n,
            kinds,
            rounds,
        );
    }
    // Finish round-robin: every schedule must be completable.
    loop {
        let mut progressed = false;
        for r in 0..n {
            while step(&mut store, &mut ranks, &mut arrived, r, n, kinds, rounds) {
                progressed = true;
            }
        }
        if ranks.iter().all(|k| k.round >= rounds) {
            break;
        }
        assert!(progressed, "deadlock: every unfinished rank waits");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_schedules_hold_the_invariants() {
        let mut seed = 0x1234_5678_u64;
        let mut data = [0u8; 300];
        for _ in 0..500 {
            for b in &mut data {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                *b = (seed >> 56) as u8;
            }
            collective_interleaved(&data);
        }
        collective_interleaved(&[3, 11, 0xAA, 0x0F]);
        collective_interleaved(&[]);
    }
}
