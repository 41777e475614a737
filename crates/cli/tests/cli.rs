//! The `specdec` binary as a user meets it.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_specdec"))
}

fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("specdec-cli-{}-{name}", std::process::id()))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let o = bin().args(args).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn tokenize_jsonl_matches_llama_cpp() {
    let f = shared().join("reference/gemma-3-270m/tokenize-dev.jsonl");
    let (ok, out, err) = run(&["tokenize", "--input-jsonl", f.to_str().unwrap()]);
    assert!(ok, "{err}");
    let want: Vec<Value> =
        std::fs::read_to_string(&f).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g["ids"], w["ids"], "{}", w["text"]);
    }
}

#[test]
fn generate_json_plain_and_speculative_agree() {
    let f = tmp("prompts.jsonl");
    std::fs::write(&f, "{\"prompt\": \"The capital of France is\"}\n{\"prompt\": \"1, 2, 3, 4, 5,\"}\n").unwrap();
    let mut outs = vec![];
    for d in ["none", "ngram", "suffix"] {
        let (ok, out, err) =
            run(&["generate", "--input-jsonl", f.to_str().unwrap(), "-n", "24", "--json", "--drafter", d]);
        assert!(ok, "{err}");
        let objs: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(objs.len(), 2);
        for o in &objs {
            assert!(o["prompt_ids"].as_array().unwrap().len() > 1);
            assert!(o["text"].is_string());
            for k in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
                assert!(o["stats"][k].as_f64().unwrap() > 0.0, "{k}");
            }
            if d != "none" {
                for k in ["num_drafts", "num_draft_tokens", "num_accepted_tokens", "mean_acceptance_length"] {
                    assert!(o["stats"][k].is_number(), "{k} missing");
                }
            }
        }
        outs.push(objs.iter().map(|o| o["output_ids"].clone()).collect::<Vec<_>>());
    }
    assert_eq!(outs[0], outs[1], "ngram changed the output");
    assert_eq!(outs[0], outs[2], "suffix changed the output");
    let _ = std::fs::remove_file(f);
}

#[test]
fn clear_errors_for_bad_input() {
    let (ok, _, err) = run(&["generate", "--model", "/nonexistent.gguf", "--prompt", "x"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    let junk = tmp("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    let (ok, _, err) = run(&["inspect", "--model", junk.to_str().unwrap()]);
    assert!(!ok && err.contains("magic"), "{err}");
    let (ok, _, err) = run(&["generate", "--prompt", "x", "--drafter", "bogus"]);
    assert!(!ok && err.contains("unknown drafter"), "{err}");
    let (ok, _, err) = run(&["generate", "--prompt", "x", "--temperature=-1"]);
    assert!(!ok && err.contains("temperature"), "{err}");
    // A draft model with another vocabulary is refused with a reason.
    let tiny = tmp("tiny.gguf");
    std::fs::write(&tiny, specdec_engine::fixtures::tiny_gemma3(1, &|_, _| {})).unwrap();
    let d = format!("model:{}", tiny.display());
    let (ok, _, err) = run(&["generate", "--prompt", "x", "--drafter", &d]);
    assert!(!ok && err.contains("cannot draft for this target"), "{err}");
    // The server refuses bad settings before loading anything.
    let (ok, _, err) = run(&["serve", "--drafter", "model:x.gguf"]);
    assert!(!ok && err.contains("unknown drafter"), "{err}");
    let (ok, _, err) = run(&["serve", "--max-concurrent", "0"]);
    assert!(!ok && err.contains("--max-concurrent"), "{err}");
    let (ok, _, err) = run(&["serve", "--model", "/nonexistent.gguf"]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    let _ = std::fs::remove_file(junk);
    let _ = std::fs::remove_file(tiny);
}

#[test]
fn bench_writes_json_markdown_and_chart() {
    let f = tmp("bench.jsonl");
    std::fs::write(
        &f,
        "{\"question_id\": 1, \"category\": \"copy\", \"turns\": [\"a b c d a b c d a b c d a b\"]}\n\
         {\"question_id\": 2, \"category\": \"open\", \"turns\": [\"Once upon a time\"]}\n",
    )
    .unwrap();
    let (j, md, svg) = (tmp("b.json"), tmp("b.md"), tmp("b.svg"));
    let (ok, out, err) = run(&[
        "bench",
        "--prompts",
        f.to_str().unwrap(),
        "--drafter",
        "ngram",
        "--max-tokens",
        "16",
        "--json",
        j.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("identical"), "{out}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
    let prompts = v["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 2);
    for p in prompts {
        for k in ["question_id", "category", "plain_s", "spec_s", "identical", "n_tokens", "mean_accepted_length"] {
            assert!(!p[k].is_null(), "{k}");
        }
        assert_eq!(p["identical"], Value::Bool(true));
    }
    assert!(std::fs::read_to_string(&md).unwrap().contains("| copy |"));
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    for p in [f, j, md, svg] {
        let _ = std::fs::remove_file(p);
    }
}

fn fixture(arch: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(arch)
}

/// DeepSeek's absorbed MLA cache is (kv_lora_rank + qk_rope_head_dim) floats
/// per token per layer, from GGUF and from the HF directory alike.
#[test]
fn inspect_reports_the_absorbed_mla_cache() {
    for path in [fixture("deepseek_v3").join("model.gguf"), fixture("deepseek_v3").join("hf")] {
        let (ok, out, err) = run(&["inspect", "--model", path.to_str().unwrap()]);
        assert!(ok, "{err}");
        assert!(out.contains("160 bytes per token per layer = (kv_lora_rank 32 + qk_rope_head_dim 8)"), "{out}");
        assert!(out.contains("architecture: deepseek2"), "{out}");
    }
}

/// A Hugging Face directory works wherever a GGUF file does.
#[test]
fn generate_from_hf_directory_equals_gguf() {
    let mut outs = Vec::new();
    for path in [fixture("qwen2").join("model.gguf"), fixture("qwen2").join("hf")] {
        let (ok, out, err) = run(&[
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt",
            "The quick brown fox",
            "--max-tokens",
            "10",
            "--drafter",
            "ngram",
            "--json",
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        outs.push(v["output_ids"].clone());
    }
    assert!(outs[0].as_array().is_some_and(|a| !a.is_empty()));
    assert_eq!(outs[0], outs[1]);
}

/// `specdec chat` on the default model (Gemma's built-in template): one reply
/// with speed and acceptance per turn, /reset and /exit handled.
#[test]
fn chat_answers_each_turn_with_stats() {
    use std::io::Write;
    let mut child = bin()
        .args(["chat", "--drafter", "ngram", "-n", "8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Hello\n/reset\nName a colour.\n/exit\nnever read\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(err.matches("tok/s, mean acceptance length").count(), 2, "{err}");
    assert!(err.contains("[conversation cleared]"), "{err}");
}

#[test]
fn distill_writes_a_head_that_drafts_losslessly() {
    let dir = tmp("distill");
    std::fs::create_dir_all(&dir).unwrap();
    let tiny = dir.join("tiny.gguf");
    std::fs::write(&tiny, specdec_engine::fixtures::tiny_gemma3(2, &|_, _| {})).unwrap();
    let data = dir.join("data.txt");
    std::fs::write(&data, "hello abc ab c a he llo b\n".repeat(200)).unwrap();
    let head = dir.join("tiny.mtp.gguf");
    let (t, d, h) = (tiny.to_str().unwrap(), data.to_str().unwrap(), head.to_str().unwrap());
    let (ok, out, err) =
        run(&["distill", "--model", t, "--data", d, "--out", h, "--steps", "4", "--seq-len", "8", "--batch", "2"]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote") && head.is_file(), "{out}");

    // Greedy output is the same with the head, alone and in auto.
    let gen = |drafter: &str| {
        let (ok, out, err) = run(&[
            "generate",
            "--model",
            t,
            "--prompt",
            "hello abc",
            "--max-tokens",
            "24",
            "--json",
            "--drafter",
            drafter,
        ]);
        assert!(ok, "{drafter}: {err}");
        let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        v["output_ids"].clone()
    };
    let plain = gen("none");
    assert_eq!(gen(&format!("mtp:{h}")), plain);
    assert_eq!(gen(&format!("auto:{h}")), plain);

    // A head is not a model, a missing head is a clear error, and a head for
    // another model is refused.
    let (ok, _, err) = run(&["generate", "--model", h, "--prompt", "x"]);
    assert!(!ok && err.contains("MTP head, not a model"), "{err}");
    let (ok, _, err) = run(&["generate", "--model", t, "--prompt", "x", "--drafter", "mtp:/nonexistent.gguf"]);
    assert!(!ok && err.contains("/nonexistent.gguf"), "{err}");
    let other = dir.join("other.gguf");
    std::fs::write(&other, specdec_engine::fixtures::tiny_gemma3(3, &|_, _| {})).unwrap();
    let o = other.to_str().unwrap();
    let (ok, _, err) = run(&["generate", "--model", o, "--prompt", "x", "--drafter", &format!("mtp:{h}")]);
    assert!(!ok && err.contains("trained for another model"), "{err}");
    // Bad settings are refused before training.
    let (ok, _, err) = run(&["distill", "--model", t, "--data", d, "--out", h, "--seq-len", "4096"]);
    assert!(!ok && err.contains("--seq-len"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
