//! Seeded mutations of fuzz inputs for runs without libFuzzer (the stable replay in CI, and
//! mutated requests sent to a real server): bit flips, byte changes, truncations, splices
//! from another input, "interesting" values written in, swaps.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A seeded source of mutations: the same seed, the same inputs.
pub struct Mutator(StdRng);

impl Mutator {
    pub fn seeded(seed: u64) -> Self {
        Mutator(StdRng::seed_from_u64(seed))
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n.max(1))
    }

    fn byte(&mut self) -> u8 {
        self.0.random()
    }
}

const INTERESTING: [&[u8]; 8] = [&[0xff; 8], &[0; 8], &[0x7f, 0xff, 0xff, 0xff], &[0x80, 0, 0, 0], &[0xff, 0xff, 0xff, 0x7f], b"NaN", b"-1", b"1e309"];

/// `input` changed in one to four places (`other` lends bytes for splices).
pub fn mutate(input: &[u8], other: &[u8], rng: &mut Mutator) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.byte();
            }
            2 if !data.is_empty() => data.truncate(rng.below(data.len())),
            3 if !other.is_empty() => {
                let (at, from) = (rng.below(data.len() + 1), rng.below(other.len()));
                let take = rng.below(other.len() - from + 1);
                data.splice(at..at, other[from..from + take].iter().copied());
            }
            4 => {
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let at = rng.below(data.len() + 1);
                let end = (at + value.len()).min(data.len());
                data.splice(at..end, value.iter().copied());
            }
            _ if !data.is_empty() => {
                let (a, b) = (rng.below(data.len()), rng.below(data.len()));
                data.swap(a, b);
            }
            _ => data.push(rng.byte()),
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_mutations() {
        let (mut a, mut b) = (Mutator::seeded(7), Mutator::seeded(7));
        for _ in 0..50 {
            assert_eq!(mutate(b"some input bytes", b"other", &mut a), mutate(b"some input bytes", b"other", &mut b));
        }
    }
}
