//! `specdec chat`: a terminal conversation through the model's chat template
//! (minijinja, sandboxed: see specdec_server::template), with speculative
//! decoding. Reasoning models' `<think> ... </think>` is shown apart from the
//! answer (dimmed on a terminal, on stderr otherwise) and left out of the
//! history, as R1's template expects. Speed and acceptance follow each reply.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};
use specdec_server::api::Message;
use specdec_server::template::ChatTemplate;
use specdec_tokenizer::StreamDecoder;

use crate::commands::{controller, load_model, make_drafter, run_one, sampling};
use crate::{ModelArgs, SampleArgs, SpecArgs};

/// Splits streamed text into reasoning and answer at `<think>`/`</think>`,
/// holding back a partial tag until it is decided.
#[derive(Default)]
pub struct ThinkSplitter {
    pending: String,
    thinking: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Thought(String),
    Answer(String),
}

impl ThinkSplitter {
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            let tag = if self.thinking { "</think>" } else { "<think>" };
            if let Some(i) = self.pending.find(tag) {
                let before: String = self.pending[..i].to_string();
                self.emit(&before, &mut out);
                self.pending.drain(..i + tag.len());
                self.thinking = !self.thinking;
                continue;
            }
            // Keep a suffix that could start the tag.
            let keep = (1..tag.len())
                .rev()
                .find(|&n| {
                    self.pending.len() >= n
                        && self.pending.is_char_boundary(self.pending.len() - n)
                        && tag.starts_with(&self.pending[self.pending.len() - n..])
                })
                .unwrap_or(0);
            let cut = self.pending.len() - keep;
            let head: String = self.pending[..cut].to_string();
            self.emit(&head, &mut out);
            self.pending.drain(..cut);
            return out;
        }
    }

    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        self.emit(&rest, &mut out);
        out
    }

    fn emit(&self, s: &str, out: &mut Vec<Piece>) {
        if !s.is_empty() {
            out.push(if self.thinking { Piece::Thought(s.into()) } else { Piece::Answer(s.into()) });
        }
    }
}

pub fn chat(m: &ModelArgs, system: Option<String>, max_tokens: usize, s: &SampleArgs, spec: &SpecArgs) -> Result<()> {
    let params = sampling(s)?;
    let mut ctl = controller(spec)?;
    let loaded = load_model(m, false)?;
    let mut drafter = make_drafter(spec, &loaded, &params, m.threads)?;
    let tok = &loaded.tokenizer;
    let header = &loaded.file.header;
    let text = |k: &str| header.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let special = |id: Option<u32>| id.map(|t| String::from_utf8_lossy(&tok.token_bytes(t, true)).into_owned());
    let bos = special(tok.bos).unwrap_or_default();
    let template = ChatTemplate::new(
        text("tokenizer.chat_template").as_deref(),
        &text("general.architecture").unwrap_or_default(),
        &bos,
        &special(tok.eos).unwrap_or_default(),
    )?;
    let tty = std::io::stdout().is_terminal();
    let mut history: Vec<Message> = system.into_iter().map(|c| Message { role: "system".into(), content: c }).collect();
    let base = history.len();
    eprintln!(
        "specdec chat: {} (drafter {}). /reset clears the conversation, /exit or Ctrl-D ends.",
        loaded.model.describe(),
        spec.drafter
    );
    let stdin = std::io::stdin();
    loop {
        if tty {
            print!("> ");
            std::io::stdout().flush()?;
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.truncate(base);
                eprintln!("[conversation cleared]");
                continue;
            }
            _ => {}
        }
        history.push(Message { role: "user".into(), content: line.to_string() });
        let rendered = template.render(&history)?;
        // A template that writes BOS itself gets no second one.
        let add_bos = bos.is_empty() || !rendered.starts_with(&bos);
        let prompt = tok.encode(&rendered, add_bos, true);
        if prompt.len() + max_tokens > loaded.model.max_context() {
            history.pop();
            bail!("the conversation ({} tokens) no longer fits the context; /reset to start over", prompt.len());
        }
        let (mut dec, mut split, mut answer) = (StreamDecoder::new(), ThinkSplitter::default(), String::new());
        let show = |pieces: Vec<Piece>, answer: &mut String| {
            let mut out = std::io::stdout().lock();
            for p in pieces {
                match p {
                    Piece::Thought(t) if tty => {
                        let _ = write!(out, "\x1b[2m{t}\x1b[0m");
                    }
                    Piece::Thought(t) => eprint!("{t}"),
                    Piece::Answer(t) => {
                        answer.push_str(&t);
                        let _ = write!(out, "{t}");
                    }
                }
            }
            let _ = out.flush();
        };
        let (tokens, st, sp, _) =
            run_one(&loaded, drafter.as_mut(), &mut ctl, &prompt, max_tokens, &params, &mut |t| {
                if !tok.is_eog(t) {
                    let piece = dec.push(tok, t);
                    show(split.push(&piece), &mut answer);
                }
            })?;
        let tail = dec.finish();
        let mut rest = split.push(&tail);
        rest.extend(split.finish());
        show(rest, &mut answer);
        println!();
        let mut stats = format!("[{} tokens, {:.1} tok/s", tokens.len(), st.decode_tokens_per_s());
        if let Some(sp) = sp {
            stats += &format!(
                ", mean acceptance length {:.2}, {:.0}% of drafts accepted",
                sp.mean_acceptance_length(),
                100.0 * sp.acceptance_rate()
            );
        }
        eprintln!("{stats}]");
        history.push(Message { role: "assistant".into(), content: answer.trim().to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn think_tags_split_across_pieces() {
        let mut s = ThinkSplitter::default();
        let mut got = Vec::new();
        for p in ["<th", "ink>plan", " it</th", "ink>\nThe an", "swer <", "b>"] {
            got.extend(s.push(p));
        }
        got.extend(s.finish());
        let thought: String =
            got.iter().filter_map(|p| if let Piece::Thought(t) = p { Some(t.as_str()) } else { None }).collect();
        let answer: String =
            got.iter().filter_map(|p| if let Piece::Answer(t) = p { Some(t.as_str()) } else { None }).collect();
        assert_eq!(thought, "plan it");
        assert_eq!(answer, "\nThe answer <b>");
    }
}
