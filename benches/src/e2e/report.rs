//! Statistics and markdown tables of `bench-e2e`.

use std::{collections::BTreeMap, fmt::Write as _};

/// Samples of one workload: (path, services) → one value per run, in run order.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    pub values: BTreeMap<(String, u32), Vec<f64>>,
}

impl Samples {
    pub fn push(&mut self, path: &str, n: u32, v: f64) {
        self.values.entry((path.to_owned(), n)).or_default().push(v);
    }

    pub fn get(&self, path: &str, n: u32) -> Option<&[f64]> {
        self.values
            .get(&(path.to_owned(), n))
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }
}

/// Median (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[m]
    } else {
        f64::midpoint(s[m - 1], s[m])
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// A number with 3 significant digits and k/M suffixes.
pub fn human(x: f64) -> String {
    let (v, suf) = if x.abs() >= 1e6 {
        (x / 1e6, "M")
    } else if x.abs() >= 1e4 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if v.abs() >= 100.0 {
        format!("{v:.0}{suf}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}{suf}")
    } else {
        format!("{v:.2}{suf}")
    }
}

fn cell(v: &[f64]) -> String {
    let (lo, hi) = min_max(v);
    format!("{} ({}–{})", human(median(v)), human(lo), human(hi))
}

/// Ratio onehop / `base` computed run by run (run i of onehop against run i of the baseline, measured in
/// the same pass), as median (min–max).
pub fn ratios(samples: &Samples, base: &str, n: u32) -> Option<Vec<f64>> {
    ratios_of(samples, "onehop", base, n)
}

/// Ratio `ours` / `base` computed run by run, as [`ratios`].
pub fn ratios_of(samples: &Samples, ours: &str, base: &str, n: u32) -> Option<Vec<f64>> {
    let ours = samples.get(ours, n)?;
    let theirs = samples.get(base, n)?;
    let r: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .filter(|(_, t)| **t > 0.0)
        .map(|(o, t)| o / t)
        .collect();
    (!r.is_empty()).then_some(r)
}

/// Whether `path` is one of onehop's modes (`onehop`, `onehop-direct`): the numerators of the
/// ratio rows.
pub fn is_onehop(path: &str) -> bool {
    path == "onehop" || path.starts_with("onehop-")
}

/// The ratio rows of a table over `paths`: every onehop mode against every baseline, then
/// each other onehop mode against full NAT (`onehop`).
fn ratio_rows<'a>(paths: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let ours: Vec<&str> = paths.iter().copied().filter(|p| is_onehop(p)).collect();
    let mut rows = Vec::new();
    for o in &ours {
        for base in paths.iter().filter(|p| !is_onehop(p)) {
            rows.push((*o, *base));
        }
    }
    if ours.contains(&"onehop") {
        rows.extend(
            ours.iter()
                .filter(|o| **o != "onehop")
                .map(|o| (*o, "onehop")),
        );
    }
    rows
}

/// A table: one row per path, one column per service count, then the onehop/baseline ratios.
pub fn table(
    s: &Samples,
    paths: &[&str],
    ns: &[u32],
    unit: &str,
    notes: &BTreeMap<(String, u32), String>,
) -> String {
    let mut t = String::new();
    let _ = write!(t, "| path ({unit}) |");
    for n in ns {
        let _ = write!(t, " N = {} |", thousands(*n));
    }
    t.push_str("\n|---|");
    for _ in ns {
        t.push_str("---|");
    }
    t.push('\n');
    for p in paths {
        let _ = write!(t, "| {p} |");
        for &n in ns {
            match (s.get(p, n), notes.get(&((*p).to_owned(), n))) {
                (Some(v), _) => {
                    let _ = write!(t, " {} |", cell(v));
                }
                (None, Some(note)) => {
                    let _ = write!(t, " n/a: {note} |");
                }
                (None, None) => t.push_str(" – |"),
            }
        }
        t.push('\n');
    }
    for (ours, base) in ratio_rows(paths) {
        let _ = write!(t, "| {ours} / {base} |");
        for &n in ns {
            match ratios_of(s, ours, base, n) {
                Some(r) => {
                    let (lo, hi) = min_max(&r);
                    let _ = write!(t, " {:.2}× ({lo:.2}–{hi:.2}) |", median(&r));
                }
                None => t.push_str(" – |"),
            }
        }
        t.push('\n');
    }
    t
}

/// `10000` → `10,000`.
pub fn thousands(n: u32) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ratios_and_tables() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        let mut s = Samples::default();
        for (a, b) in [(200.0, 100.0), (300.0, 100.0), (100.0, 100.0)] {
            s.push("onehop", 1, a);
            s.push("iptables", 1, b);
        }
        let r = ratios(&s, "iptables", 1).unwrap();
        assert_eq!(r, vec![2.0, 3.0, 1.0], "pair by pair, in run order");
        let t = table(
            &s,
            &["onehop", "iptables"],
            &[1, 1000],
            "x",
            &BTreeMap::new(),
        );
        assert!(t.contains("| onehop | 200 (100–300) | – |"), "{t}");
        assert!(
            t.contains("| onehop / iptables | 2.00× (1.00–3.00) | – |"),
            "{t}"
        );
        for (a, b) in [(50.0, 100.0), (600.0, 100.0), (50.0, 100.0)] {
            s.push("onehop-direct", 1, a);
            s.push("routing", 1, b);
        }
        let t = table(
            &s,
            &["onehop", "onehop-direct", "iptables", "routing"],
            &[1],
            "x",
            &BTreeMap::new(),
        );
        for row in [
            "| onehop / iptables | 2.00× (1.00–3.00) |",
            "| onehop / routing | 2.00× (1.00–3.00) |",
            "| onehop-direct / iptables | 0.50× (0.50–6.00) |",
            "| onehop-direct / routing | 0.50× (0.50–6.00) |",
            "| onehop-direct / onehop | 0.50× (0.25–2.00) |",
        ] {
            assert!(t.contains(row), "{row} missing in\n{t}");
        }
        assert!(!t.contains("| onehop / onehop-direct"), "{t}");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(human(123_456.0), "123k");
    }
}
