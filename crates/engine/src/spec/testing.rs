//! Drafters for tests: always wrong, always right, adversarial.

use super::{Draft, Drafter};
use crate::rng::Rng;

/// Random ids: almost always wrong.
pub struct RandomDrafter {
    pub vocab: u32,
    rng: Rng,
}

impl RandomDrafter {
    pub fn new(vocab: u32, seed: u64) -> Self {
        RandomDrafter { vocab, rng: Rng::new(seed) }
    }
}

impl Drafter for RandomDrafter {
    fn name(&self) -> String {
        "random".into()
    }
    fn begin(&mut self, _: &[u32]) {}
    fn accept(&mut self, _: &[u32]) {}
    fn propose(&mut self, _: &[u32], k: usize) -> Draft {
        let tokens: Vec<u32> = (0..k).map(|_| (self.rng.next_u64() % self.vocab as u64) as u32).collect();
        Draft { confidence: vec![1.0; tokens.len()], tokens, ..Default::default() }
    }
}

/// Proposes the continuation of a known reference output (always right as
/// long as the output follows the reference).
pub struct OracleDrafter {
    pub reference: Vec<u32>,
    prompt_len: usize,
}

impl OracleDrafter {
    pub fn new(reference: Vec<u32>) -> Self {
        OracleDrafter { reference, prompt_len: 0 }
    }
}

impl Drafter for OracleDrafter {
    fn name(&self) -> String {
        "oracle".into()
    }
    fn begin(&mut self, prompt: &[u32]) {
        self.prompt_len = prompt.len();
    }
    fn accept(&mut self, _: &[u32]) {}
    fn propose(&mut self, ctx: &[u32], k: usize) -> Draft {
        let done = ctx.len().saturating_sub(self.prompt_len);
        let tokens: Vec<u32> = self.reference.iter().skip(done).take(k).copied().collect();
        Draft { confidence: vec![1.0; tokens.len()], tokens, ..Default::default() }
    }
}

/// End-of-sequence, out-of-vocabulary and maximal ids.
pub struct AdversarialDrafter {
    pub eos: u32,
    pub vocab: u32,
    step: usize,
}

impl AdversarialDrafter {
    pub fn new(eos: u32, vocab: u32) -> Self {
        AdversarialDrafter { eos, vocab, step: 0 }
    }
}

impl Drafter for AdversarialDrafter {
    fn name(&self) -> String {
        "adversarial".into()
    }
    fn begin(&mut self, _: &[u32]) {}
    fn accept(&mut self, _: &[u32]) {}
    fn propose(&mut self, _: &[u32], k: usize) -> Draft {
        self.step += 1;
        let pool = [self.eos, self.vocab, self.vocab + 7, u32::MAX, 0];
        let tokens: Vec<u32> = (0..k).map(|i| pool[(self.step + i) % pool.len()]).collect();
        Draft { confidence: vec![1.0; tokens.len()], tokens, ..Default::default() }
    }
}
