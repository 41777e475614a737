//! Any byte string must parse to Ok or a typed error: no panic, no unbounded
//! allocation. When it parses, building a tokenizer from it must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = specdec_gguf::parse(data) {
        for t in &g.tensors {
            assert!(t.offset + t.n_bytes <= data.len() as u64);
        }
        if let Ok(tok) = specdec_tokenizer::Tokenizer::from_gguf(&g) {
            let ids = tok.encode("Hello <bos> world \u{1F600}", true, true);
            let _ = tok.decode(&ids, true);
        }
    }
});
