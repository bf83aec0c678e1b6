//! The statistics of `lab ab`: Wilson score intervals for a failure rate
//! and Fisher's exact test (two-sided) on a 2×2 table, with no dependency
//! beyond `f64::ln`. Small and checked against R's `fisher.test` and
//! exact (rational) values in the tests below.

/// z for a two-sided 95% interval (the 0.975 quantile of the normal).
pub const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval of `k` failures in `n` attempts at `z`:
/// (low, high), within [0, 1]; (0, 1) when `n` is 0 (nothing known).
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n_f = n as f64;
    let p = k as f64 / n_f;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n_f);
    let half = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt();
    let denom = 1.0 + z2 / n_f;
    let low = if k == 0 {
        0.0
    } else {
        ((centre - half) / denom).max(0.0)
    };
    let high = if k == n {
        1.0
    } else {
        ((centre + half) / denom).min(1.0)
    };
    (low, high)
}

/// ln(i!) for i in 0..=n.
fn ln_factorials(n: u64) -> Vec<f64> {
    let mut out = Vec::with_capacity(n as usize + 1);
    let mut acc = 0.0;
    out.push(0.0);
    for i in 1..=n {
        acc += (i as f64).ln();
        out.push(acc);
    }
    out
}

/// The two-sided p-value of Fisher's exact test of the table
/// `[[a, b], [c, d]]` (rows: A and B; columns: failures and passes): the
/// probability, under equal rates and the observed margins, of a table at
/// most as likely as the observed one. As R's `fisher.test`, tables whose
/// probability is within a relative 1e-7 of the observed one count as
/// "as likely". 1 when a margin is empty.
pub fn fisher_two_sided(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let n = a + b + c + d;
    let row_a = a + b;
    let row_b = c + d;
    let col = a + c;
    if row_a == 0 || row_b == 0 || col == 0 || col == n {
        return 1.0;
    }
    let lf = ln_factorials(n);
    let ln_choose = |n: u64, k: u64| lf[n as usize] - lf[k as usize] - lf[(n - k) as usize];
    let ln_total = ln_choose(n, col);
    // P(A's failures = x) under the hypergeometric law.
    let ln_p = |x: u64| ln_choose(row_a, x) + ln_choose(row_b, col - x) - ln_total;
    let observed = ln_p(a);
    let low = col.saturating_sub(row_b);
    let high = col.min(row_a);
    let bound = observed + (1.0f64 + 1e-7).ln();
    let p: f64 = (low..=high)
        .map(ln_p)
        .filter(|&l| l <= bound)
        .map(f64::exp)
        .sum();
    p.min(1.0)
}

/// The smallest number of failures in `n_a` attempts of A that, against
/// none in `n_b` attempts of B, Fisher's test calls significant at
/// `alpha`; `None` when even `n_a` failures would not be. What "same"
/// means with this few attempts: a rate that drops from fewer than
/// this many in `n_a` to zero can go unnoticed.
pub fn min_detectable(n_a: u64, n_b: u64, alpha: f64) -> Option<u64> {
    (1..=n_a).find(|&k| fisher_two_sided(k, n_a - k, 0, n_b) < alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs().max(1e-300)
    }

    #[test]
    fn fisher_matches_r() {
        // fisher.test(matrix(c(9,0,1,10), 2))$p.value = 0.0001190760
        let p = fisher_two_sided(9, 1, 0, 10);
        assert!(close(p, 1.190_760e-4, 1e-6), "{p}");
        // fisher.test(matrix(c(3,1,1,3), 2))$p.value = 0.4857143
        let p = fisher_two_sided(3, 1, 1, 3);
        assert!(close(p, 0.485_714_3, 1e-6), "{p}");
        // fisher.test(matrix(c(1,11,9,3), 2))$p.value = 0.002759456
        let p = fisher_two_sided(1, 9, 11, 3);
        assert!(close(p, 0.002_759_456, 1e-6), "{p}");
        // fisher.test(matrix(c(10,0,0,10), 2))$p.value = 1.082509e-05
        let p = fisher_two_sided(10, 0, 0, 10);
        assert!(close(p, 1.082_509e-5, 1e-5), "{p}");
        // fisher.test(matrix(c(2,3,8,7), 2))$p.value = 1 (within rounding)
        let p = fisher_two_sided(2, 8, 3, 7);
        assert!(close(p, 1.0, 1e-9), "{p}");
        // fisher.test(matrix(c(5,1,45,49), 2))$p.value = 0.2044016 (5/50 vs 1/50)
        let p = fisher_two_sided(5, 45, 1, 49);
        assert!(close(p, 0.204_401_6, 1e-6), "{p}");
    }

    #[test]
    fn fisher_is_symmetric_and_degenerate_tables_are_one() {
        for (a, b, c, d) in [(9, 1, 0, 10), (1, 9, 11, 3), (4, 16, 0, 20)] {
            let p = fisher_two_sided(a, b, c, d);
            assert!(close(fisher_two_sided(c, d, a, b), p, 1e-12));
            assert!(close(fisher_two_sided(b, a, d, c), p, 1e-12));
            assert!(close(fisher_two_sided(a, c, b, d), p, 1e-12));
        }
        assert_eq!(fisher_two_sided(0, 10, 0, 10), 1.0);
        assert_eq!(fisher_two_sided(10, 0, 10, 0), 1.0);
        assert_eq!(fisher_two_sided(0, 0, 3, 4), 1.0);
        assert_eq!(fisher_two_sided(0, 0, 0, 0), 1.0);
        // Identical rows are as likely as can be.
        assert!(close(fisher_two_sided(3, 7, 3, 7), 1.0, 1e-9));
    }

    #[test]
    fn fisher_handles_many_attempts() {
        // 500/1000 against 450/1000: 0.02820357 (exact, two-sided).
        let p = fisher_two_sided(500, 500, 450, 550);
        assert!(close(p, 0.028_203_57, 1e-5), "{p}");
    }

    #[test]
    fn wilson_matches_known_bounds() {
        // binom::binom.confint(x, n, method = "wilson")$lower/upper
        let (lo, hi) = wilson(0, 10, Z95);
        assert_eq!(lo, 0.0);
        assert!(close(hi, 0.277_532_8, 1e-6), "{hi}");
        let (lo, hi) = wilson(5, 10, Z95);
        assert!(close(lo, 0.236_593_3, 1e-6) && close(hi, 0.763_406_7, 1e-6));
        let (lo, hi) = wilson(10, 10, Z95);
        assert!(close(lo, 0.722_467_2, 1e-6) && hi == 1.0);
        let (lo, hi) = wilson(1, 20, Z95);
        assert!(close(lo, 0.008_881_4, 1e-5) && close(hi, 0.236_131_2, 1e-6));
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }

    #[test]
    fn min_detectable_is_the_first_significant_count() {
        // 5/10 vs 0/10: p = 0.0325; 4/10 vs 0/10: p = 0.087.
        assert_eq!(min_detectable(10, 10, 0.05), Some(5));
        assert_eq!(min_detectable(3, 3, 0.05), None);
        assert_eq!(min_detectable(0, 10, 0.05), None);
    }
}
