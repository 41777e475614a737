//! Training text -> token sequences -> the draft vocabulary.

use std::path::Path;

use specdec_tokenizer::Tokenizer;

use crate::DistillError;

/// Text of each file: `.jsonl` lines with a "text" field (other lines are
/// skipped), anything else read as UTF-8 text (invalid bytes replaced).
pub fn read_texts(paths: &[impl AsRef<Path>]) -> Result<Vec<String>, DistillError> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let bytes = std::fs::read(p).map_err(|e| DistillError::Io(p.display().to_string(), e))?;
        let text = String::from_utf8_lossy(&bytes);
        if p.extension().is_some_and(|e| e == "jsonl") {
            for line in text.lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                if let Some(t) = v.get("text").and_then(|t| t.as_str()) {
                    out.push(t.to_string());
                }
            }
        } else {
            out.push(text.into_owned());
        }
    }
    if out.iter().all(|t| t.trim().is_empty()) {
        return Err(DistillError::Data("the training data holds no text".into()));
    }
    Ok(out)
}

/// Tokenizes the texts (in paragraph-sized pieces, so no single call sees a
/// whole file) into one stream and cuts it into sequences of `seq_len`
/// tokens, each starting with BOS when the model uses one. At most
/// `max_seqs` sequences.
pub fn sequences(tok: &Tokenizer, texts: &[String], seq_len: usize, max_seqs: usize) -> Vec<Vec<u32>> {
    let bos = tok.bos.filter(|_| tok.add_bos);
    let body = seq_len - usize::from(bos.is_some());
    let mut stream: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    let flush = |stream: &mut Vec<u32>, out: &mut Vec<Vec<u32>>| {
        while stream.len() >= body && out.len() < max_seqs {
            let mut s = Vec::with_capacity(seq_len);
            s.extend(bos);
            s.extend(stream.drain(..body));
            out.push(s);
        }
    };
    for text in texts {
        let mut piece = String::new();
        for para in text.split_inclusive("\n\n") {
            piece.push_str(para);
            if piece.len() >= 4096 {
                stream.extend(tok.encode(&piece, false, false));
                piece.clear();
                flush(&mut stream, &mut out);
            }
        }
        if !piece.is_empty() {
            stream.extend(tok.encode(&piece, false, false));
        }
        flush(&mut stream, &mut out);
        if out.len() >= max_seqs {
            break;
        }
    }
    out
}

/// Prompts for self-generation: one per non-empty line of `path`, `\n`
/// standing for a line break; tokenized as `generate` does (BOS when the
/// model uses one) and cut to at most `max_len` tokens.
pub fn read_prompts(tok: &Tokenizer, path: &Path, max_len: usize) -> Result<Vec<Vec<u32>>, DistillError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DistillError::Data(format!("cannot read prompts {}: {e}", path.display())))?;
    let prompts: Vec<Vec<u32>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut ids = tok.encode(&l.replace("\\n", "\n"), true, false);
            ids.truncate(max_len.max(1));
            ids
        })
        .collect();
    if prompts.is_empty() {
        return Err(DistillError::Data(format!("{} holds no prompts", path.display())));
    }
    Ok(prompts)
}

/// The `n` most frequent tokens of the sequences (ties to the lower id),
/// most frequent first.
pub fn draft_vocab(seqs: &[Vec<u32>], n: usize, vocab_size: usize) -> Vec<u32> {
    let mut count = vec![0u64; vocab_size];
    for s in seqs {
        for &t in s {
            if let Some(c) = count.get_mut(t as usize) {
                *c += 1;
            }
        }
    }
    let mut ids: Vec<u32> = (0..vocab_size as u32).filter(|&t| count[t as usize] > 0).collect();
    ids.sort_by_key(|&t| (std::cmp::Reverse(count[t as usize]), t));
    ids.truncate(n);
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_vocab_orders_by_frequency_then_id() {
        let seqs = vec![vec![5, 3, 3, 9, 9, 9], vec![3, 7]];
        assert_eq!(draft_vocab(&seqs, 10, 16), vec![3, 9, 5, 7]);
        assert_eq!(draft_vocab(&seqs, 2, 16), vec![3, 9]);
        // Ids outside the vocabulary are ignored, not a panic.
        assert_eq!(draft_vocab(&[vec![1, 99]], 4, 8), vec![1]);
    }
}
