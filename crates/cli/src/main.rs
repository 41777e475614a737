//! `specdec`: generate, tokenize, inspect and profile GGUF models on the CPU.

mod bench;
mod chat;
mod commands;
mod distill;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "specdec", version, about = "Lossless speculative decoding engine for GGUF models (CPU)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// GGUF model file, or a Hugging Face checkpoint directory (config.json,
    /// *.safetensors, tokenizer.json; llama, qwen2). Default: the default model in $SPECDEC_HOME/models
    /// (~/.cache/specdec/models/gemma-3-270m-q4_k_m.gguf); fetch it with
    /// scripts/fetch-model.sh.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

#[derive(clap::Args, Clone)]
pub struct SampleArgs {
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalise recently seen tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args, Clone)]
pub struct SpecArgs {
    /// Drafter: none (plain decoding), ngram (prompt lookup), suffix (suffix
    /// trie over prompt, output and earlier outputs), mtp (the model's own
    /// Multi-Token-Prediction module: DeepSeek-V3/R1; for other models the
    /// head shipped in assets/heads/), mtp:PATH (a head made by `specdec
    /// distill`), auto or auto:PATH (per step a long suffix match, else the
    /// MTP head), or model:PATH (a draft model sharing the target's
    /// vocabulary).
    #[arg(long, default_value = "none")]
    pub drafter: String,
    /// Most draft tokens per step; the adaptive controller picks k <= this
    /// (16: a verify pass of 16 rows costs about twice one row here, which
    /// repetitive and copied text fills).
    #[arg(long, default_value_t = 16)]
    pub draft_max: usize,
    /// Always draft exactly --draft-max tokens when the drafter has them
    /// (turns the adaptive controller off).
    #[arg(long)]
    pub fixed_k: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt (or a JSONL file of prompts).
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt (plain text; BOS is added as the model's metadata says).
        #[arg(long, short = 'p', conflicts_with = "input_jsonl")]
        prompt: Option<String>,
        /// JSONL file with one {"prompt": ...} object per line.
        #[arg(long)]
        input_jsonl: Option<PathBuf>,
        /// Maximum new tokens per prompt.
        #[arg(long, short = 'n', default_value_t = 128)]
        max_tokens: usize,
        #[command(flatten)]
        sample: SampleArgs,
        #[command(flatten)]
        spec: SpecArgs,
        /// Print one JSON object per prompt instead of streaming text.
        #[arg(long)]
        json: bool,
    },
    /// Chat in the terminal through the model's chat template, with
    /// speculative decoding; shows <think> reasoning apart from the answer and
    /// speed and acceptance after each reply. Reads one user turn per line.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        /// A system message opening the conversation.
        #[arg(long)]
        system: Option<String>,
        /// Maximum new tokens per reply.
        #[arg(long, short = 'n', default_value_t = 1024)]
        max_tokens: usize,
        #[command(flatten)]
        sample: SampleArgs,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Run plain and speculative decoding side by side on Spec-Bench-format
    /// prompts (turns[0] of each line) and report speedups per category.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// JSONL file with question_id, category and turns.
        #[arg(long)]
        prompts: PathBuf,
        #[command(flatten)]
        spec: SpecArgs,
        /// New tokens per prompt.
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        /// Use only the first N prompts of each category (0 = all).
        #[arg(long, default_value_t = 0)]
        per_category: usize,
        /// Write the per-prompt results and summary as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a markdown table here.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write an SVG bar chart of speedup per category here.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
    /// Train an MTP draft head for the model from the model itself
    /// (self-distillation; use it with --drafter mtp:PATH or auto:PATH).
    Distill {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        opts: distill::Options,
    },
    /// Print token ids of text.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Text to tokenize.
        #[arg(long, conflicts_with = "input_jsonl")]
        text: Option<String>,
        /// JSONL file with {"text", "add_bos", "parse_special"} per line.
        #[arg(long)]
        input_jsonl: Option<PathBuf>,
    },
    /// Show a GGUF file's metadata, tensors and memory needs.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Print every tensor.
        #[arg(long)]
        tensors: bool,
    },
    /// Serve an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions,
    /// /v1/models, /health, /metrics) with speculative decoding.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        opts: serve::Options,
    },
    /// Measure bandwidth, decode, prefill and verify-pass speed.
    Profile {
        #[command(flatten)]
        model: ModelArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Repetitions of each timed pass (medians are reported).
        #[arg(long, default_value_t = 7)]
        reps: usize,
        /// Profile random weights with a real model's shapes and llama.cpp's
        /// Q4_K_M type mix instead of --model: r1-distill-qwen-1.5b,
        /// r1-distill-qwen-7b, r1-distill-llama-8b.
        #[arg(long, value_name = "NAME", conflicts_with = "model")]
        synthetic: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Generate { model, prompt, input_jsonl, max_tokens, sample, spec, json } => {
            commands::generate(&model, prompt, input_jsonl, max_tokens, &sample, &spec, json)
        }
        Cmd::Bench { model, prompts, spec, max_tokens, per_category, json, markdown, svg } => {
            bench::bench(&model, &prompts, &spec, max_tokens, per_category, json, markdown, svg)
        }
        Cmd::Chat { model, system, max_tokens, sample, spec } => chat::chat(&model, system, max_tokens, &sample, &spec),
        Cmd::Tokenize { model, text, input_jsonl } => commands::tokenize(&model, text, input_jsonl),
        Cmd::Inspect { model, tensors } => commands::inspect(&model, tensors),
        Cmd::Profile { model, json, reps, synthetic } => commands::profile(&model, json, reps, synthetic.as_deref()),
        Cmd::Serve { model, opts } => serve::serve(&model, opts),
        Cmd::Distill { model, opts } => distill::distill(&model, &opts),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
