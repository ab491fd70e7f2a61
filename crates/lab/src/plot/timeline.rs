//! A run's timeline drawn: one row per step, grouped by device, the planned interval as an
//! outline and the measured one filled (`timeline.svg` beside `report.json`).

use joule_executor::report::{Report, StepReport};
use joule_executor::runtime::StepStatus;
use plotters::prelude::*;

/// A Gantt chart of the run: one row per step, grouped by device, the planned interval as
/// an outline and the measured one filled.
pub fn timeline(report: &Report) -> Result<String, String> {
    let mut rows: Vec<&StepReport> = report.steps.iter().collect();
    rows.sort_by(|a, b| {
        a.device
            .cmp(&b.device)
            .then(a.predicted_start_s.total_cmp(&b.predicted_start_s))
    });
    let end = report
        .steps
        .iter()
        .map(|s| s.ended_s.unwrap_or(0.0).max(s.predicted_end_s))
        .fold(report.totals.latency_s, f64::max)
        .max(1e-3);
    let height = 120 + 28 * rows.len() as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!(
            "{} run {}: planned (outline) and measured (filled)",
            report.workflow, report.run_id
        );
        let root = root
            .titled(&title, ("sans-serif", 16))
            .map_err(|e| e.to_string())?;
        let n = rows.len().max(1);
        let labels: Vec<String> = rows
            .iter()
            .map(|s| format!("{} [{}]", s.id, s.device))
            .collect();
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(220)
            .build_cartesian_2d(0.0..end * 1.05, -0.5..n as f64 - 0.5)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds from the start of the run")
            .y_labels(n)
            .y_label_formatter(&|y| {
                // Row k (from the top) is centred on y = n - 1 - k.
                let k = n as f64 - 1.0 - y;
                if (k - k.round()).abs() < 1e-6 && k >= 0.0 && (k as usize) < labels.len() {
                    labels[k.round() as usize].clone()
                } else {
                    String::new()
                }
            })
            .disable_y_mesh()
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, s) in rows.iter().enumerate() {
            let y = (n - k - 1) as f64;
            let color = match s.status {
                StepStatus::Succeeded => RGBColor(46, 125, 50),
                StepStatus::Skipped => RGBColor(158, 158, 158),
                _ => RGBColor(198, 40, 40),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (s.predicted_start_s, y + 0.15),
                        (
                            s.predicted_end_s.max(s.predicted_start_s + end * 0.002),
                            y + 0.85,
                        ),
                    ],
                    BLUE.stroke_width(1),
                )))
                .map_err(|e| e.to_string())?;
            if let (Some(a), Some(b)) = (s.started_s, s.ended_s) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(a, y - 0.2), (b.max(a + end * 0.002), y + 0.2)],
                        color.filled(),
                    )))
                    .map_err(|e| e.to_string())?;
            }
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}
