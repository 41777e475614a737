//! The lossless contract rests on batch invariance: a row's logits must not
//! depend on how many rows share the forward pass, nor on what was rolled back.

mod common;

use specdec_engine::{LogitRows, Model};

fn logits_all_at_once(m: &dyn Model, toks: &[u32]) -> Vec<f32> {
    let mut c = m.new_cache(toks.len());
    m.forward(&mut c, toks, LogitRows::All).unwrap()
}

fn logits_in_chunks(m: &dyn Model, toks: &[u32], chunks: &[usize]) -> Vec<f32> {
    let mut c = m.new_cache(toks.len());
    let mut out = Vec::new();
    let mut i = 0;
    for &n in chunks.iter().cycle() {
        if i >= toks.len() {
            break;
        }
        let j = (i + n).min(toks.len());
        out.extend(m.forward(&mut c, &toks[i..j], LogitRows::All).unwrap());
        i = j;
    }
    out
}

fn check(m: &dyn Model, toks: &[u32]) {
    let whole = logits_all_at_once(m, toks);
    for chunks in [&[1usize][..], &[3, 1, 8], &[16, 5], &[2]] {
        let parts = logits_in_chunks(m, toks, chunks);
        assert_eq!(whole.len(), parts.len());
        let same = whole.iter().zip(&parts).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "chunking {chunks:?} changed logits");
    }
}

#[test]
fn tiny_model_rows_are_batch_invariant_past_the_window() {
    let l = common::load_bytes(&common::tiny_gemma3(7, &|_, _| {})).unwrap();
    let toks: Vec<u32> = (0..40).map(|i| 2 + (i * 37 % 290)).collect();
    check(l.model.as_ref(), &toks);
}

#[test]
fn rollback_equals_never_having_drafted() {
    let l = common::load_bytes(&common::tiny_gemma3(9, &|_, _| {})).unwrap();
    let m = l.model.as_ref();
    let prefix: Vec<u32> = (0..20).map(|i| 5 + i * 3).collect();
    let (bad, good) = ([100u32, 101, 102, 103, 104, 105], [200u32, 201, 202]);
    // Draft 6 wrong tokens past the window of 8, roll back, continue.
    let mut c = m.new_cache(64);
    m.forward(&mut c, &prefix, LogitRows::Last).unwrap();
    m.forward(&mut c, &bad, LogitRows::All).unwrap();
    c.truncate(prefix.len());
    assert_eq!(c.len(), prefix.len());
    let after = m.forward(&mut c, &good, LogitRows::All).unwrap();
    let mut fresh = m.new_cache(64);
    m.forward(&mut fresh, &prefix, LogitRows::Last).unwrap();
    let want = m.forward(&mut fresh, &good, LogitRows::All).unwrap();
    assert!(after.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    // The cache itself equals a fresh prefill of the same tokens.
    let mut all = prefix.clone();
    all.extend_from_slice(&good);
    let mut pre = m.new_cache(64);
    m.forward(&mut pre, &all, LogitRows::Last).unwrap();
    assert_eq!(c.len(), pre.len());
    for layer in 0..c.n_layers {
        let ((k1, v1), (k2, v2)) = (c.layer(layer), pre.layer(layer));
        assert!(k1.iter().zip(k2).all(|(a, b)| a.to_bits() == b.to_bits()), "layer {layer} keys differ");
        assert!(v1.iter().zip(v2).all(|(a, b)| a.to_bits() == b.to_bits()), "layer {layer} values differ");
    }
}

#[test]
fn default_model_rows_are_batch_invariant() {
    let l = common::load_default();
    let toks = l.tokenizer.encode(
        "The quick brown fox jumps over the lazy dog. Speculative decoding verifies drafts",
        true,
        false,
    );
    check(l.model.as_ref(), &toks);
}

#[test]
fn bad_token_ids_and_full_context_are_errors() {
    let l = common::load_bytes(&common::tiny_gemma3(3, &|_, _| {})).unwrap();
    let m = l.model.as_ref();
    let mut c = m.new_cache(8);
    let e = m.forward(&mut c, &[2, 300], LogitRows::Last).unwrap_err();
    assert!(e.to_string().contains("300"), "{e}");
    let e = m.forward(&mut c, &[2; 9], LogitRows::Last).unwrap_err();
    assert!(e.to_string().contains("context full"), "{e}");
}
