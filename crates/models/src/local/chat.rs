//! Chat prompts rendered with the model's own template (`tokenizer.chat_template`, a Jinja
//! template written for Hugging Face's Python renderer), so joule sends exactly the turn markers
//! the model was trained on. minijinja with its Python-compatibility methods renders the
//! templates of the catalog's models; a file without a template gets ChatML.

use minijinja::{Environment, ErrorKind, context};
use serde::{Deserialize, Serialize};

use super::LocalError;

/// One chat message, as the OpenAI API and chat templates both spell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
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
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())
            .map_err(|e| {
                LocalError::Template(format!("the model's chat template does not compile: {e:#}"))
            })?;
        Ok(Self { env, bos, eos })
    }

    /// The prompt text for `messages`, ending where the assistant's reply begins.
    pub fn render(&self, messages: &[Message]) -> Result<String, LocalError> {
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
