//! `joule generate`: one prompt through one local model, the answer streamed to stdout and the
//! figures (tokens, time to first token, prefill and decode speed) reported after it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args as ClapArgs;
use joule_app::{AppError, Settings};
use joule_models::local::{Flow, LocalBackend, Message, Request};

#[derive(ClapArgs)]
pub struct Args {
    /// The prompt (`-` reads it from stdin).
    prompt: String,
    /// A catalog model with a local source.
    #[arg(long, short, default_value = "smollm2-135m")]
    model: String,
    /// `cpu` or `cuda:N`; the default is a GPU when joule was built with `cuda` and one is present.
    #[arg(long)]
    device: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy (the same answer every time).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A system message before the prompt.
    #[arg(long)]
    system: Option<String>,
    /// End the answer before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Send the prompt as is, without the model's chat template.
    #[arg(long)]
    raw: bool,
    /// A catalog file instead of the built-in one.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Print one JSON object (answer and figures) instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args, settings: &Settings) -> super::Outcome {
    let catalog = joule_app::assembly::catalog(args.catalog.as_deref())?;
    let prompt = if args.prompt == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| AppError::failed(e.to_string()))?;
        text
    } else {
        args.prompt.clone()
    };
    if !(0.0..=2.0).contains(&args.temperature) {
        return Err(AppError::invalid(format!(
            "--temperature {} is outside 0..2",
            args.temperature
        )));
    }
    let backend = LocalBackend::new(
        Arc::new(catalog),
        settings.model_store(),
        args.device.as_deref(),
        u64::MAX,
        settings.load_options(),
    )
    .map_err(|e| AppError::failed(e.to_string()))?;
    let mut request = if args.raw {
        Request::text(prompt, args.max_tokens)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::new("user", prompt));
        Request::chat(messages, args.max_tokens)
    };
    request.temperature = args.temperature;
    request.top_p = args.top_p;
    request.seed = args.seed;
    request.stop = args.stop.clone();

    let mut stdout = std::io::stdout().lock();
    let json = args.json;
    let generation = backend
        .generate(&args.model, &request, &mut |piece| {
            let shown = joule_planner::text::escape_controls(piece);
            if !json && (stdout.write_all(shown.as_bytes()).is_err() || stdout.flush().is_err()) {
                return Flow::Stop;
            }
            Flow::Continue
        })
        .map_err(|e| AppError::failed(e.to_string()))?;
    if json {
        let mut value =
            serde_json::to_value(&generation).map_err(|e| AppError::failed(e.to_string()))?;
        value["model"] = args.model.clone().into();
        value["device"] = backend.device_id().into();
        writeln!(stdout, "{value}").map_err(|e| AppError::failed(e.to_string()))?;
    } else {
        writeln!(stdout).map_err(|e| AppError::failed(e.to_string()))?;
        eprintln!(
            "{}: {} prompt + {} generated tokens on {} in {:.2} s (load {:.2} s, first token {:.2} s, prefill {:.0} tok/s, decode {:.1} tok/s, {})",
            args.model,
            generation.prompt_tokens,
            generation.completion_tokens,
            backend.device_id(),
            generation.wall_s,
            generation.load_s,
            generation.ttft_s,
            generation.prefill_tokens_per_s,
            generation.decode_tokens_per_s,
            joule_models::openai::convert::finish_reason(generation.finish_reason),
        );
    }
    Ok(ExitCode::SUCCESS)
}
