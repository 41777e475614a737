#!/usr/bin/env python3
"""Writes a Spec-Bench-format JSONL of "copy" prompts: a prose paragraph from
the licence texts Debian ships in /usr/share/common-licenses, followed by
"Repeat the paragraph above exactly:". These measure how fast an engine follows
text already in the prompt (the case prompt-lookup and suffix drafters target).

Usage: scripts/make-copy-prompts.py > docs/bench/copy-prompts.jsonl
"""
import json
import re
import sys

SOURCES = ["Apache-2.0", "MPL-2.0", "GPL-3", "LGPL-3", "GFDL-1.3", "Artistic", "CC0-1.0"]
out = []
for name in SOURCES:
    try:
        text = open(f"/usr/share/common-licenses/{name}", encoding="utf-8").read()
    except OSError:
        continue
    for para in re.split(r"\n\s*\n", text):
        words = " ".join(para.split())
        # Prose paragraphs of a useful length only.
        if 60 <= len(words.split()) <= 140 and words.count(".") >= 2 and not words.isupper():
            out.append(words)
for i, para in enumerate(out[:24]):
    prompt = f"{para}\n\nRepeat the paragraph above exactly:\n\n"
    print(json.dumps({"question_id": 1000 + i, "category": "copy", "turns": [prompt]}))
print(f"{min(len(out), 24)} prompts", file=sys.stderr)
