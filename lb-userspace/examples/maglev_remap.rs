//! How much of the flow-hash space one backend joining a service moves to
//! another backend, with the fixed table size (`plan::maglev::table_size`)
//! and with the sizes that followed the backend count before (`even_size`).
//!
//! ```sh
//! cargo run -p lb-userspace --example maglev_remap -- [MAX_N [SETS [SIZE [MIN_N]]]]
//! ```
//!
//! For every n of `MIN_N..=MAX_N` (default 1..=200), SETS (default 20) random backend
//! sets of n + 1 identities; each set is built with n of them and with all
//! n + 1 (the newcomer taken at random), and the share of hashes whose
//! backend changed is measured: slot by slot when both tables have the same
//! size (exact, as the data path takes `hash % size`), else over 200,000
//! hashes. SIZE is the configured size (default 1021). Prints one line per
//! n (`shares` is the remap in units of the ideal `1 / (n + 1)`) and a
//! summary.

#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "a measurement: counts and table sizes far below 2^52, hashes reduced mod a size"
)]

use std::net::Ipv4Addr;

use lb_userspace::plan::maglev::{self, MaglevSize};

/// Largest deviation of a backend's share from the mean, relative.
fn unevenness(table: &[u32]) -> f64 {
    let shares = maglev::shares(table);
    let mean = table.len() as f64 / shares.len() as f64;
    shares
        .values()
        .map(|&c| (c as f64 - mean).abs() / mean)
        .fold(0.0, f64::max)
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> Result<u64, String> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse()
                .map_err(|_| format!("argument {}: {a:?} is not a number", i + 1))
        })
    };
    let max_n = usize::try_from(arg(0, 200)?).map_err(|e| e.to_string())?;
    let sets = arg(1, 20)?;
    let size = MaglevSize::new(u32::try_from(arg(2, 1021)?).map_err(|e| e.to_string())?)?;
    let min_n = usize::try_from(arg(3, 1)?)
        .map_err(|e| e.to_string())?
        .max(1);
    println!(
        "{:>4} {:>13} {:>8} {:>8} {:>8} {:>7} {:>9} {:>13} {:>8}",
        "n", "fixed M", "ideal", "mean", "max", "shares", "uneven", "old M", "old mean"
    );
    let (mut worst, mut worst_n) = (0.0f64, 0);
    let mut seed = 0u64;
    for n in min_n..=max_n {
        let (mut sum, mut max, mut old_sum, mut uneven) = (0.0, 0.0f64, 0.0, 0.0f64);
        for _ in 0..sets {
            let mut keys: Vec<String> = Vec::new();
            while keys.len() < n + 1 {
                seed += 1;
                let h = maglev::stable_hash(0x7365_7473, &seed.to_le_bytes());
                let key = maglev::identity(Ipv4Addr::from((h >> 32) as u32), (h as u16).max(1));
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            // Ids by position: the newcomer is the last, wherever it sorts.
            let all: Vec<(String, u32)> = keys.into_iter().zip(0..).collect();
            let some = &all[..n];
            let (before, after) = (maglev::build(some, size), maglev::build(&all, size));
            let r = maglev::remapped(&before, &after);
            sum += r;
            max = max.max(r);
            uneven = uneven.max(unevenness(&after));
            let old = |k: usize| MaglevSize::new(maglev::even_size(k)).unwrap_or_default();
            old_sum += maglev::remapped(
                &maglev::build(some, old(n)),
                &maglev::build(&all, old(n + 1)),
            );
        }
        let ideal = 1.0 / (n + 1) as f64;
        let same = maglev::table_size(size, n) == maglev::table_size(size, n + 1);
        if same && max / ideal > worst {
            (worst, worst_n) = (max / ideal, n);
        }
        println!(
            "{n:>4} {:>13} {ideal:>8.4} {:>8.4} {max:>8.4} {:>7.2} {:>8.1}% {:>13} {:>8.4}",
            format!(
                "{}->{}",
                maglev::table_size(size, n),
                maglev::table_size(size, n + 1)
            ),
            sum / sets as f64,
            max / ideal,
            uneven * 100.0,
            format!("{}->{}", maglev::even_size(n), maglev::even_size(n + 1)),
            old_sum / sets as f64,
        );
    }
    println!(
        "worst where the fixed size holds: {worst:.2} x 1/(n+1) at n = {worst_n} ({sets} sets each)"
    );
    Ok(())
}
