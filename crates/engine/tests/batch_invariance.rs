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

/// A pass that wants only its last row's logits runs the last layer's
/// queries, attention and feed-forward for that row alone; its logits and the
/// cache it leaves must equal those of a pass computing every row.
fn check_last_row_only(m: &dyn Model, toks: &[u32]) {
    let v = m.vocab_size();
    let mut all_cache = m.new_cache(toks.len());
    let all = m.forward(&mut all_cache, toks, LogitRows::All).unwrap();
    let mut last_cache = m.new_cache(toks.len());
    let last = m.forward(&mut last_cache, toks, LogitRows::Last).unwrap();
    assert_eq!(last.len(), v);
    let want = &all[(toks.len() - 1) * v..];
    assert!(last.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "last-row-only pass changed logits");
    assert_eq!(all_cache.len(), last_cache.len());
    for layer in 0..all_cache.n_layers {
        let ((k1, v1), (k2, v2)) = (all_cache.layer(layer), last_cache.layer(layer));
        assert!(
            k1.iter().zip(k2).chain(v1.iter().zip(v2)).all(|(a, b)| a.to_bits() == b.to_bits()),
            "layer {layer}: cache differs"
        );
    }
    // A pass with no logit rows still fills the cache, and what follows it
    // sees the same keys and values.
    let mut none_cache = m.new_cache(toks.len() + 1);
    let empty = m.forward(&mut none_cache, toks, LogitRows::None).unwrap();
    assert!(empty.is_empty());
    let mut all_cache2 = m.new_cache(toks.len() + 1);
    m.forward(&mut all_cache2, toks, LogitRows::All).unwrap();
    let a = m.forward(&mut none_cache, &[toks[0]], LogitRows::Last).unwrap();
    let b = m.forward(&mut all_cache2, &[toks[0]], LogitRows::Last).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "a no-logits pass left a different cache");
}

#[test]
fn tiny_model_last_row_only_pass_equals_all_rows() {
    let l = common::load_bytes(&common::tiny_gemma3(11, &|_, _| {})).unwrap();
    let toks: Vec<u32> = (0..30).map(|i| 2 + (i * 53 % 290)).collect();
    check_last_row_only(l.model.as_ref(), &toks);
}

#[test]
fn default_model_last_row_only_pass_equals_all_rows() {
    let l = common::load_default();
    let toks = l.tokenizer.encode("A prefill reads the whole prompt, but only its last row is sampled.", true, false);
    check_last_row_only(l.model.as_ref(), &toks);
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

/// Sequences batched into one pass (ragged lengths, prefill next to verify
/// rows, different positions) get exactly the logits and caches they get alone.
fn check_batched(m: &dyn Model, seqs: &[(Vec<u32>, Vec<u32>, LogitRows)]) {
    use specdec_engine::BatchItem;
    // Alone.
    let mut alone = Vec::new();
    let mut alone_caches = Vec::new();
    for (prefix, step, rows) in seqs {
        let mut c = m.new_cache(64);
        if !prefix.is_empty() {
            m.forward(&mut c, prefix, LogitRows::Last).unwrap();
        }
        alone.push(m.forward(&mut c, step, *rows).unwrap());
        alone_caches.push(c);
    }
    // Together.
    let mut caches: Vec<_> = seqs
        .iter()
        .map(|(prefix, _, _)| {
            let mut c = m.new_cache(64);
            if !prefix.is_empty() {
                m.forward(&mut c, prefix, LogitRows::Last).unwrap();
            }
            c
        })
        .collect();
    let mut items: Vec<BatchItem> = caches
        .iter_mut()
        .zip(seqs)
        .map(|(cache, (_, step, rows))| BatchItem { cache, tokens: step, rows: *rows })
        .collect();
    let together = m.forward_batch(&mut items).unwrap();
    assert_eq!(together.len(), alone.len());
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.len(), b.len(), "sequence {i}: logit rows");
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "sequence {i}: batching changed logits");
    }
    for (i, (a, b)) in alone_caches.iter().zip(&caches).enumerate() {
        assert_eq!(a.len(), b.len());
        for layer in 0..a.n_layers {
            let ((k1, v1), (k2, v2)) = (a.layer(layer), b.layer(layer));
            assert!(
                k1.iter().zip(k2).chain(v1.iter().zip(v2)).all(|(x, y)| x.to_bits() == y.to_bits()),
                "sequence {i} layer {layer}: cache differs"
            );
        }
    }
}

#[test]
fn batched_sequences_equal_sequences_alone() {
    let l = common::load_bytes(&common::tiny_gemma3(11, &|_, _| {})).unwrap();
    let m = l.model.as_ref();
    let t = |n: u32, s: u32| -> Vec<u32> { (0..n).map(|i| 5 + (i * 31 + s) % 290).collect() };
    check_batched(
        m,
        &[
            (t(20, 1), t(5, 2), LogitRows::All),
            (vec![], t(13, 3), LogitRows::Last),
            (t(3, 4), t(1, 5), LogitRows::All),
            (t(30, 6), t(9, 7), LogitRows::Last),
        ],
    );
    // A bad sequence fails the batch before any cache changes.
    let mut a = m.new_cache(8);
    let mut b = m.new_cache(8);
    let mut items = [
        specdec_engine::BatchItem { cache: &mut a, tokens: &[5, 6], rows: LogitRows::All },
        specdec_engine::BatchItem { cache: &mut b, tokens: &[5, 999], rows: LogitRows::All },
    ];
    assert!(m.forward_batch(&mut items).is_err());
    assert!(a.is_empty() && b.is_empty());
}

#[test]
fn default_model_batched_sequences_equal_sequences_alone() {
    let l = common::load_default();
    let e = |s: &str| l.tokenizer.encode(s, true, false);
    check_batched(
        l.model.as_ref(),
        &[
            (e("The quick brown fox"), e(" jumps over")[1..].to_vec(), LogitRows::All),
            (vec![], e("Speculative decoding verifies drafts"), LogitRows::Last),
            (e("Once upon a time"), vec![235248], LogitRows::All),
        ],
    );
}

/// The R1-family architectures (Qwen2, Llama, DeepSeek-V3 with MoE routing
/// per row) keep rows independent too: chunked passes, rollback, and two
/// sequences batched together equal each alone, bit for bit.
#[test]
fn r1_family_fixtures_are_batch_invariant() {
    use specdec_engine::BatchItem;
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    for arch in ["qwen2", "llama", "deepseek_v3"] {
        let opts = specdec_engine::LoadOptions { threads: 2, force_f32: false };
        let l = specdec_engine::load(&root.join(arch).join("model.gguf"), &opts, &|_, _| {}).unwrap();
        let m = l.model.as_ref();
        let n = m.vocab_size() as u32;
        let toks: Vec<u32> = (0..30).map(|i| (3 + i * 37) % n).collect();
        check(m, &toks);
        // Two sequences in one pass == each alone.
        let (a, b) = (&toks[..11], &toks[5..22]);
        let (mut ca, mut cb) = (m.new_cache(64), m.new_cache(64));
        let both = m
            .forward_batch(&mut [
                BatchItem { cache: &mut ca, tokens: a, rows: LogitRows::All },
                BatchItem { cache: &mut cb, tokens: b, rows: LogitRows::All },
            ])
            .unwrap();
        assert!(both[0] == logits_all_at_once(m, a), "{arch}: sequence a changed by batching");
        assert!(both[1] == logits_all_at_once(m, b), "{arch}: sequence b changed by batching");
        // Greedy passes: argmax ids alone equal the argmax of the logits.
        check_argmax_pass(m, &toks[..10], &toks[10..22]);
        let (mut ca, mut cb) = (m.new_cache(64), m.new_cache(64));
        let ids = m
            .forward_batch_argmax(&mut [
                BatchItem { cache: &mut ca, tokens: a, rows: LogitRows::All },
                BatchItem { cache: &mut cb, tokens: b, rows: LogitRows::Last },
            ])
            .unwrap();
        let v = m.vocab_size();
        let want_a: Vec<u32> = both[0].chunks_exact(v).map(specdec_engine::sampler::argmax).collect();
        assert_eq!(ids[0], want_a, "{arch}: batched argmax of sequence a");
        let last_b = specdec_engine::sampler::argmax(&both[1][both[1].len() - v..]);
        assert_eq!(ids[1], vec![last_b], "{arch}: batched argmax of sequence b's last row");
    }
}

/// A greedy pass that returns only each row's argmax (the logits never
/// stored) must pick what the argmax of the full logits picks, row for row,
/// and leave the same cache.
fn check_argmax_pass(m: &dyn Model, prefix: &[u32], draft: &[u32]) {
    let v = m.vocab_size();
    for rows in [LogitRows::All, LogitRows::Last, LogitRows::None] {
        for k in [1, 5, draft.len()] {
            let (mut c1, mut c2) = (m.new_cache(prefix.len() + k), m.new_cache(prefix.len() + k));
            let a = m.forward(&mut c1, prefix, LogitRows::Last).unwrap();
            let b = m.forward_argmax(&mut c2, prefix, LogitRows::Last).unwrap();
            assert_eq!(b, vec![specdec_engine::sampler::argmax(&a)]);
            let logits = m.forward(&mut c1, &draft[..k], rows).unwrap();
            let ids = m.forward_argmax(&mut c2, &draft[..k], rows).unwrap();
            let want: Vec<u32> = logits.chunks_exact(v).map(specdec_engine::sampler::argmax).collect();
            assert_eq!(ids, want, "{rows:?}, {k} rows");
            // With hidden states (an MTP drafter's verify pass): the same ids,
            // and the hidden states of a logits pass.
            let (mut c3, mut c4) = (m.new_cache(prefix.len() + k), m.new_cache(prefix.len() + k));
            m.forward(&mut c3, prefix, LogitRows::Last).unwrap();
            m.forward(&mut c4, prefix, LogitRows::Last).unwrap();
            if let Ok((l3, h3)) = m.forward_hidden(&mut c3, &draft[..k], rows) {
                let (ids4, h4) = m.forward_hidden_argmax(&mut c4, &draft[..k], rows).unwrap();
                let want3: Vec<u32> = l3.chunks_exact(v).map(specdec_engine::sampler::argmax).collect();
                assert_eq!(ids4, want3, "{rows:?}, {k} rows, with hidden states");
                assert!(h3.iter().zip(&h4).all(|(a, b)| a.to_bits() == b.to_bits()) && h3.len() == h4.len());
            }
            for layer in 0..c1.n_layers {
                let ((k1, v1), (k2, v2)) = (c1.layer(layer), c2.layer(layer));
                assert!(k1.iter().zip(k2).chain(v1.iter().zip(v2)).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    }
    // A server batch with MTP drafters: two sequences, hidden states and
    // argmaxes, against the logits pass of the same batch.
    use specdec_engine::BatchItem;
    let (a, b) = (prefix, draft);
    let run = |argmax: bool| {
        let (mut ca, mut cb) = (m.new_cache(a.len()), m.new_cache(b.len()));
        let mut items = [
            BatchItem { cache: &mut ca, tokens: a, rows: LogitRows::All },
            BatchItem { cache: &mut cb, tokens: b, rows: LogitRows::Last },
        ];
        if argmax {
            m.forward_batch_hidden_argmax(&mut items).map(|(ids, h)| (ids, h, None))
        } else {
            m.forward_batch_hidden(&mut items).map(|(l, h)| {
                let ids = l.iter().map(|l| l.chunks_exact(v).map(specdec_engine::sampler::argmax).collect()).collect();
                (ids, h, Some(l))
            })
        }
    };
    if let Ok((want, h1, Some(logits))) = run(false) {
        let (ids, h2, _) = run(true).unwrap();
        assert_eq!((ids[0].len(), ids[1].len()), (a.len(), 1));
        assert_eq!(logits[1].len(), v);
        assert_eq!(ids, want, "batched argmaxes with hidden states");
        assert_eq!(h1.len(), h2.len());
        for (x, y) in h1.iter().zip(&h2) {
            assert!(x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }
}

#[test]
fn tiny_model_argmax_passes_equal_the_argmax_of_the_logits() {
    let l = common::load_bytes(&common::tiny_gemma3(13, &|_, _| {})).unwrap();
    let prefix: Vec<u32> = (0..20).map(|i| 2 + (i * 41 % 290)).collect();
    let draft: Vec<u32> = (0..12).map(|i| 7 + (i * 29 % 280)).collect();
    check_argmax_pass(l.model.as_ref(), &prefix, &draft);
}

#[test]
fn default_model_argmax_passes_equal_the_argmax_of_the_logits() {
    let l = common::load_default();
    let prefix = l.tokenizer.encode("Greedy verification reads one token per row:", true, false);
    let draft = l.tokenizer.encode(" the argmax of its logits, and nothing else of the row at all.", false, false);
    assert!(draft.len() >= 9);
    check_argmax_pass(l.model.as_ref(), &prefix, &draft[..9]);
}
