//! The stable-toolchain driver for the fuzz targets: each crate's `tests/fuzz_props.rs` includes
//! this file (`#[path]`) and runs every target it owns through [`run`], so CI exercises the same
//! functions `cargo +nightly fuzz run` does, without libfuzzer or a nightly compiler.
//!
//! It is a small mutational fuzzer with a fixed seed: every seed input as it is, then a fixed
//! number of cases, each either fresh random bytes or a seed mutated a few times (bit flips,
//! random bytes, inserted and deleted runs, splices of two seeds). Structured targets read their
//! input as a stream of choices, so random bytes already reach past their first check. A case
//! that panics is printed in hex before the panic goes on, to be kept as a regression test.
//!
//! `NODELESS_FUZZ_CASES` (cases per target) and `NODELESS_FUZZ_SEED` change a run; the defaults
//! keep every crate's run to a few seconds on a two-core machine.

#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

/// A case budget is also a time budget: a slow machine runs fewer cases rather than hold CI.
const TIME_LIMIT: Duration = Duration::from_secs(8);

/// xorshift64*: enough randomness for mutation, and the same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// FNV-1a of the target's name: each target its own fixed sequence.
fn name_seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Mutate `input` a few times, borrowing from `seeds` for splices.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[&[u8]], max_len: usize) {
    for _ in 0..1 + rng.below(6) {
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(input.len() + 1);
                let n = 1 + rng.below(16);
                let run = rng.bytes(n);
                input.splice(at..at, run);
            }
            3 if !input.is_empty() => {
                let at = rng.below(input.len());
                let n = 1 + rng.below((input.len() - at).min(32));
                input.drain(at..at + n);
            }
            4 if !input.is_empty() => {
                // Repeat a run of the input itself (a header, a chunk, a label).
                let at = rng.below(input.len());
                let n = 1 + rng.below((input.len() - at).min(64));
                let run = input[at..at + n].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, run);
            }
            5 if !seeds.is_empty() => {
                let other = seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - from);
                    let at = rng.below(input.len() + 1);
                    input.splice(at..at, other[from..from + n].iter().copied());
                }
            }
            _ if !input.is_empty() => {
                // Interesting values where lengths and counts live.
                let i = rng.below(input.len());
                input[i] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'\r', b'\n', b'.', b'/'][rng.below(10)];
            }
            _ => {}
        }
    }
    input.truncate(max_len);
}

/// Run `target` on each seed, then on `cases` generated inputs of at most `max_len` bytes (or
/// until [`TIME_LIMIT`]); returns how many inputs it ran.
pub fn run(name: &str, cases: usize, max_len: usize, seeds: &[&[u8]], target: impl Fn(&[u8])) -> usize {
    let cases = env_or("NODELESS_FUZZ_CASES", cases);
    let seed = env_or("NODELESS_FUZZ_SEED", 0u64) ^ name_seed(name);
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut ran = 0;
    let one = |input: &[u8], ran: &mut usize| {
        *ran += 1;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(input))) {
            eprintln!(
                "fuzz target {name} failed (seed {seed:#x}) on {} bytes: {}",
                input.len(),
                hex(input)
            );
            resume_unwind(panic);
        }
    };
    for s in seeds {
        one(s, &mut ran);
    }
    let mut input = Vec::with_capacity(max_len);
    for _ in 0..cases {
        if started.elapsed() > TIME_LIMIT {
            break;
        }
        input.clear();
        if seeds.is_empty() || rng.below(4) == 0 {
            let n = rng.below(max_len + 1);
            input.extend(rng.bytes(n));
        } else {
            input.extend_from_slice(seeds[rng.below(seeds.len())]);
            mutate(&mut rng, &mut input, seeds, max_len);
        }
        one(&input, &mut ran);
    }
    eprintln!("fuzz target {name}: {ran} inputs in {:?}", started.elapsed());
    ran
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (a kept failing input).
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
