"""Drives a running `specdec serve` with the official `openai` Python client.

Usage: python3 tests/openai_client.py BASE_URL API_KEY
Checks chat and completions, streaming and not (streamed text equals
non-streamed text, chunks are whole characters), speculation on/off giving the
same greedy text, usage, errors as the client's typed exceptions, and that the
Prometheus metrics move as expected. Exits non-zero on the first failure.
"""
import re
import sys
import urllib.request

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def metrics():
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {key}"})
    text = urllib.request.urlopen(req, timeout=30).read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(specdec:[a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


models = client.models.list()
model = models.data[0].id
check(len(models.data) == 1 and model, f"models.list -> {model}")

m0 = metrics()
completion_tokens = 0

prompts = [
    "The capital of France is",
    "Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
    "日本の首都は",
    "Emoji test: 🎉🎉 and more 🎉",
]
for p in prompts:
    plain = client.completions.create(model=model, prompt=p, max_tokens=40, temperature=0,
                                      extra_body={"specdec": {"speculate": False}})
    spec = client.completions.create(model=model, prompt=p, max_tokens=40, temperature=0)
    check(spec.choices[0].text == plain.choices[0].text, f"completions: speculation on == off for {p[:20]!r}")
    check(plain.usage.completion_tokens > 0 and plain.usage.prompt_tokens > 0, "completions: usage")
    completion_tokens += plain.usage.completion_tokens + spec.usage.completion_tokens
    pieces = []
    finish = None
    for chunk in client.completions.create(model=model, prompt=p, max_tokens=40, temperature=0, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
    completion_tokens += spec.usage.completion_tokens
    check("".join(pieces) == spec.choices[0].text, f"completions: streamed == non-streamed for {p[:20]!r}")
    check(all("\ufffd" not in s for s in pieces) or "\ufffd" in spec.choices[0].text, "completions: no split characters")
    check(finish == spec.choices[0].finish_reason, "completions: finish_reason in the stream")

messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "List three fruits."}]
chat = client.chat.completions.create(model=model, messages=messages, max_tokens=48, temperature=0)
text = chat.choices[0].message.content
check(chat.choices[0].message.role == "assistant" and isinstance(text, str), "chat: assistant message")
completion_tokens += chat.usage.completion_tokens
pieces = []
usage = None
stream = client.chat.completions.create(model=model, messages=messages, max_tokens=48, temperature=0, stream=True,
                                        stream_options={"include_usage": True})
for chunk in stream:
    if chunk.usage:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta and c.delta.content:
            pieces.append(c.delta.content)
check("".join(pieces) == text, "chat: streamed == non-streamed")
check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, "chat: usage in the final chunk")
completion_tokens += usage.completion_tokens

try:
    client.completions.create(model=model, prompt="x", temperature=5)
    check(False, "temperature 5 must fail")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "temperature", "errors: BadRequestError names the param")
try:
    openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key must fail")
except openai.AuthenticationError as e:
    check(e.status_code == 401, "errors: AuthenticationError for a wrong key")

m1 = metrics()
d = lambda k: m1.get(k, 0.0) - m0.get(k, 0.0)
check(d("specdec:generation_tokens_total") == completion_tokens, "metrics: generation tokens match usage")
check(d("specdec:spec_decode_num_drafts_total") > 0, "metrics: drafts counted")
check(d("specdec:spec_decode_num_accepted_tokens_total") > 0, "metrics: accepted tokens counted")
check(m1.get("specdec:num_live_sequences", -1) == 0, "metrics: no live sequences when idle")
print("openai client test passed")
