//! `specdec serve`: loads the model and runs the HTTP server until SIGTERM or Ctrl-C.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use specdec_server::engine::DrafterKind;
use specdec_server::{serve as run_server, ServerConfig};

use crate::commands::{load_model, model_path, mtp_module};
use crate::ModelArgs;

#[derive(clap::Args)]
pub struct Options {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require the key (`Authorization: Bearer KEY` or `X-Api-Key: KEY`) on
    /// every route but /health (default: $SPECDEC_API_KEY if set).
    #[arg(long)]
    api_key: Option<String>,
    /// Sequences decoded at once.
    #[arg(long, default_value_t = 4)]
    max_concurrent: usize,
    /// Requests that may wait beyond those; more are answered 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Context per sequence, prompt plus output (capped by the model's).
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Drafter: none, ngram, suffix, mtp[:HEAD] or auto[:HEAD] (as for
    /// `generate`; requests may turn speculation off
    /// with {"specdec": {"speculate": false}} or cap it with "draft_max").
    #[arg(long, default_value = "ngram")]
    drafter: String,
    /// Most draft tokens per step.
    #[arg(long, default_value_t = 8)]
    draft_max: usize,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    body_limit: usize,
    /// Name reported by /v1/models (default: the model file's stem).
    #[arg(long)]
    model_id: Option<String>,
}

pub fn serve(margs: &ModelArgs, o: Options) -> Result<()> {
    let d = o.drafter.as_str();
    let mtp_like = ["mtp", "auto"].contains(&d) || d.starts_with("mtp:") || d.starts_with("auto:");
    if !mtp_like && DrafterKind::parse(d).is_none() {
        bail!("unknown drafter {d:?} for the server: use none, ngram, suffix, mtp[:HEAD] or auto[:HEAD]");
    }
    if o.max_concurrent == 0 || o.max_concurrent > 256 {
        bail!("--max-concurrent must be in 1..=256");
    }
    if o.draft_max == 0 || o.draft_max > 64 {
        bail!("--draft-max must be in 1..=64");
    }
    if o.ctx < 16 {
        bail!("--ctx must be at least 16");
    }
    let path = model_path(margs)?;
    let model_id = o.model_id.unwrap_or_else(|| {
        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "specdec".into())
    });
    let loaded = Arc::new(load_model(margs, false)?);
    let drafter = match o.drafter.as_str() {
        d @ ("mtp" | "auto") => {
            let (head, label) = mtp_module(&loaded, None)?;
            DrafterKind::Mtp { head, label, auto: d == "auto" }
        }
        d if d.starts_with("mtp:") || d.starts_with("auto:") => {
            let (kind, path) = d.split_once(':').unwrap_or_default();
            let (head, label) = mtp_module(&loaded, Some(Path::new(path)))?;
            DrafterKind::Mtp { head, label, auto: kind == "auto" }
        }
        d => DrafterKind::parse(d).with_context(|| format!("unknown drafter {d:?}"))?,
    };
    let api_key = o.api_key.or_else(|| std::env::var("SPECDEC_API_KEY").ok()).filter(|k| !k.is_empty());
    let cfg = ServerConfig {
        model_id,
        api_key,
        max_concurrent: o.max_concurrent,
        max_queue: o.max_queue,
        ctx: o.ctx.min(loaded.model.max_context()),
        drafter,
        draft_max: o.draft_max,
        body_limit: o.body_limit,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = format!("{}:{}", o.host, o.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
        eprintln!(
            "specdec serving {} on http://{} (drafter {}, draft max {}, {} concurrent, context {})",
            cfg.model_id,
            listener.local_addr()?,
            o.drafter,
            cfg.draft_max,
            cfg.max_concurrent,
            cfg.ctx
        );
        run_server(listener, loaded, cfg, shutdown_signal()).await.context("serving")?;
        eprintln!("specdec: shut down cleanly");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
