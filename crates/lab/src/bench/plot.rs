//! The benchmark's three plots as SVG: energy per request by policy, the latency CDF with the
//! SLO marked, and energy against quality. SVG so they diff in review and render on GitHub.

use plotters::prelude::*;

use super::summary::{Group, SUITE};
use super::{Mode, Row, Strategy};

fn color(p: Strategy) -> RGBColor {
    match p {
        Strategy::Static => RGBColor(117, 117, 117),
        Strategy::Greedy => RGBColor(239, 108, 0),
        Strategy::Joule => RGBColor(46, 125, 50),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The (workflow, tier) pairs of a mode, in order, with a short label each.
fn cases(groups: &[&Group]) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    let tiers: std::collections::BTreeSet<&str> = groups.iter().map(|g| g.tier.as_str()).collect();
    for g in groups {
        if out.iter().any(|(w, t, _)| *w == g.workflow && *t == g.tier) {
            continue;
        }
        let short = g.workflow.strip_prefix("bench-").unwrap_or(&g.workflow);
        let label = if tiers.len() > 1 {
            format!("{short} ({})", g.tier)
        } else {
            short.to_string()
        };
        out.push((g.workflow.clone(), g.tier.clone(), label));
    }
    out
}

/// The top of an energy axis: the largest mean with room above it.
fn energy_axis(groups: &[&Group]) -> f64 {
    groups
        .iter()
        .map(|g| g.energy_j_per_request)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15
}

/// Mean energy per request: a bar per policy for every workflow and the whole suite.
pub fn energy(groups: &[Group], mode: Mode) -> Result<String, String> {
    let of: Vec<&Group> = groups.iter().filter(|g| g.mode == mode).collect();
    let cases = cases(&of);
    let policies: Vec<Strategy> = Strategy::ALL
        .into_iter()
        .filter(|p| of.iter().any(|g| g.policy == *p))
        .collect();
    let top = energy_axis(&of);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let method = of
            .first()
            .and_then(|g| g.energy_method)
            .map_or("none", |m| m.as_str());
        let title = format!("energy per request by policy ({}, {method})", mode.as_str());
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..cases.len() as f64 - 0.5, 0.0..top)
            .map_err(err)?;
        let labels: Vec<String> = cases.iter().map(|c| c.2.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(cases.len().max(1))
            .x_label_formatter(&|x| {
                let k = x.round();
                if (x - k).abs() < 1e-6 && k >= 0.0 && (k as usize) < labels.len() {
                    labels[k as usize].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("joules per request")
            .draw()
            .map_err(err)?;
        let width = 0.8 / policies.len().max(1) as f64;
        for (pi, p) in policies.iter().enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = cases
                .iter()
                .enumerate()
                .filter_map(|(ci, (w, t, _))| {
                    let g = of
                        .iter()
                        .find(|g| g.workflow == *w && g.tier == *t && g.policy == *p)?;
                    let x0 = ci as f64 - 0.4 + width * pi as f64;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.92, g.energy_j_per_request)],
                        color(*p).filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(p.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(*p).filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The fraction of requests finished within each latency, a panel per workflow, the SLO as a
/// dashed line.
pub fn latency_cdf(rows: &[Row], groups: &[Group], mode: Mode) -> Result<String, String> {
    let of: Vec<&Group> = groups
        .iter()
        .filter(|g| g.mode == mode && g.workflow != SUITE)
        .collect();
    let cases = cases(&of);
    let mut svg = String::new();
    {
        let panel_w = 360u32;
        let root = SVGBackend::with_string(&mut svg, (panel_w * cases.len().max(1) as u32, 400))
            .into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let panels = root.split_evenly((1, cases.len().max(1)));
        for ((workflow, tier, label), area) in cases.iter().zip(panels.iter()) {
            let mine: Vec<&Row> = rows
                .iter()
                .filter(|r| r.mode == mode && r.workflow == *workflow && r.tier == *tier)
                .collect();
            let slo = mine.first().map_or(0.0, |r| r.slo_s);
            let right = mine
                .iter()
                .map(|r| r.latency_s)
                .fold(slo, f64::max)
                .max(1e-3)
                * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{label}: latency CDF"), ("sans-serif", 15))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..right, 0.0..1.02)
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("seconds per request")
                .y_desc("fraction of requests")
                .draw()
                .map_err(err)?;
            for p in Strategy::ALL {
                let mut lat: Vec<f64> = mine
                    .iter()
                    .filter(|r| r.policy == p)
                    .map(|r| r.latency_s)
                    .collect();
                if lat.is_empty() {
                    continue;
                }
                lat.sort_by(f64::total_cmp);
                let n = lat.len() as f64;
                let mut points = vec![(0.0, 0.0)];
                for (i, l) in lat.iter().enumerate() {
                    points.push((*l, i as f64 / n));
                    points.push((*l, (i + 1) as f64 / n));
                }
                chart
                    .draw_series(LineSeries::new(points, color(p).stroke_width(2)))
                    .map_err(err)?
                    .label(p.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 14, y)], color(p).stroke_width(2))
                    });
            }
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(slo, 0.0), (slo, 1.02)],
                    6,
                    4,
                    RED.stroke_width(1),
                ))
                .map_err(err)?
                .label(format!("SLO {slo:.0} s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], RED));
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .border_style(BLACK)
                .background_style(WHITE.mix(0.9))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Mean quality against mean energy per request: one point per (workflow, policy).
pub fn energy_quality(groups: &[Group], mode: Mode) -> Result<String, String> {
    let of: Vec<&Group> = groups
        .iter()
        .filter(|g| g.mode == mode && g.workflow != SUITE)
        .collect();
    let top = energy_axis(&of);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("energy against quality ({})", mode.as_str()),
                ("sans-serif", 18),
            )
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..1.05, 0.0..top)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("mean quality (0..1)")
            .y_desc("joules per request")
            .draw()
            .map_err(err)?;
        let mut labelled: Vec<&str> = Vec::new();
        for p in Strategy::ALL {
            let points: Vec<&&Group> = of.iter().filter(|g| g.policy == p).collect();
            if points.is_empty() {
                continue;
            }
            chart
                .draw_series(points.iter().map(|g| {
                    // Each workflow is named once, by its first point.
                    let short = g.workflow.strip_prefix("bench-").unwrap_or(&g.workflow);
                    let name = if labelled.contains(&g.workflow.as_str()) {
                        String::new()
                    } else {
                        labelled.push(&g.workflow);
                        short.to_string()
                    };
                    EmptyElement::at((g.mean_quality, g.energy_j_per_request))
                        + Circle::new((0, 0), 5, color(p).filled())
                        + Text::new(name, (7, -12), ("sans-serif", 11))
                }))
                .map_err(err)?
                .label(p.as_str())
                .legend(move |(x, y)| Circle::new((x + 6, y), 5, color(p).filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(svg)
}
