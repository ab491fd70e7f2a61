//! Hostile input never panics or hangs the parser: arbitrary bytes, alias bombs, deep nesting
//! and oversized files all come back as errors.

use joule_planner::spec::{self, MAX_FILE_BYTES};
use joule_planner::{CompileContext, ErrorCode, SourceFile, compile_source};
use proptest::prelude::*;

fn compile(text: &str) -> Result<joule_planner::Dag, Vec<joule_planner::SpecError>> {
    compile_source(
        &SourceFile::new("hostile.yaml", text),
        &CompileContext::default(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let _ = compile(&text);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let dir = tempdir();
        let path = dir.join("bytes.yaml");
        std::fs::write(&path, &bytes).unwrap();
        let _ = joule_planner::load(&path, &CompileContext::default());
    }

    /// Mutations of a valid workflow: structure mostly intact, so the checker (not just the
    /// YAML parser) sees odd input.
    #[test]
    fn mutated_workflows_never_panic(cut in 0usize..1000, insert in "[{}\\[\\]:\"'|>&*!%#\\n -]{0,6}") {
        let base = include_str!("../../../../workflows/ticket-triage.yaml");
        let at = cut.min(base.len());
        let at = (0..=at).rev().find(|&i| base.is_char_boundary(i)).unwrap_or(0);
        let text = format!("{}{}{}", &base[..at], insert, &base[at..]);
        let _ = compile(&text);
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("joule-robust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn alias_bomb_is_an_error() {
    // "Billion laughs": each level doubles the references ten times.
    let mut text = String::from("name: bomb\nsteps:\n  a:\n    value: &l0 [\"lol\"]\n");
    for i in 1..12 {
        let prev = i - 1;
        text.push_str(&format!(
            "  s{i}:\n    value: &l{i} [*l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}]\n"
        ));
    }
    let errors = compile(&text).expect_err("an alias bomb must be refused");
    assert_eq!(errors[0].code, ErrorCode::Syntax, "{errors:?}");
    assert!(
        errors[0]
            .help
            .as_deref()
            .unwrap_or("")
            .contains("safety limits"),
        "{errors:?}"
    );
}

#[test]
fn deep_nesting_is_an_error() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let depth = 100_000;
        let text = format!(
            "name: deep\nsteps:\n  a:\n    value: {}1{}\n",
            open.repeat(depth),
            close.repeat(depth)
        );
        let errors = compile(&text).expect_err("deep nesting must be refused");
        assert_eq!(errors[0].code, ErrorCode::Syntax);
    }
}

#[test]
fn ten_megabyte_file_is_an_error() {
    let mut text = String::from("name: huge\nsteps:\n  a:\n    value: \"");
    text.push_str(&"x".repeat(10 * 1024 * 1024));
    text.push_str("\"\n");
    let errors = compile(&text).expect_err("a 10 MB workflow must be refused");
    assert!(
        errors[0].message.contains(&MAX_FILE_BYTES.to_string()),
        "{errors:?}"
    );

    // The same limit applies when reading from disk, before the file is read whole.
    let dir = tempdir();
    let path = dir.join("huge.yaml");
    std::fs::write(&path, &text).unwrap();
    let errors = spec::load(&path).expect_err("a 10 MB workflow file must be refused");
    assert!(errors[0].message.contains("limited to"), "{errors:?}");
}

#[test]
fn many_steps_just_under_the_limit_parse() {
    // A large but legitimate workflow is fine: the limits are for attacks, not for big work.
    let text = joule_planner::synth::layered_workflow(3_000, 30, 1);
    assert!(text.len() < MAX_FILE_BYTES);
    let dag = compile(&text).expect("3,000 steps are valid");
    assert_eq!(dag.workflow.steps.len(), 3_000);
}

#[test]
fn deep_template_nesting_is_an_error_not_a_crash() {
    let expr = format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let text = format!("name: t\nsteps:\n  a:\n    value: \"{{{{ {expr} }}}}\"\n");
    let errors = compile(&text).expect_err("a 5,000-deep expression must be refused");
    assert_eq!(errors[0].code, ErrorCode::Template, "{errors:?}");
}

#[test]
fn not_utf8_is_an_error() {
    let dir = tempdir();
    let path = dir.join("latin1.yaml");
    std::fs::write(&path, b"name: caf\xe9\nsteps: {}\n").unwrap();
    let errors = spec::load(&path).expect_err("not UTF-8");
    assert!(errors[0].message.contains("UTF-8"));
}
