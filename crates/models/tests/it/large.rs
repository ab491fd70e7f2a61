//! The larger catalog models, run only with JOULE_TEST_LARGE=1 (they are 0.5 and 1.1 GB and
//! take minutes on a small CPU). Each is fetched into the shared cache if missing.

use std::time::Duration;

use joule_models::local::{Flow, LoadOptions, LoadedModel, Message, Request};

use crate::support;

fn load(id: &str) -> LoadedModel {
    LoadedModel::load(
        id,
        &support::fetched(id),
        &candle_core::Device::Cpu,
        LoadOptions::default(),
    )
    .unwrap()
}

fn answer(model: &LoadedModel, question: &str, max_tokens: usize) -> String {
    let request = Request::chat(vec![Message::new("user", question)], max_tokens);
    let g = model.generate(&request, &mut |_| Flow::Continue).unwrap();
    eprintln!(
        "{}: {} tokens, prefill {:.0} tok/s, decode {:.1} tok/s\n{}",
        model.id, g.completion_tokens, g.prefill_tokens_per_s, g.decode_tokens_per_s, g.text
    );
    g.text
}

#[test]
#[ignore = "large models: run with `cargo test -p joule-models -- --ignored`"]
fn qwen_half_b_knows_the_capital_of_france() {
    let model = load("qwen2.5-coder-0.5b");
    let text = answer(&model, "What is the capital of France?", 32);
    assert!(text.contains("Paris"), "{text}");
}

/// The code between the first ```python fence and the next fence (or all of it).
fn code_block(text: &str) -> &str {
    let Some(start) = text.find("```") else {
        return text;
    };
    let after = &text[start + 3..];
    let body = after.find('\n').map(|i| &after[i + 1..]).unwrap_or(after);
    body.find("```").map(|end| &body[..end]).unwrap_or(body)
}

#[test]
#[ignore = "large models: run with `cargo test -p joule-models -- --ignored`"]
fn qwen_one_and_a_half_b_writes_a_function_that_passes_its_test() {
    let model = load("qwen2.5-coder-1.5b");
    let text = answer(
        &model,
        "Write a Python function `is_palindrome(s: str) -> bool` that returns True when s reads the same forwards and backwards, ignoring case and any character that is not a letter or digit. Reply with only the code.",
        300,
    );
    let code = code_block(&text);
    let test = "\nassert is_palindrome('A man, a plan, a canal: Panama')\nassert is_palindrome('')\nassert not is_palindrome('race a car')\nassert is_palindrome('No lemon, no melon')\nprint('ok')\n";
    // The model's code runs as a plain argv child (no shell), isolated from the user's site
    // packages, in a scratch directory, with a deadline.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answer.py");
    std::fs::write(&file, format!("{code}\n{test}")).unwrap();
    let child = std::process::Command::new("python3")
        .arg("-I")
        .arg(&file)
        .current_dir(dir.path())
        .env_clear()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the model's code finishes within 30 s")
        .unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("ok"),
        "the generated code failed its test:\n{code}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
