//! A number and how it was obtained. joule never shows an estimate as a measurement: every
//! speed, power, price and quality figure the planner reads carries its provenance, and every
//! prediction it makes says which kind of figure it rests on.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a figure was obtained, weakest first: when several profile files give the same figure,
/// the strongest source wins (a measurement beats a published figure beats an estimate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A reasoned guess (and a note says from what).
    Estimate,
    /// Someone else's measurement, written down (the note says where).
    Published,
    /// Measured by joule on this hardware (the meter says with what).
    Measured,
}

/// What measured a `measured` figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Meter {
    /// NVIDIA's energy counter.
    Nvml,
    /// Intel/AMD RAPL through powercap.
    Rapl,
    /// Profiled power times measured time.
    Estimate,
    /// A wall clock (speeds and latencies).
    Clock,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Figure {
    pub value: f64,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<Meter>,
    /// How many samples a measured or evaluated figure rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Meter {
    /// The method's name, as profiles, reports and CSV files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Meter::Nvml => "nvml",
            Meter::Rapl => "rapl",
            Meter::Estimate => "estimate",
            Meter::Clock => "clock",
        }
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Estimate => "estimate",
            Source::Published => "published",
            Source::Measured => "measured",
        })
    }
}

/// Four significant digits: what profile files keep of a measured figure (the fifth digit
/// of a speed is noise, and a diff of a re-measured profile should show what changed).
pub fn significant(v: f64) -> f64 {
    let scale = 10f64.powi(4 - v.abs().max(1e-12).log10().ceil() as i32);
    (v * scale).round() / scale
}

#[cfg(test)]
mod significant_tests {
    use super::significant;

    #[test]
    fn figures_keep_four_significant_digits() {
        assert_eq!(significant(123.456_78), 123.5);
        assert_eq!(significant(0.012_345_6), 0.01235);
    }
}
