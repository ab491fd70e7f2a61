//! Profile files on disk: what `joule profile` and `joule eval` measure and runs calibrate is
//! written back into this machine's profiles, keeping every entry a new measurement does not
//! replace and the file's opening comment (which machine, how it was measured).

use std::path::Path;

use joule_executor::runtime::Observation;
use joule_planner::profile::{ProfileFile, Profiles};

use crate::error::AppError;
use crate::settings::{Settings, host};

/// The profile at `path`, so a new measurement keeps what earlier ones of other models,
/// devices or tasks wrote; a new empty one named `name` when there is none.
pub fn load_or_new(path: &Path, name: &str) -> Result<ProfileFile, AppError> {
    match Profiles::load(path) {
        Ok(f) => Ok(f),
        Err(_) if !path.exists() => Ok(ProfileFile {
            name: name.to_string(),
            ..ProfileFile::default()
        }),
        Err(errors) => Err(AppError::spec_noted(
            errors,
            format!(
                "{} exists but is not a profile; choose another --out",
                path.display()
            ),
        )),
    }
}

/// This machine's measured profile (default `<host>.yaml` in the profiles directory), or the
/// file at `out`.
pub fn machine_profile(
    settings: &Settings,
    out: Option<&Path>,
) -> Result<(std::path::PathBuf, ProfileFile), AppError> {
    let path = out.map_or_else(|| settings.machine_profile_path(), Path::to_path_buf);
    let file = load_or_new(&path, &format!("measured-{}", host()))?;
    Ok((path, file))
}

/// The opening comment of a file `joule profile` or `joule eval` writes.
pub fn measured_header() -> String {
    format!(
        "Measured on {} by `joule profile` and `joule eval`; each figure says how it was obtained.",
        host()
    )
}

/// The comment lines a profile file opens with.
fn opening_comment(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| l.trim_start().starts_with('#'))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n") + "\n")
}

/// Writes through a temporary file, so an interrupted write never leaves half a profile. The
/// file's opening comment is kept when it has one; otherwise `header` becomes it.
pub fn write(path: &Path, file: &ProfileFile, header: &str) -> Result<(), AppError> {
    let io = |e: std::io::Error| AppError::failed(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let comment = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| opening_comment(&t))
        .unwrap_or_else(|| format!("# {header}\n"));
    let text = format!("{comment}{}", file.to_yaml().map_err(AppError::failed)?);
    let tmp = path.with_extension("yaml.part");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Folds a scored run (a benchmark request, a run with expected outputs) into the step-level
/// quality figures it observed ([`joule_planner::plan::Plan::observed_quality`]), in the calibration
/// profile, which overrides the tuned figure it copies. Returns how many figures changed;
/// steps never tuned have no figure to refine and are left alone.
pub fn observe_quality(
    settings: &Settings,
    used: &Profiles,
    workflow: &str,
    plan: &joule_planner::plan::Plan,
    score: f64,
) -> Result<usize, AppError> {
    let cells = plan.observed_quality();
    let path = settings.calibration_path();
    let mut file = load_or_new(&path, "calibration")?;
    let mut changed = 0;
    for (step, model) in cells {
        let Some(current) = used.step_quality(workflow, &step, &model) else {
            continue;
        };
        let i = match file
            .step_quality
            .iter()
            .position(|q| q.workflow == workflow && q.step == step && q.model == model)
        {
            Some(i) => i,
            None => {
                file.step_quality.push(current.clone());
                file.step_quality.len() - 1
            }
        };
        file.step_quality[i].observe(score);
        changed += 1;
    }
    if changed > 0 {
        let header = "Kept up to date by `joule run` and `joule bench`: measured speeds of this machine's model calls, the token counts of workflow steps, and the scores of tuned steps, as bounded moving estimates.";
        write(&path, &file, header)?;
    }
    Ok(changed)
}

/// Folds a run's measured speeds and token counts into the machine's calibration profile, so
/// the next plan predicts better. Returns how many figures changed.
pub fn calibrate(
    settings: &Settings,
    used: &Profiles,
    workflow: &str,
    observations: &[Observation],
) -> Result<usize, AppError> {
    let path = settings.calibration_path();
    let mut file = load_or_new(&path, "calibration")?;
    let changed = joule_executor::calibrate::calibrate(used, &mut file, workflow, observations);
    let header = "Kept up to date by `joule run`: measured speeds of this machine's model calls and the token counts of workflow steps, as bounded moving estimates.";
    write(&path, &file, header)?;
    Ok(changed)
}
