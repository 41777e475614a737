//! Lossless speculative decoding.
//!
//! Vocabulary (vLLM's): the *target* is the model whose output we must
//! reproduce; a *drafter* proposes a *draft* of k tokens; one target pass over
//! `[last, d1..dk]` gives p (target probabilities) for every position; the
//! *verifier* accepts a prefix of the draft (`accepted`) and adds one *bonus*
//! token from the target; the KV cache rolls back past the accepted prefix.
//!
//! Greedy output equals plain greedy output token for token for every drafter,
//! because the target's forward pass is batch-invariant (a row's logits do not
//! depend on how many rows share the pass) and the verifier only ever emits
//! the target's own choice.

pub mod auto;
pub mod controller;
pub mod drafter;
pub mod generate;
pub mod model_drafter;
pub mod mtp;
pub mod ngram;
pub mod suffix;
pub mod testing;
pub mod verify;

pub use controller::Controller;
pub use drafter::{confidence_class, match_class, Draft, Drafter, EVIDENCE_CLASSES};
pub use generate::{generate_spec, Pass, Session, SpecOutput, SpecStats};
