//! The pareto sweep drawn: energy and cost against predicted latency (`joule plan --pareto`).

use joule_planner::pareto::Point;
use plotters::prelude::*;

/// Two panels, energy (J) and cost (USD) against the predicted latency (s).
pub fn svg(points: &[Point], title: &str) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 20))
            .map_err(|e| e.to_string())?;
        let panels = root.split_evenly((2, 1));
        let feasible: Vec<&Point> = points.iter().filter(|p| p.feasible).collect();
        let (x0, x1) = bounds(feasible.iter().map(|p| p.latency_s));
        type Series = (&'static str, fn(&Point) -> f64, RGBColor);
        let series: [Series; 2] = [
            ("energy (J, estimate)", |p| p.energy_j, RED),
            ("cost (USD)", |p| p.cost_usd, BLUE),
        ];
        for (panel, (label, value, color)) in panels.iter().zip(series) {
            let (y0, y1) = bounds(feasible.iter().map(|p| value(p)));
            let mut chart = ChartBuilder::on(panel)
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("predicted latency (s)")
                .y_desc(label)
                .draw()
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(LineSeries::new(
                    feasible.iter().map(|p| (p.latency_s, value(p))),
                    color,
                ))
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(
                    feasible
                        .iter()
                        .map(|p| Circle::new((p.latency_s, value(p)), 4, color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// A plotting range around some values, never empty.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}
