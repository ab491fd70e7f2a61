//! Quantities with units, as people write them in a workflow: `30s`, `2kJ`, `$0.01`.
//!
//! A bare number is rejected on purpose: `latency: 30` could mean seconds or milliseconds, and a
//! budget that is silently a thousand times off is worse than an error.

/// Parses `500ms`, `30s`, `1.5m`, `2h` (also `1m30s`) into seconds.
///
/// ```
/// use joule_planner::spec::units::parse_duration;
/// assert_eq!(parse_duration("1m30s"), Ok(90.0));
/// assert!(parse_duration("30").is_err(), "a bare number has no unit");
/// ```
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let total = parse_sum(
        text,
        &[("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)],
    )
    .ok_or_else(|| {
        format!("`{text}` is not a duration; write it like `500ms`, `30s`, `2m` or `1h`")
    })?;
    Ok(total)
}

/// Parses `500J`, `2kJ`, `1.5Wh`, `0.2kWh` (also `MJ`) into joules.
pub fn parse_energy(text: &str) -> Result<f64, String> {
    parse_sum(
        text,
        &[
            ("kWh", 3.6e6),
            ("Wh", 3600.0),
            ("MJ", 1e6),
            ("kJ", 1e3),
            ("J", 1.0),
        ],
    )
    .ok_or_else(|| {
        format!("`{text}` is not an energy; write it like `500J`, `2kJ`, `1.5Wh` or `0.2kWh`")
    })
}

/// Parses `$0.01`, `0.01 USD` or `0.01USD` into US dollars.
pub fn parse_cost(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let number = if let Some(rest) = t.strip_prefix('$') {
        rest.trim()
    } else if let Some(rest) = t.strip_suffix("USD") {
        rest.trim()
    } else {
        return Err(format!(
            "`{text}` is not a cost; write it like `$0.01` or `0.01 USD`"
        ));
    };
    parse_number(number)
        .ok_or_else(|| format!("`{text}` is not a cost; write it like `$0.01` or `0.01 USD`"))
}

/// A non-negative, finite decimal number (no sign, no exponent: these are budgets).
fn parse_number(s: &str) -> Option<f64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(v)
}

/// Parses one or more `NUMBER UNIT` terms (`1m30s`), each unit at most once and in the order
/// given, and sums them. Units are matched longest first so `ms` is not read as `m`.
fn parse_sum(text: &str, units: &[(&str, f64)]) -> Option<f64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = parse_number(&rest[..digits])?;
        let after = rest[digits..].trim_start();
        let (index, (unit, scale)) = units
            .iter()
            .enumerate()
            .filter(|(_, (u, _))| after.starts_with(u))
            .max_by_key(|(_, (u, _))| u.len())?;
        // A unit must not be followed by more letters (`5min` is not `5m` + `in`).
        let tail = &after[unit.len()..];
        if tail.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return None;
        }
        // Units of a compound duration go from large to small, each once: `1h30m`, not `30m1h`.
        if let Some(prev) = last_unit
            && units[index].1 >= units[prev].1
        {
            return None;
        }
        last_unit = Some(index);
        total += number * scale;
        rest = tail.trim_start();
    }
    Some(total)
}

/// Formats seconds the way a person reads them in a table: `850ms`, `12.3s`, `4m05s`.
pub fn format_duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1e3)
    } else if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let m = (seconds / 60.0).floor();
        format!("{m:.0}m{:02.0}s", seconds - m * 60.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30.0));
        assert_eq!(parse_duration("500ms"), Ok(0.5));
        assert_eq!(parse_duration("1.5m"), Ok(90.0));
        assert_eq!(parse_duration("2h"), Ok(7200.0));
        assert_eq!(parse_duration("1m30s"), Ok(90.0));
        assert_eq!(parse_duration(" 1m 30s "), Ok(90.0));
        for bad in [
            "30", "", "s", "-1s", "30 sec", "5min", "30s1m", "1e3s", "1..2s", "3d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn energies() {
        assert_eq!(parse_energy("2kJ"), Ok(2000.0));
        assert_eq!(parse_energy("500J"), Ok(500.0));
        assert_eq!(parse_energy("1Wh"), Ok(3600.0));
        assert_eq!(parse_energy("0.5kWh"), Ok(1.8e6));
        for bad in ["2", "2kj", "2 kilojoules", "Wh"] {
            assert!(parse_energy(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn costs() {
        assert_eq!(parse_cost("$0.01"), Ok(0.01));
        assert_eq!(parse_cost("0.01 USD"), Ok(0.01));
        assert_eq!(parse_cost("0.01USD"), Ok(0.01));
        for bad in ["0.01", "$", "€1", "$-1", "1 EUR"] {
            assert!(parse_cost(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(0.25), "250ms");
        assert_eq!(format_duration(12.34), "12.3s");
        assert_eq!(format_duration(245.0), "4m05s");
    }
}
