//! Seeded PRNG and byte-level mutators: stable Rust has no coverage-guided
//! fuzzer here, so inputs are seed-corpus entries with stacked random
//! mutations, reproducible from `--seed`.

/// xorshift64* — small, fast and good enough to pick mutations.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (zero is remapped: xorshift would stay at 0).
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Values that tend to hit edge cases in length and offset arithmetic.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x1000,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0xd000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
    u64::MAX - 1,
];

/// Mutates `data` in place with 1–8 stacked mutations; `dict` tokens (format
/// keywords) and `other` (another corpus entry, for splicing) widen the reach
/// of byte flips into structured formats.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, dict: &[&[u8]], other: &[u8], max_len: usize) {
    let n = 1 + rng.below(8);
    for _ in 0..n {
        match rng.below(11) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.next_u64() as u8;
            }
            2 if !data.is_empty() => {
                // Overwrite 1, 2, 4 or 8 bytes with an interesting value.
                let w = 1 << rng.below(4);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let v = if rng.one_in(2) { v } else { v.swap_bytes() };
                let i = rng.below(data.len());
                for (k, b) in v.to_le_bytes().iter().take(w).enumerate() {
                    if let Some(d) = data.get_mut(i + k) {
                        *d = *b;
                    }
                }
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                let len = 1 + rng.below((data.len() - i).min(64));
                data.drain(i..i + len);
            }
            4 => {
                let i = rng.below(data.len() + 1);
                let len = 1 + rng.below(32);
                let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                data.splice(i..i, bytes);
            }
            5 if !data.is_empty() => {
                // Duplicate a chunk (repetition finds nesting and length bugs).
                let i = rng.below(data.len());
                let len = 1 + rng.below((data.len() - i).min(256));
                let chunk = data[i..i + len].to_vec();
                let at = rng.below(data.len() + 1);
                let times = 1 + rng.below(4);
                for _ in 0..times {
                    data.splice(at..at, chunk.iter().copied());
                }
            }
            6 | 7 if !dict.is_empty() => {
                let tok = dict[rng.below(dict.len())];
                let i = rng.below(data.len() + 1);
                if rng.one_in(2) || i + tok.len() > data.len() {
                    data.splice(i..i, tok.iter().copied());
                } else {
                    data[i..i + tok.len()].copy_from_slice(tok);
                }
            }
            8 if !other.is_empty() => {
                // Splice: our head, the other's tail.
                let i = rng.below(data.len() + 1);
                let j = rng.below(other.len());
                data.truncate(i);
                data.extend_from_slice(&other[j..]);
            }
            9 if !data.is_empty() => {
                let i = rng.below(data.len());
                data.truncate(i);
            }
            10 if data.len() >= 2 => {
                // Arithmetic on a little-endian u16/u32 (lengths, counts).
                let i = rng.below(data.len() - 1);
                let d = (rng.below(33) as i32 - 16) as u16;
                let v = u16::from_le_bytes([data[i], data[i + 1]]).wrapping_add(d);
                data[i..i + 2].copy_from_slice(&v.to_le_bytes());
            }
            _ => {
                data.push(rng.next_u64() as u8);
            }
        }
    }
    data.truncate(max_len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_is_reproducible_and_bounded() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let (mut x, mut y) = (b"hello world".to_vec(), b"hello world".to_vec());
        for _ in 0..1000 {
            mutate(&mut a, &mut x, &[b"tok"], b"other", 4096);
            mutate(&mut b, &mut y, &[b"tok"], b"other", 4096);
            assert!(x.len() <= 4096);
        }
        assert_eq!(x, y);
    }
}
