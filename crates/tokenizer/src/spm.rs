//! SentencePiece-style tokenization of one text fragment (spaces already
//! escaped to U+2581): start from UTF-8 characters, repeatedly merge the
//! adjacent pair whose concatenation is the highest-scoring vocabulary entry
//! (ties: leftmost), then emit each piece or its bytes.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::{TokenId, Tokenizer};

struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then smaller left index.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

fn utf8_len(first: u8) -> usize {
    match first >> 4 {
        0xF => 4,
        0xE => 3,
        0xC | 0xD => 2,
        _ => 1,
    }
}

pub(crate) fn tokenize(tok: &Tokenizer, text: &str, out: &mut Vec<TokenId>) {
    let bytes = text.as_bytes();
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    let mut offs = 0;
    while offs < bytes.len() {
        let len = utf8_len(bytes[offs]).min(bytes.len() - offs);
        let i = symbols.len() as isize;
        offs += len;
        symbols.push(Symbol {
            start: offs - len,
            len,
            prev: i - 1,
            next: if offs == bytes.len() { -1 } else { i + 1 },
        });
    }
    let mut heap = BinaryHeap::new();
    let try_add = |symbols: &[Symbol], heap: &mut BinaryHeap<Bigram>, left: isize, right: isize| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
        let piece = &bytes[l.start..l.start + l.len + r.len];
        // Symbols always start on character boundaries.
        let Ok(piece) = std::str::from_utf8(piece) else {
            return;
        };
        if let Some(&id) = tok.to_id.get(piece) {
            heap.push(Bigram {
                left: left as usize,
                right: right as usize,
                score: tok.scores[id as usize],
                size: piece.len(),
            });
        }
    };
    for i in 1..symbols.len() as isize {
        try_add(&symbols, &mut heap, i - 1, i);
    }
    while let Some(b) = heap.pop() {
        let (ln, rn) = (symbols[b.left].len, symbols[b.right].len);
        if ln == 0 || rn == 0 || ln + rn != b.size {
            continue;
        }
        symbols[b.left].len += rn;
        symbols[b.right].len = 0;
        let next = symbols[b.right].next;
        symbols[b.left].next = next;
        if next >= 0 {
            symbols[next as usize].prev = b.left as isize;
        }
        let prev = symbols[b.left].prev;
        try_add(&symbols, &mut heap, prev, b.left as isize);
        try_add(&symbols, &mut heap, b.left as isize, next);
    }
    let mut i: isize = if symbols.is_empty() { -1 } else { 0 };
    while i >= 0 {
        let s = &symbols[i as usize];
        let piece = &text[s.start..s.start + s.len];
        match tok.to_id.get(piece) {
            Some(&id) => out.push(id),
            None => {
                for &byte in piece.as_bytes() {
                    if let Some(id) = tok.byte_tokens[byte as usize]
                        .or_else(|| tok.to_id.get(std::str::from_utf8(&[byte]).unwrap_or("\u{0}")).copied())
                        .or(tok.unk)
                    {
                        out.push(id);
                    }
                }
            }
        }
        i = s.next;
    }
}
