//! `specdec bench`: plain vs speculative decoding on Spec-Bench-format prompts,
//! side by side in one process, greedy. Reports per-category and overall
//! speedup (ratio of summed wall times), mean accepted length and tokens/s,
//! and checks that every speculative output equals the plain one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use specdec_engine::sampler::SamplingParams;

use crate::commands::{controller, load_model, make_drafter, read_jsonl, run_one};
use crate::{ModelArgs, SpecArgs};

struct Row {
    question_id: Value,
    category: String,
    plain_s: f64,
    spec_s: f64,
    plain_decode_s: f64,
    spec_decode_s: f64,
    identical: bool,
    n_tokens: usize,
    mean_accepted_length: f64,
    drafts: usize,
    accepted: usize,
    text: String,
}

#[allow(clippy::too_many_arguments)]
pub fn bench(
    m: &ModelArgs,
    prompts_path: &Path,
    spec: &SpecArgs,
    max_tokens: usize,
    per_category: usize,
    json_out: Option<PathBuf>,
    md_out: Option<PathBuf>,
    svg_out: Option<PathBuf>,
) -> Result<()> {
    if spec.drafter == "none" {
        bail!("bench compares a drafter against plain decoding: give --drafter ngram|suffix|model:PATH");
    }
    let lines = read_jsonl(prompts_path)?;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut items = Vec::new();
    for (i, v) in lines.iter().enumerate() {
        let cat = v["category"].as_str().unwrap_or("uncategorised").to_string();
        let text = v["turns"][0]
            .as_str()
            .with_context(|| format!("{}: line {} has no turns[0] string", prompts_path.display(), i + 1))?;
        let n = seen.entry(cat.clone()).or_default();
        if per_category > 0 && *n >= per_category {
            continue;
        }
        *n += 1;
        items.push((v["question_id"].clone(), cat, text.to_string()));
    }
    let params = SamplingParams::default();
    let loaded = load_model(m, false)?;
    let mut drafter = make_drafter(spec, &loaded, &params, m.threads)?;
    let mut ctl = controller(spec)?;
    let tok = &loaded.tokenizer;

    // Warm-up: page in the weights and spin up the threads.
    let warm = tok.encode("Hello", true, false);
    run_one(&loaded, None, &mut ctl, &warm, 4, &params, &mut |_| {})?;

    let bar = indicatif::ProgressBar::new(items.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} {msg} {elapsed}/{eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let mut rows = Vec::new();
    for (i, (qid, cat, text)) in items.iter().enumerate() {
        let ids = tok.encode(text, true, false);
        type Once = (Vec<u32>, (f64, f64), Option<specdec_engine::spec::SpecStats>);
        let mut once = |spec_on: bool| -> Result<Once> {
            let d = if spec_on { drafter.as_mut() } else { None };
            let (t, st, sp, _) = run_one(&loaded, d, &mut ctl, &ids, max_tokens, &params, &mut |_| {})?;
            Ok((t, (st.prefill_s + st.decode_s, st.decode_s), sp))
        };
        // Alternate the order so slow drift of the machine hits both sides.
        let ((pt, ps, _), (st, ss, sp)) = if i % 2 == 0 {
            let a = once(false)?;
            (a, once(true)?)
        } else {
            let b = once(true)?;
            (once(false)?, b)
        };
        let sp = sp.unwrap_or_default();
        let row = Row {
            question_id: qid.clone(),
            category: cat.clone(),
            plain_s: ps.0,
            spec_s: ss.0,
            plain_decode_s: ps.1,
            spec_decode_s: ss.1,
            identical: pt == st,
            n_tokens: pt.len(),
            mean_accepted_length: sp.mean_acceptance_length(),
            drafts: sp.num_drafts,
            accepted: sp.num_accepted_tokens,
            text: tok.decode(&pt, false),
        };
        bar.set_message(format!("{cat}: {:.2}x", ps.0 / ss.0));
        bar.inc(1);
        rows.push(row);
    }
    bar.finish_and_clear();

    // Summaries per category and overall.
    let mut cats: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for r in &rows {
        cats.entry(r.category.clone()).or_default().push(r);
    }
    let summarize = |rs: &[&Row]| -> Value {
        let plain: f64 = rs.iter().map(|r| r.plain_s).sum();
        let specs: f64 = rs.iter().map(|r| r.spec_s).sum();
        let plain_dec: f64 = rs.iter().map(|r| r.plain_decode_s).sum();
        let spec_dec: f64 = rs.iter().map(|r| r.spec_decode_s).sum();
        let toks: usize = rs.iter().map(|r| r.n_tokens).sum();
        let drafts: usize = rs.iter().map(|r| r.drafts).sum();
        let acc: usize = rs.iter().map(|r| r.accepted).sum();
        json!({
            "prompts": rs.len(),
            "speedup": plain / specs.max(1e-9),
            // The same ratio without the (identical) prompt processing.
            "decode_speedup": plain_dec / spec_dec.max(1e-9),
            "mean_accepted_length": if drafts == 0 { 1.0 } else { 1.0 + acc as f64 / drafts as f64 },
            "plain_tokens_per_s": toks as f64 / plain.max(1e-9),
            "spec_tokens_per_s": toks as f64 / specs.max(1e-9),
            "identical": rs.iter().all(|r| r.identical),
            "n_tokens": toks,
        })
    };
    let mut per_cat = serde_json::Map::new();
    for (c, rs) in &cats {
        per_cat.insert(c.clone(), summarize(rs));
    }
    let all: Vec<&Row> = rows.iter().collect();
    let overall = summarize(&all);
    let n_diff = rows.iter().filter(|r| !r.identical).count();

    let mut md = String::new();
    writeln!(
        md,
        "| category | prompts | speedup | decode-only speedup | mean accepted length | plain tok/s | spec tok/s |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    let line = |md: &mut String, name: &str, s: &Value| {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.2}x | {:.2}x | {:.2} | {:.1} | {:.1} |",
            s["prompts"],
            s["speedup"].as_f64().unwrap_or(0.0),
            s["decode_speedup"].as_f64().unwrap_or(0.0),
            s["mean_accepted_length"].as_f64().unwrap_or(0.0),
            s["plain_tokens_per_s"].as_f64().unwrap_or(0.0),
            s["spec_tokens_per_s"].as_f64().unwrap_or(0.0)
        );
    };
    for (c, s) in &per_cat {
        line(&mut md, c, s);
    }
    line(&mut md, "**overall**", &overall);
    println!("drafter {}, {} prompts, {} new tokens each, greedy", spec.drafter, rows.len(), max_tokens);
    println!("{md}");
    if n_diff > 0 {
        println!("WARNING: {n_diff} speculative outputs differ from plain decoding");
    } else {
        println!("all speculative outputs identical to plain decoding");
    }

    if let Some(p) = json_out {
        let prompts: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "question_id": r.question_id,
                    "category": r.category,
                    "plain_s": r.plain_s,
                    "spec_s": r.spec_s,
                    "plain_decode_s": r.plain_decode_s,
                    "spec_decode_s": r.spec_decode_s,
                    "identical": r.identical,
                    "n_tokens": r.n_tokens,
                    "mean_accepted_length": r.mean_accepted_length,
                    "text": r.text,
                })
            })
            .collect();
        let obj = json!({
            "drafter": spec.drafter,
            "draft_max": spec.draft_max,
            "fixed_k": spec.fixed_k,
            "max_tokens": max_tokens,
            "prompts": prompts,
            "categories": per_cat,
            "overall": overall,
            "all_identical": n_diff == 0,
        });
        std::fs::write(&p, serde_json::to_string_pretty(&obj)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = md_out {
        std::fs::write(&p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = svg_out {
        std::fs::write(&p, svg_chart(&per_cat, &overall, &spec.drafter))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if n_diff > 0 {
        bail!("{n_diff} outputs were not identical: the lossless contract is broken");
    }
    Ok(())
}

/// A horizontal bar chart of speedup per category, with a line at 1x.
fn svg_chart(per_cat: &serde_json::Map<String, Value>, overall: &Value, drafter: &str) -> String {
    let mut bars: Vec<(String, f64)> =
        per_cat.iter().map(|(c, s)| (c.clone(), s["speedup"].as_f64().unwrap_or(0.0))).collect();
    bars.push(("overall".into(), overall["speedup"].as_f64().unwrap_or(0.0)));
    let max = bars.iter().map(|b| b.1).fold(2.0f64, f64::max).ceil();
    let (left, width, row) = (140.0, 420.0, 24.0);
    let height = 50.0 + row * bars.len() as f64;
    let x = |v: f64| left + width * v / max;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n",
        left + width + 60.0
    );
    let _ =
        writeln!(s, "<text x=\"10\" y=\"18\" font-size=\"14\">speedup over plain decoding ({drafter}, greedy)</text>");
    for (i, (name, v)) in bars.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        let color = if *v >= 1.0 { "#4a7" } else { "#c55" };
        let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>", left - 6.0, y + 15.0);
        let _ = writeln!(
            s,
            "<rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{color}\"/>",
            x(*v) - left,
            row - 6.0
        );
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\">{v:.2}x</text>", x(*v) + 4.0, y + 15.0);
    }
    let _ = writeln!(
        s,
        "<line x1=\"{:.1}\" y1=\"26\" x2=\"{:.1}\" y2=\"{}\" stroke=\"#333\" stroke-dasharray=\"4 3\"/>",
        x(1.0),
        x(1.0),
        height - 10.0
    );
    s.push_str("</svg>\n");
    s
}
