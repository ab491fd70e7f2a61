//! `joule eval`'s scoring on known answers: code runs in the real tool sandbox (python3), so
//! a correct completion passes HumanEval-style tests and wrong, crashing or hostile ones do not.

use std::sync::Arc;

use joule_call::Cancel;
use joule_executor::router::Router;
use joule_lab::eval::humaneval::Problem;
use joule_lab::eval::{self, EvalSet, Item};
use joule_planner::catalog::Catalog;
use joule_planner::spec::Task;
use joule_sandbox::ToolBackend;

/// Tools (the sandboxed `python_tests` runner) and no model.
fn router() -> Router {
    Router::new().with_tools(Arc::new(ToolBackend::new(
        Arc::new(Catalog::builtin()),
        std::env::temp_dir(),
    )))
}

/// A HumanEval-format problem (the real file's fields), with a helper and an import in the
/// prompt as many real problems have.
fn problem() -> Item {
    Item::Code(Problem {
        task_id: "Test/0".into(),
        prompt: "import math\n\n\ndef _square(x):\n    return x * x\n\n\ndef hypotenuse(a: float, b: float) -> float:\n    \"\"\"Length of the hypotenuse of a right triangle with legs a and b.\n    >>> hypotenuse(3, 4)\n    5.0\n    \"\"\"\n".into(),
        test: "METADATA = {}\n\n\ndef check(candidate):\n    assert candidate(3, 4) == 5.0\n    assert abs(candidate(1, 1) - 2 ** 0.5) < 1e-9\n".into(),
        entry_point: "hypotenuse".into(),
        canonical_solution: "    return math.sqrt(_square(a) + _square(b))\n".into(),
    })
}

#[tokio::test]
async fn code_answers_pass_or_fail_on_their_tests_in_the_sandbox() {
    let backend = router();
    let cancel = Cancel::new();
    let item = problem();
    let score = |answer: &'static str| {
        let (backend, cancel, item) = (&backend, &cancel, &item);
        async move { eval::score(item, answer, backend, cancel).await.unwrap() }
    };
    // A whole function in a fence, using the prompt's import and helper.
    let (s, detail) = score("Here you go:\n```python\ndef hypotenuse(a, b):\n    return math.sqrt(_square(a) + _square(b))\n```\n").await;
    assert_eq!(s, 1.0, "{detail}");
    // A body that continues the prompt, as a base model writes it.
    assert_eq!(score("    return math.hypot(a, b)\n").await.0, 1.0);
    // Wrong arithmetic fails the tests, and the detail says which.
    let (s, detail) = score("```python\ndef hypotenuse(a, b):\n    return a + b - 2\n```").await;
    assert_eq!(s, 0.0);
    assert!(detail.contains("FAILED test_humaneval"), "{detail}");
    // Code that does not load, and code that tries to reach the parent's environment.
    assert_eq!(
        score("```python\ndef hypotenuse(a, b) return\n```").await.0,
        0.0
    );
    assert_eq!(
        score("```python\nimport os\ndef hypotenuse(a, b):\n    return float(os.environ['HOME'] and 5)\n```").await.0,
        0.0,
        "the sandbox gives the code an empty environment"
    );
}

#[tokio::test]
async fn text_answers_are_scored_by_their_task_metric() {
    let backend = router();
    let cancel = Cancel::new();
    let first = |task| EvalSet::builtin(task).unwrap().items.remove(0);
    let classify = first(Task::Classify);
    let Item::Classify { label, labels, .. } = &classify else {
        unreachable!()
    };
    let other = labels.iter().find(|l| *l != label).unwrap();
    assert_eq!(
        eval::score(&classify, &format!("{label}."), &backend, &cancel)
            .await
            .unwrap()
            .0,
        1.0
    );
    assert_eq!(
        eval::score(&classify, other, &backend, &cancel)
            .await
            .unwrap()
            .0,
        0.0
    );

    let extract = first(Task::Extract);
    let Item::Extract { expected, .. } = &extract else {
        unreachable!()
    };
    let right = serde_json::to_string(expected).unwrap();
    assert_eq!(
        eval::score(&extract, &right, &backend, &cancel)
            .await
            .unwrap()
            .0,
        1.0
    );
    let mut wrong = expected.clone();
    wrong.insert("total".into(), serde_json::json!(0.5));
    let (s, detail) = eval::score(
        &extract,
        &serde_json::to_string(&wrong).unwrap(),
        &backend,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!((s, detail.as_str()), (0.8, "wrong: total"));

    let summarize = first(Task::Summarize);
    let Item::Summarize { reference, .. } = &summarize else {
        unreachable!()
    };
    assert_eq!(
        eval::score(&summarize, reference, &backend, &cancel)
            .await
            .unwrap()
            .0,
        1.0
    );
    assert!(
        eval::score(&summarize, "Nothing happened.", &backend, &cancel)
            .await
            .unwrap()
            .0
            < 0.2
    );

    let answer = first(Task::Answer);
    let Item::Answer { answers, .. } = &answer else {
        unreachable!()
    };
    assert_eq!(
        eval::score(&answer, &answers[0], &backend, &cancel)
            .await
            .unwrap()
            .0,
        1.0
    );
    assert_eq!(
        eval::score(&answer, "I do not know", &backend, &cancel)
            .await
            .unwrap()
            .0,
        0.0
    );
}
