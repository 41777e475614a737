#!/usr/bin/env bash
# The test command: formatting, lints, then every test (release mode: the
# model-backed tests run real forward passes). Needs the default model
# (scripts/fetch-model.sh) and ../shared beside the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release --workspace
# The server through the official openai client (skipped when the package is missing).
scripts/test-openai-client.sh
