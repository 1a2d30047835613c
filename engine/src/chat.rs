//! Chat prompts rendered with the model's own Jinja chat template (as transformers'
//! `apply_chat_template` does), with ChatML as the fallback for models that ship none.

use serde::Serialize;

use crate::error::{EngineError, Result};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }

    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new("user", content)
    }
}

/// ChatML, the format of the SmolLM2 instruct models, for tokenizers without a template.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Renders `messages` into the prompt text; `add_generation_prompt` opens the assistant turn.
pub fn render(template: Option<&str>, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> { Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg)) });
    let source = template.unwrap_or(CHATML);
    let bad = |e: minijinja::Error| EngineError::InvalidInput(format!("chat template: {e}"));
    env.add_template("chat", source).map_err(bad)?;
    let context = minijinja::context! { messages => messages, add_generation_prompt => add_generation_prompt };
    env.get_template("chat").map_err(bad)?.render(context).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_fallback() {
        let text = render(None, &[ChatMessage::user("Hi")], true).unwrap();
        assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn template_errors_are_reported() {
        let err = render(Some("{{ raise_exception('no system role') }}"), &[], false).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
