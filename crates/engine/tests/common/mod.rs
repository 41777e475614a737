#![allow(dead_code)]
use std::path::PathBuf;

use specdec_engine::{load, LoadOptions, Loaded};

pub fn default_model() -> PathBuf {
    if let Ok(p) = std::env::var("SPECDEC_MODEL") {
        return p.into();
    }
    let p = specdec_engine::default_model_path();
    assert!(p.exists(), "default model missing at {}: run scripts/fetch-model.sh", p.display());
    p
}

pub fn load_default() -> Loaded {
    load(&default_model(), &LoadOptions::default(), &|_, _| {}).unwrap()
}

pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

pub fn read_jsonl(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[allow(unused_imports)]
pub use specdec_engine::fixtures::tiny_gemma3;

/// Writes bytes to a fresh temporary file and loads them as a model.
pub fn load_bytes(bytes: &[u8]) -> Result<Loaded, specdec_engine::EngineError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "specdec-test-{}-{}.gguf",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&p, bytes).unwrap();
    let r = load(&p, &LoadOptions { threads: 2, force_f32: false }, &|_, _| {});
    let _ = std::fs::remove_file(&p);
    r
}
