//! Every class of workflow error, as a user sees it on stderr: `FILE:LINE:COL: message`, the
//! source lines with the spot marked, and the one-line fix. Snapshots pin the exact positions
//! and wording; each case also asserts its position directly so a snapshot update cannot hide
//! a wrong line or column.

fn check(name: &str, yaml: &str, line_col: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.yaml"), yaml).unwrap();
    let (code, out, err) = crate::support::run_in(dir.path(), &["validate", "case.yaml"]);
    assert_eq!(code, 1, "{name}: expected failure, got stdout {out}");
    let headline = format!("case.yaml:{line_col}: ");
    assert!(
        err.contains(&headline),
        "{name}: expected {headline} in\n{err}"
    );
    insta::assert_snapshot!(name, err);
}

#[test]
fn unknown_key_suggests_the_right_one() {
    check(
        "unknown_key",
        "name: t\nsteps:\n  classify:\n    promt: \"hi\"\n    max_tokens: 8\n",
        "4:5",
    );
}

#[test]
fn unknown_top_level_key() {
    check(
        "unknown_top_level_key",
        "name: t\nbudgets:\n  latency: 3s\nsteps:\n  a: { value: x }\n",
        "2:1",
    );
}

#[test]
fn unknown_step_reference() {
    check(
        "unknown_step",
        "name: t\nsteps:\n  search:\n    value: hits\n  draft:\n    prompt: |\n      Docs: {{ steps.serch.output }}\n      Reply.\n",
        "7:16",
    );
}

#[test]
fn unknown_input_reference() {
    check(
        "unknown_input",
        "name: t\ninputs:\n  ticket: { type: string }\nsteps:\n  a:\n    prompt: \"Ticket: {{ inputs.tiket }}\"\n",
        "6:25",
    );
}

#[test]
fn cycle_names_its_steps() {
    check(
        "cycle",
        "name: t\nsteps:\n  a:\n    prompt: \"{{ steps.c.output }}\"\n  b:\n    prompt: \"{{ steps.a.output }}\"\n  c:\n    value: \"{{ steps.b.output }}\"\n",
        "3:3",
    );
}

#[test]
fn step_reading_itself() {
    check(
        "self_reference",
        "name: t\nsteps:\n  a:\n    prompt: \"again: {{ steps.a.output }}\"\n",
        "4:24",
    );
}

#[test]
fn step_both_llm_and_tool() {
    check(
        "llm_and_tool",
        "name: t\npolicy: { tools: [grep] }\nsteps:\n  a:\n    prompt: \"find it\"\n    tool: grep\n",
        "6:11",
    );
}

#[test]
fn step_of_no_kind() {
    check(
        "no_kind",
        "name: t\nsteps:\n  a:\n    max_tokens: 5\n",
        "3:3",
    );
}

#[test]
fn llm_key_on_a_tool_step() {
    check(
        "misplaced_key",
        "name: t\npolicy: { tools: [grep] }\nsteps:\n  a:\n    tool: grep\n    max_tokens: 5\n",
        "6:17",
    );
}

#[test]
fn tool_not_allowed_by_policy() {
    check(
        "tool_not_allowed",
        "name: t\npolicy:\n  tools: [grep]\nsteps:\n  a:\n    tool: curl\n    args: { url: \"http://example.invalid\" }\n",
        "6:11",
    );
}

#[test]
fn endpoint_pin_outside_policy() {
    check(
        "endpoint_not_allowed",
        "name: t\nsteps:\n  a:\n    prompt: hi\n    device: openai-cloud\n",
        "5:13",
    );
}

#[test]
fn model_pin_outside_policy() {
    check(
        "model_not_allowed",
        "name: t\npolicy: { models: [smollm2-135m] }\nsteps:\n  a:\n    prompt: hi\n    model: qwen2.5-coder-1.5b\n",
        "6:12",
    );
}

#[test]
fn bad_duration() {
    check(
        "bad_duration",
        "name: t\nbudget:\n  latency: 30\nsteps:\n  a: { value: x }\n",
        "3:12",
    );
}

#[test]
fn bad_energy() {
    check(
        "bad_energy",
        "name: t\nbudget:\n  energy: 2 kilojoules\nsteps:\n  a: { value: x }\n",
        "3:11",
    );
}

#[test]
fn quality_out_of_range() {
    check(
        "bad_quality",
        "name: t\nsteps:\n  a:\n    prompt: hi\n    quality: 1.5\n",
        "5:14",
    );
}

#[test]
fn unknown_objective() {
    check(
        "unknown_objective",
        "name: t\nobjective: enrgy\nsteps:\n  a: { value: x }\n",
        "2:12",
    );
}

#[test]
fn unknown_task() {
    check(
        "unknown_task",
        "name: t\nsteps:\n  a:\n    task: sumarize\n    prompt: hi\n",
        "4:11",
    );
}

#[test]
fn template_syntax_error() {
    check(
        "template_syntax",
        "name: t\nsteps:\n  a:\n    prompt: |\n      Line one.\n      Line two {{ inputs.x | }}\ninputs:\n  x: {}\n",
        "6:30",
    );
}

#[test]
fn item_outside_for_each() {
    check(
        "item_outside_for_each",
        "name: t\nsteps:\n  a:\n    value: \"{{ item }}\"\n",
        "4:16",
    );
}

#[test]
fn needs_unknown_step() {
    check(
        "needs_unknown",
        "name: t\nsteps:\n  fetch: { value: x }\n  a:\n    value: y\n    needs: [fetc]\n",
        "6:13",
    );
}

#[test]
fn invalid_step_name() {
    check(
        "bad_step_name",
        "name: t\nsteps:\n  draft-reply: { value: x }\n",
        "3:3",
    );
}

#[test]
fn missing_steps() {
    check(
        "missing_steps",
        "name: t\ndescription: nothing to do\n",
        "2:1",
    );
}

#[test]
fn not_yaml() {
    check("not_yaml", "name: t\nsteps:\n  a: [unclosed\n", "3:6");
}

#[test]
fn default_of_wrong_type() {
    check(
        "bad_default",
        "name: t\ninputs:\n  n: { type: integer, default: many }\nsteps:\n  a: { value: x }\n",
        "3:32",
    );
}

#[test]
fn several_errors_are_reported_together() {
    let yaml = "name: t\nsteps:\n  a:\n    prompt: \"{{ steps.zz.output }}\"\n  b:\n    tool: rm\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("case.yaml"), yaml).unwrap();
    let (code, _, err) = crate::support::run_in(dir.path(), &["validate", "case.yaml"]);
    assert_eq!(code, 1);
    assert!(err.contains("case.yaml:4:17: unknown step `zz`"), "{err}");
    assert!(
        err.contains("case.yaml:6:11: tool `rm` is not allowed"),
        "{err}"
    );
}

#[test]
fn model_pin_outside_the_catalog() {
    check(
        "model_not_in_catalog",
        "name: t\nsteps:\n  a:\n    prompt: hi\n    model: smollm2-135\n",
        "5:12",
    );
}

#[test]
fn policy_names_an_unknown_provider() {
    check(
        "unknown_provider",
        "name: t\npolicy: { providers: [local, opneai] }\nsteps:\n  a: { prompt: hi }\n",
        "2:30",
    );
}

#[test]
fn tool_argument_the_catalog_does_not_declare() {
    check(
        "unknown_tool_argument",
        "name: t\npolicy: { tools: [grep] }\nsteps:\n  search:\n    tool: grep\n    args: { patern: \"x\", path: docs }\n",
        "6:13",
    );
}
