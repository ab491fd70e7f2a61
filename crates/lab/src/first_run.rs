//! The first run on a machine no measured profile describes: planning from the reference
//! figures there predicts a 7-second run at 50 (every CPU speed is someone else's machine),
//! so the local models a plan could use are measured quickly first (one prompt length, a few
//! decoded tokens, two loads: seconds per model, not a full `joule profile`) and written into
//! the machine profile, where the next plan and every later one find them.

use joule_app::profiles::{machine_profile, measured_header, write};
use joule_app::{AppError, Assembly};
use joule_models::store::State;
use joule_planner::figure::Source;

use crate::profiler;

/// What a quick measurement measures: enough for a prediction within tens of percent.
pub fn settings() -> profiler::Settings {
    profiler::Settings {
        prompt_lengths: vec![128],
        decode_tokens: 16,
        repeats: 1,
        // The first load of a process is the slowest (2.0 s against 0.9-1.3 s for
        // Qwen2.5-Coder-0.5B here); two give a median a run's one load is near.
        loads: 2,
    }
}

/// Local models on this machine's CPU whose speeds no measured figure gives.
pub fn unmeasured(assembly: &Assembly) -> Vec<String> {
    if assembly.planning.no_machine_profiles
        || !assembly.settings.first_measure()
        || !assembly.devices().iter().any(|d| d == "cpu")
    {
        return Vec::new();
    }
    let present = assembly.settings.model_store().present(&assembly.catalog);
    let measured = |id: &str| {
        assembly.profiles.hardware(id, "cpu").is_some_and(|h| {
            [&h.prefill_tps, &h.decode_tps]
                .iter()
                .all(|f| f.as_ref().is_some_and(|f| f.source == Source::Measured))
        })
    };
    assembly
        .catalog
        .models
        .iter()
        .filter(|m| m.source.is_some() && present.contains(&m.id) && !measured(&m.id))
        .map(|m| m.id.clone())
        .collect()
}

/// Measures `models` on the CPU quickly and writes them into the machine profile; `say`
/// hears what is measured. Returns the seconds it took.
pub fn measure(
    assembly: &Assembly,
    models: &[String],
    say: &mut dyn FnMut(&str),
) -> Result<f64, AppError> {
    let started = std::time::Instant::now();
    let (out, mut file) = machine_profile(&assembly.settings, None)?;
    let store = assembly.settings.model_store();
    for id in models {
        let Some(model) = assembly.catalog.model(id) else {
            continue;
        };
        let Ok(State::Present { path, .. }) = store.state(model) else {
            continue;
        };
        let assumed_w = assembly
            .profiles
            .hardware(id, "cpu")
            .and_then(|h| h.active_w.as_ref())
            .map_or(joule_planner::estimate::HOST_W, |f| f.value);
        let measured = profiler::profile_local(
            id,
            &path,
            "cpu",
            assumed_w,
            &settings(),
            assembly.settings.load_options(),
            &mut |what| say(&format!("{id}: {what}")),
        )
        .map_err(|e| AppError::failed(format!("measuring {id}: {e}")))?;
        // Power is kept only where a real meter read it (`Measured::hardware`).
        let mut entry = measured.hardware();
        for f in [
            &mut entry.prefill_tps,
            &mut entry.decode_tps,
            &mut entry.load_s,
        ]
        .into_iter()
        .flatten()
        {
            f.note = Some(format!(
                "quick first-run measurement ({}); `joule profile` measures fully",
                f.note.as_deref().unwrap_or("one repeat")
            ));
        }
        file.hardware
            .retain(|h| !(h.model == entry.model && h.device == entry.device));
        file.hardware.push(entry);
        write(&out, &file, &measured_header())?;
    }
    Ok(started.elapsed().as_secs_f64())
}
