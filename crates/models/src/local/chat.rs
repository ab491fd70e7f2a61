//! Chat prompts rendered with the model's own template (`tokenizer.chat_template`, a Jinja
//! template written for Hugging Face's Python renderer), so joule sends exactly the turn markers
//! the model was trained on. minijinja with its Python-compatibility methods renders the
//! templates of the catalog's models; a file without a template gets ChatML.
//!
//! Tools (function definitions) go through the template too: Qwen2.5's has a tools section and
//! reads assistant `tool_calls` and `tool` results itself. A template that knows no tools gets
//! them the same way Qwen2.5 (Hermes) words them, as a system message, with calls and results
//! written out as `<tool_call>` and `<tool_response>` text, so every model is asked one way.

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::LocalError;

/// One chat message, as the OpenAI API and chat templates both spell it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The calls an assistant turn made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<MessageToolCall>,
    /// Which call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The function a `tool` message is the result of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A call in an assistant turn, as Hugging Face chat templates read it: arguments as an
/// object, not OpenAI's JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: CalledFunction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalledFunction {
    pub name: String,
    pub arguments: serde_json::Value,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// The tag pair a model writes a tool call between (Hermes, Qwen2.5).
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// Qwen2.5's own words for offering tools, used where a template has none.
fn tools_system(system: Option<&str>, tools: &[serde_json::Value]) -> String {
    let mut text = String::new();
    if let Some(s) = system {
        text.push_str(s);
        text.push_str("\n\n");
    }
    text.push_str("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>");
    for t in tools {
        text.push('\n');
        text.push_str(&t.to_string());
    }
    text.push_str("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
    text
}

/// A tool conversation in plain turns, for a template that knows no tools.
fn without_tools(messages: &[Message], tools: &[serde_json::Value]) -> Vec<Message> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if !tools.is_empty() {
        let system = match messages.first() {
            Some(m) if m.role == "system" => {
                rest = &messages[1..];
                Some(m.content.as_str())
            }
            _ => None,
        };
        out.push(Message::new("system", tools_system(system, tools)));
    }
    for m in rest {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for call in &m.tool_calls {
                    let body = serde_json::json!({"name": call.function.name, "arguments": call.function.arguments});
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&format!("{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"));
                }
                out.push(Message::new("assistant", text));
            }
            "tool" => out.push(Message::new(
                "user",
                format!("<tool_response>\n{}\n</tool_response>", m.content),
            )),
            _ => out.push(m.clone()),
        }
    }
    out
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Whether the template renders `tools`, assistant `tool_calls` and `tool` turns itself.
    knows_tools: bool,
}

impl ChatTemplate {
    /// Compiles the template once per loaded model; rendering then costs microseconds.
    pub fn new(source: Option<&str>, bos: String, eos: String) -> Result<Self, LocalError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        let source = source.unwrap_or(CHATML);
        let knows_tools = source.contains("tools") && source.contains("tool_calls");
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| {
                LocalError::Template(format!("the model's chat template does not compile: {e:#}"))
            })?;
        Ok(Self {
            env,
            bos,
            eos,
            knows_tools,
        })
    }

    /// The prompt text for `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, LocalError> {
        self.render_with_tools(messages, &[])
    }

    /// [`ChatTemplate::render`] with functions the model may call (OpenAI's `tools` entries).
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: &[serde_json::Value],
    ) -> Result<String, LocalError> {
        let uses_tools = !tools.is_empty()
            || messages
                .iter()
                .any(|m| m.role == "tool" || !m.tool_calls.is_empty());
        if uses_tools && !self.knows_tools {
            return self.render_with_tools(&without_tools(messages, tools), &[]);
        }
        if messages.is_empty() {
            return Err(LocalError::Request(
                "a chat needs at least one message".into(),
            ));
        }
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| LocalError::Template(e.to_string()))?;
        template
            .render(context! {
                messages => minijinja::value::Serde(messages),
                tools => if tools.is_empty() { None } else { Some(minijinja::value::Serde(tools)) },
                add_generation_prompt => true,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            })
            .map_err(|e| LocalError::Template(format!("rendering the chat template: {e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback_marks_every_turn() {
        let t = ChatTemplate::new(None, String::new(), String::new()).unwrap();
        let text = t
            .render(&[
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
            ])
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tools_reach_a_template_without_a_tools_section_in_hermes_words() {
        let t = ChatTemplate::new(None, String::new(), String::new()).unwrap();
        let tool = serde_json::json!({"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}});
        let mut call = Message::new("assistant", "");
        call.tool_calls.push(MessageToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: CalledFunction {
                name: "add".into(),
                arguments: serde_json::json!({"a": 1}),
            },
        });
        let mut result = Message::new("tool", "2");
        result.tool_call_id = Some("c1".into());
        let text = t
            .render_with_tools(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "1+1?"),
                    call,
                    result,
                ],
                &[tool],
            )
            .unwrap();
        assert!(
            text.starts_with("<|im_start|>system\nBe brief.\n\n# Tools"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"<tools>
{"type":"function","function":{"name":"add""#
            ),
            "{text}"
        );
        assert!(
            text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":1}}\n</tool_call><|im_end|>"),
            "{text}"
        );
        assert!(
            text.contains("<|im_start|>user\n<tool_response>\n2\n</tool_response><|im_end|>"),
            "{text}"
        );
    }

    #[test]
    fn raise_exception_surfaces_as_an_error() {
        let t = ChatTemplate::new(
            Some("{{ raise_exception('roles must alternate') }}"),
            String::new(),
            String::new(),
        )
        .unwrap();
        let err = t.render(&[Message::new("user", "x")]).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            Some("{% for m in messages %}{{ m.content.strip() }}|{% endfor %}"),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  padded  ")]).unwrap(),
            "padded|"
        );
    }
}
