//! Rendering a step's templates with what earlier steps produced, in the planner's template
//! dialect ([`joule_planner::template::environment`]), so a template that validated renders.

use std::collections::BTreeMap;

use joule_planner::spec::{Template, TemplatedValue};
use joule_planner::template::{self, ITEM, OUTPUT};
use minijinja::Value;

/// The variables one step's templates may read: the run's inputs, the outputs of the steps it
/// depends on, and the current `for_each` element.
pub struct Scope {
    inputs: Value,
    steps: BTreeMap<String, Value>,
    item: Option<Value>,
}

impl Scope {
    pub fn new(inputs: Value) -> Self {
        Self {
            inputs,
            steps: BTreeMap::new(),
            item: None,
        }
    }

    /// Adds a finished step's output (`steps.<id>.output`).
    pub fn step(&mut self, id: &str, output: Value) {
        let mut attrs = BTreeMap::new();
        attrs.insert(OUTPUT, output);
        self.steps.insert(id.to_string(), Value::from(attrs));
    }

    pub fn with_item(&self, item: Value) -> Scope {
        Scope {
            inputs: self.inputs.clone(),
            steps: self.steps.clone(),
            item: Some(item),
        }
    }

    fn context(&self) -> Value {
        let mut ctx = BTreeMap::new();
        ctx.insert(template::INPUTS, self.inputs.clone());
        ctx.insert(template::STEPS, Value::from(self.steps.clone()));
        if let Some(item) = &self.item {
            ctx.insert(ITEM, item.clone());
        }
        Value::from(ctx)
    }

    /// Renders a template to text.
    pub fn render(&self, t: &Template) -> Result<String, String> {
        render_str(&t.source, &self.context())
    }

    /// Evaluates a `when` or `for_each` expression.
    pub fn eval(&self, t: &Template) -> Result<Value, String> {
        eval_str(template::expression_source(&t.source), &self.context())
    }

    /// Renders every string of a templated value. A string that is one `{{ expression }}` and
    /// nothing else keeps the expression's type (a list stays a list); others become text.
    pub fn value(&self, v: &TemplatedValue) -> Result<Value, String> {
        let ctx = self.context();
        value(&v.value, &ctx)
    }
}

fn render_str(source: &str, ctx: &Value) -> Result<String, String> {
    if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
        return Ok(source.to_string());
    }
    template::environment()
        .render_str(source, ctx)
        .map_err(|e| describe(&e))
}

fn eval_str(source: &str, ctx: &Value) -> Result<Value, String> {
    template::environment()
        .compile_expression(source)
        .and_then(|e| e.eval(ctx))
        .map_err(|e| describe(&e))
}

fn value(v: &serde_json::Value, ctx: &Value) -> Result<Value, String> {
    Ok(match v {
        serde_json::Value::String(s) => match whole_expression(s) {
            Some(expr) => eval_str(expr, ctx)?,
            None => Value::from(render_str(s, ctx)?),
        },
        serde_json::Value::Array(a) => Value::from(
            a.iter()
                .map(|e| value(e, ctx))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        serde_json::Value::Object(o) => Value::from(
            o.iter()
                .map(|(k, e)| Ok((k.clone(), value(e, ctx)?)))
                .collect::<Result<BTreeMap<_, _>, String>>()?,
        ),
        other => from_json(other),
    })
}

/// A template value holding data (inputs, recorded outputs).
pub fn from_json<T: serde::Serialize>(v: T) -> Value {
    Value::from(minijinja::value::Serde(v))
}

/// `{{ expr }}` with nothing around it.
fn whole_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%")).then(|| inner.trim())
}

/// minijinja's message with its detail, which names the undefined variable or bad filter.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Text for a prompt or an argument: strings as they are, anything else as JSON.
pub fn text(v: &Value) -> String {
    match v.as_str() {
        Some(s) => s.to_string(),
        None if v.is_none() || v.is_undefined() => String::new(),
        None => serde_json::to_string(v).unwrap_or_else(|_| v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use joule_planner::diag::Pos;

    fn t(s: &str) -> Template {
        Template {
            source: s.into(),
            pos: Pos::default(),
        }
    }

    #[test]
    fn whole_expressions_keep_their_type() {
        let mut scope = Scope::new(from_json(serde_json::json!({"n": 3})));
        scope.step("a", Value::from("x\ny\n\nz"));
        let v = TemplatedValue {
            value: serde_json::json!({"list": "{{ steps.a.output | lines }}", "text": "n={{ inputs.n }}"}),
            pos: Pos::default(),
        };
        let out = scope.value(&v).unwrap();
        assert_eq!(out.get_attr("list").unwrap().len(), Some(3));
        assert_eq!(out.get_attr("text").unwrap().as_str(), Some("n=3"));
        assert!(
            scope
                .eval(&t("{{ steps.a.output | length > 2 }}"))
                .unwrap()
                .is_true()
        );
    }

    #[test]
    fn undefined_references_are_errors_that_name_them() {
        let scope = Scope::new(from_json(serde_json::json!({})));
        let err = scope.render(&t("{{ inputs.missing }}")).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }
}
