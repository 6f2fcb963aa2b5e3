//! PNG plots of `bench-e2e` results (plotters, bitmap backend; text through fontconfig, e.g.
//! `DejaVu Sans` from Debian's `fonts-dejavu-core`).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::{Samples, median};

/// One series: a label and the samples it plots (median per service count).
pub struct Series<'a> {
    pub label: String,
    pub samples: &'a Samples,
    pub path: &'a str,
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(127, 127, 127),
        RGBColor(255, 127, 14),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(23, 190, 207),
    ];
    C[i % C.len()]
}

/// A line chart of medians against the number of services (log x, log y when `log_y`).
pub fn vs_services(
    file: &Path,
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    ns: &[u32],
    log_y: bool,
) -> Result<()> {
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            ns.iter()
                .filter_map(|&n| {
                    s.samples
                        .get(s.path, n)
                        .map(|v| (f64::from(n), median(v)))
                        .filter(|(_, y)| *y > 0.0)
                })
                .collect()
        })
        .collect();
    let ys = points.iter().flatten().map(|p| p.1);
    let (lo, hi) = ys.fold((f64::INFINITY, 0.0f64), |(a, b), y| (a.min(y), b.max(y)));
    if !lo.is_finite() {
        return Ok(());
    }
    let x_max = f64::from(ns.iter().copied().max().unwrap_or(1)) * 2.0;
    let root = BitMapBackend::new(file, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80);
    macro_rules! body {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("services (log scale)")
                .y_desc(y_label)
                .label_style(("sans-serif", 15))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            for (i, (s, pts)) in series.iter().zip(&points).enumerate() {
                let c = color(i);
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(3)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                    });
                chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(|e| anyhow!("{e}"))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }};
    }
    if log_y {
        body!(
            builder
                .build_cartesian_2d(
                    (0.5f64..x_max).log_scale(),
                    (lo / 2.0..hi * 2.0).log_scale()
                )
                .map_err(|e| anyhow!("{e}"))?
        );
    } else {
        body!(
            builder
                .build_cartesian_2d((0.5f64..x_max).log_scale(), 0.0..hi * 1.15)
                .map_err(|e| anyhow!("{e}"))?
        );
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
