//! Chat templates: the model's `tokenizer.chat_template` (Jinja) rendered with
//! minijinja, which cannot touch files or the network; a fuel limit bounds
//! the work a hostile template can do, and any template error is a clear
//! error, never a crash. Models without a template get the built-in one for
//! their architecture (Gemma's turn format), as llama.cpp does.

use minijinja::{context, Environment, Error, ErrorKind};

use crate::api::Message;

/// Gemma's turn format; a system message is folded into the first user turn.
const GEMMA: &str = "{{ bos_token }}{% if messages[0].role == 'system' %}{% set first = messages[0].content + '\n\n' %}{% set msgs = messages[1:] %}{% else %}{% set first = '' %}{% set msgs = messages %}{% endif %}{% for m in msgs %}{% if m.role == 'assistant' %}{% set r = 'model' %}{% else %}{% set r = m.role %}{% endif %}<start_of_turn>{{ r }}\n{% if loop.first %}{{ first }}{% endif %}{{ m.content | trim }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}";

/// Instructions a template may execute per render.
const FUEL: u64 = 2_000_000;
/// Largest template source accepted.
const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template: {0}")]
    Bad(String),
}

impl ChatTemplate {
    /// `source`: the model's template, if any; `arch` picks the fallback.
    pub fn new(source: Option<&str>, arch: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        let src = match source {
            Some(s) if s.len() > MAX_TEMPLATE_BYTES => {
                return Err(TemplateError::Bad(format!(
                    "template is {} bytes, the limit is {MAX_TEMPLATE_BYTES}",
                    s.len()
                )))
            }
            Some(s) => s.to_string(),
            None if arch.starts_with("gemma") => GEMMA.to_string(),
            None => {
                return Err(TemplateError::Bad(format!(
                    "the model has no chat template and {arch} has no built-in one"
                )))
            }
        };
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", src).map_err(|e| TemplateError::Bad(e.to_string()))?;
        Ok(ChatTemplate { env, bos: bos.into(), eos: eos.into() })
    }

    pub fn render(&self, messages: &[Message]) -> Result<String, TemplateError> {
        let t = self.env.get_template("chat").map_err(|e| TemplateError::Bad(e.to_string()))?;
        t.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos,
            eos_token => self.eos,
        })
        .map_err(|e| TemplateError::Bad(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }

    #[test]
    fn gemma_fallback_renders_turns() {
        let t = ChatTemplate::new(None, "gemma3", "<bos>", "<eos>").unwrap();
        let s = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Bye")])
            .unwrap();
        assert_eq!(
            s,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn hostile_templates_error_instead_of_running_away() {
        // Unbounded work is cut by fuel.
        let t = ChatTemplate::new(
            Some("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"),
            "llama",
            "",
            "",
        )
        .unwrap();
        assert!(t.render(&[msg("user", "x")]).is_err());
        // raise_exception surfaces as an error.
        let t = ChatTemplate::new(Some("{{ raise_exception('no system role') }}"), "llama", "", "").unwrap();
        assert!(t.render(&[msg("user", "x")]).unwrap_err().to_string().contains("no system role"));
        // Syntax errors are caught at load.
        assert!(ChatTemplate::new(Some("{% for %}"), "llama", "", "").is_err());
        // No file access: includes have no loader.
        let t = ChatTemplate::new(Some("{% include '/etc/passwd' %}"), "llama", "", "").unwrap();
        assert!(t.render(&[msg("user", "x")]).is_err());
        assert!(ChatTemplate::new(None, "llama", "", "").is_err());
    }
}
