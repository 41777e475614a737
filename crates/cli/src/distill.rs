//! `specdec distill`: the command-line edge of `specdec_distill`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use specdec_distill::{distill as run, DistillConfig, StepReport};

use crate::commands::load_model;
use crate::ModelArgs;

#[derive(clap::Args, Clone)]
pub struct Options {
    /// Training text: .txt files (read whole) or .jsonl files with a "text"
    /// field per line. Repeat or separate with commas.
    #[arg(long, required = true, value_delimiter = ',')]
    pub data: Vec<PathBuf>,
    /// Where to write the head (GGUF). A checkpoint goes beside it
    /// (<out>.ckpt.safetensors).
    #[arg(long, default_value = "head.mtp.gguf")]
    pub out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 400)]
    pub steps: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence (at most the head block's attention window).
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Peak learning rate (AdamW, warm-up then cosine decay to 10%).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    /// The head scores only this many of the most frequent tokens of the
    /// data (verification keeps the full vocabulary).
    #[arg(long, default_value_t = 16384)]
    pub draft_vocab: usize,
    /// Also train on this many greedy continuations by the model itself.
    #[arg(long, default_value_t = 0)]
    pub self_gen: usize,
    /// Prompts for the self-generated sequences, one per line (`\n` for a
    /// line break inside one): the model continues each to --seq-len tokens
    /// and trains on its own text. Without it, --self-gen continues openings
    /// of the data. With --self-gen N, only the first N prompts.
    #[arg(long)]
    pub self_gen_prompts: Option<PathBuf>,
    /// Train the head unrolled to this many chained drafts (1: the first
    /// draft only; 2: also the second, drafted from the head's own output,
    /// as it chains at inference). Each extra depth costs about one more
    /// forward and backward pass of the head per step.
    #[arg(long, default_value_t = 3)]
    pub depth: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint (and evaluate, and write the head) every N steps.
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue from the checkpoint beside --out if there is one.
    #[arg(long)]
    pub resume: bool,
    /// Stop after this step (head and checkpoint written; --resume goes on
    /// with the same schedule): to spread a run over several sittings.
    #[arg(long)]
    pub stop_after: Option<usize>,
}

pub fn distill(model: &ModelArgs, o: &Options) -> Result<()> {
    let target = load_model(model, false)?;
    let cfg = DistillConfig {
        data: o.data.clone(),
        out: o.out.clone(),
        steps: o.steps,
        batch: o.batch,
        seq_len: o.seq_len,
        lr: o.lr,
        draft_vocab: o.draft_vocab,
        self_gen: o.self_gen,
        self_gen_prompts: o.self_gen_prompts.clone(),
        depth: o.depth,
        seed: o.seed,
        checkpoint_every: o.checkpoint_every.max(1),
        resume: o.resume,
        ..DistillConfig::default()
    };
    let bar = indicatif::ProgressBar::new(o.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>15} [{bar:30}] {pos}/{len} {elapsed}/{eta} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let mut last_eval = String::new();
    let summary = run(&target, &cfg, &mut |r: &StepReport| {
        bar.set_prefix(r.phase);
        bar.set_length(r.steps as u64);
        bar.set_position(r.step as u64);
        if let Some(e) = &r.eval_agree {
            last_eval = format!(" held-out agree {}", agree_text(e));
            bar.suspend(|| {
                eprintln!("step {}: loss {:.3}, agree {:.1}%,{}", r.step, r.loss, 100.0 * r.agree, last_eval)
            });
        }
        if std::env::var_os("SPECDEC_DISTILL_LOG").is_some() && r.phase == "training" {
            bar.suspend(|| {
                eprintln!(
                    "step {}: loss {:.4} agree {:.3} teacher {:.2}s step {:.2}s",
                    r.step, r.loss, r.agree, r.teacher_secs, r.step_secs
                )
            });
        }
        if r.phase == "training" {
            bar.set_message(format!(
                "loss {:.3} agree {:.1}% {:.0} tok/s{}",
                r.loss,
                100.0 * r.agree,
                r.tokens_per_sec,
                last_eval
            ));
        }
        o.stop_after.is_none_or(|s| r.step < s)
    })
    .context("distilling")?;
    bar.finish_and_clear();
    println!(
        "wrote {} ({:.1} MiB): {} parameters, draft vocabulary {}, {} training sequences, {} tokens seen, final loss {:.3}, held-out top-1 agreement {}",
        summary.out.display(),
        summary.out_bytes as f64 / (1 << 20) as f64,
        summary.params,
        summary.draft_vocab,
        summary.train_seqs,
        summary.tokens_seen,
        summary.final_loss,
        agree_text(&summary.eval_agree)
    );
    Ok(())
}

/// "37.4% (chained: 21.0%, 15.2%)": held-out agreement of the first draft,
/// then of each chained depth trained.
fn agree_text(per_depth: &[f64]) -> String {
    let pct = |x: &f64| format!("{:.1}%", 100.0 * x);
    match per_depth.split_first() {
        None => "-".into(),
        Some((first, [])) => pct(first),
        Some((first, rest)) => {
            format!("{} (chained: {})", pct(first), rest.iter().map(pct).collect::<Vec<_>>().join(", "))
        }
    }
}
