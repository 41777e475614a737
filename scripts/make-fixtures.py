#!/usr/bin/env python3
"""Builds the tiny random-weight reference fixtures under tests/fixtures/.

Run on a development machine (CI never runs it; the outputs are committed):

    python3 -m venv /tmp/refenv
    /tmp/refenv/bin/pip install torch==2.13.0 transformers==5.23.0 tokenizers==0.23.3 \
        safetensors==0.8.0 gguf==0.19.0 numpy
    /tmp/refenv/bin/python scripts/make-fixtures.py

For each architecture it writes tests/fixtures/<arch>/:
  hf/            config.json, safetensors (llama: sharded with an index), tokenizer.json,
                 tokenizer_config.json, as transformers saves them
  model.gguf     the same weights in llama.cpp's GGUF layout (f32), written with the gguf package
  golden.json    reference outputs from transformers (f32, eager attention):
                   tokenize: texts and the ids the HF tokenizer gives them
                   passes:   a prompt pass, a verify-shaped pass (4 tokens on the prompt's KV
                             cache) and a single-token pass: tokens and logits of every row
                   greedy:   16 greedy tokens after the prompt
Everything is seeded; rerunning reproduces the files.
"""

import json
import math
import os
import shutil
import sys

import gguf
import safetensors
import safetensors.torch
import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")

# The pre-tokenizer regexes of Qwen2 and Llama 3 (the R1 distills' two families).
QWEN2_PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_PAT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Speculative decoding drafts several tokens and verifies them in one pass of the target model.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Numbers: 12345 678 90, 3.14159 and 2.71828; dates 2026-11-28.",
    "Über naïve café résumé — 日本語のテキスト, 中文文本, русский текст.",
    "I'm sure they'll say we've done it, isn't it? You're right, he'd agree.",
]

TOKENIZE_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "  leading spaces and trailing  \n\n",
    "Numbers 1234567 and 3.14",
    "Ünïcödé 日本語 🙂 mixed",
    "I'm sure they'll say we've done it.",
]

PROMPT = "The quick brown fox jumps over the lazy dog. Speculative decoding"


def build_tokenizer(pattern, specials, bos):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + 160, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[], show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.add_special_tokens(specials)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def perturb(model, seed):
    """Every parameter random (transformers zero-initializes biases and sets norms to 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * 1.5)


def llama3_factors(rs, head_dim, base):
    """Per-pair divisors of the rope angle for Llama 3 scaling (what llama.cpp stores as rope_freqs)."""
    factor, lo, hi, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / base ** (i / head_dim)
        wl = 2 * math.pi / freq
        if wl < hi_wl:
            out.append(1.0)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def permute_rope_rows(w, n_head):
    """HF q/k rows (rotate_half pairs (i, i + d/2)) -> GGUF llama rows (adjacent pairs)."""
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, arch, cfg, sd, tok, pre, bos_id, eos_id, add_bos, rope_freqs):
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    hd = cfg.hidden_size // cfg.num_attention_heads
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_file_type(0)
    vocab = tok.get_vocab(with_added_tokens=True)
    n_vocab = cfg.vocab_size
    tokens = [None] * n_vocab
    for t, i in vocab.items():
        tokens[i] = t
    added = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    types = []
    for i in range(n_vocab):
        if tokens[i] is None:
            tokens[i] = f"[PAD{i}]"
            types.append(gguf.TokenType.UNUSED)
        elif tokens[i] in added:
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if bos_id is not None:
        w.add_bos_token_id(bos_id)
    w.add_eos_token_id(eos_id)
    w.add_add_bos_token(add_bos)

    def t(name, arr):
        w.add_tensor(name, np.ascontiguousarray(arr.astype(np.float32)))

    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    get = lambda k: sd[k].float().numpy()
    t("token_embd.weight", get("model.embed_tokens.weight"))
    t("output_norm.weight", get("model.norm.weight"))
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
        t("output.weight", get("lm_head.weight"))
    if rope_freqs is not None:
        t("rope_freqs.weight", rope_freqs)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q, k = get(p + "self_attn.q_proj.weight"), get(p + "self_attn.k_proj.weight")
        if arch == "llama":
            q, k = permute_rope_rows(q, nh), permute_rope_rows(k, nkv)
        t(f"blk.{i}.attn_norm.weight", get(p + "input_layernorm.weight"))
        t(f"blk.{i}.attn_q.weight", q)
        t(f"blk.{i}.attn_k.weight", k)
        t(f"blk.{i}.attn_v.weight", get(p + "self_attn.v_proj.weight"))
        for hf, gg, heads in (("q_proj", "attn_q", nh), ("k_proj", "attn_k", nkv), ("v_proj", "attn_v", 0)):
            if p + f"self_attn.{hf}.bias" in sd:
                b = get(p + f"self_attn.{hf}.bias")
                if arch == "llama" and heads:
                    b = permute_rope_rows(b, heads)
                t(f"blk.{i}.{gg}.bias", b)
        t(f"blk.{i}.attn_output.weight", get(p + "self_attn.o_proj.weight"))
        t(f"blk.{i}.ffn_norm.weight", get(p + "post_attention_layernorm.weight"))
        t(f"blk.{i}.ffn_gate.weight", get(p + "mlp.gate_proj.weight"))
        t(f"blk.{i}.ffn_up.weight", get(p + "mlp.up_proj.weight"))
        t(f"blk.{i}.ffn_down.weight", get(p + "mlp.down_proj.weight"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gguf_deepseek(path, cfg, sd, tok, bos_id, eos_id):
    """DeepSeek-V3 in llama.cpp's `deepseek2` layout: absorbed-MLA shapes (k_b transposed
    per head, v_b split), stacked experts, `exp_probs_b`, YaRN keys. MTP tensors under
    blk.{n_layers}.nextn.* with block_count including that layer (GLM-4.5's convention)."""
    w = gguf.GGUFWriter(path, "deepseek2")
    H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    Lq, Lkv, L = cfg.q_lora_rank, cfg.kv_lora_rank, cfg.num_hidden_layers
    rp = cfg.rope_parameters
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(L + cfg.num_nextn_predict_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(1)
    w.add_key_length(Lkv + dr)
    w.add_value_length(Lkv)
    w.add_key_length_mla(dn + dr)
    w.add_value_length_mla(dv)
    w.add_q_lora_rank(Lq)
    w.add_kv_lora_rank(Lkv)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(dr)
    w.add_rope_freq_base(rp["rope_theta"])
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rp["factor"])
    w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_log_mul(0.1 * rp["mscale_all_dim"])
    w.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
    w.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
    w.add_leading_dense_block_count(cfg.first_k_dense_replace)
    w.add_expert_count(cfg.n_routed_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_shared_count(cfg.n_shared_experts)
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)
    w.add_expert_weights_norm(cfg.norm_topk_prob)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_expert_group_count(cfg.n_group)
    w.add_expert_group_used_count(cfg.topk_group)
    w.add_nextn_predict_layers(cfg.num_nextn_predict_layers)
    w.add_file_type(0)
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = [None] * cfg.vocab_size
    for t, i in vocab.items():
        tokens[i] = t
    added = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    types = [gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL for t in tokens]
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(bos_id)
    w.add_eos_token_id(eos_id)
    w.add_add_bos_token(True)

    def t(name, arr):
        w.add_tensor(name, np.ascontiguousarray(np.asarray(arr, dtype=np.float32)))

    get = lambda k: sd[k].float().numpy()
    t("token_embd.weight", get("model.embed_tokens.weight"))
    t("output_norm.weight", get("model.norm.weight"))
    t("output.weight", get("lm_head.weight"))
    for i in range(L + cfg.num_nextn_predict_layers):
        p = f"model.layers.{i}."
        if p + "input_layernorm.weight" not in sd:
            continue
        b = f"blk.{i}."
        t(b + "attn_norm.weight", get(p + "input_layernorm.weight"))
        t(b + "attn_q_a.weight", get(p + "self_attn.q_a_proj.weight"))
        t(b + "attn_q_a_norm.weight", get(p + "self_attn.q_a_layernorm.weight"))
        t(b + "attn_q_b.weight", get(p + "self_attn.q_b_proj.weight"))
        t(b + "attn_kv_a_mqa.weight", get(p + "self_attn.kv_a_proj_with_mqa.weight"))
        t(b + "attn_kv_a_norm.weight", get(p + "self_attn.kv_a_layernorm.weight"))
        kvb = get(p + "self_attn.kv_b_proj.weight").reshape(H, dn + dv, Lkv)
        t(b + "attn_k_b.weight", kvb[:, :dn, :].transpose(0, 2, 1))  # [H, Lkv, dn]
        t(b + "attn_v_b.weight", kvb[:, dn:, :])  # [H, dv, Lkv]
        t(b + "attn_output.weight", get(p + "self_attn.o_proj.weight"))
        t(b + "ffn_norm.weight", get(p + "post_attention_layernorm.weight"))
        if i == L:
            t(b + "nextn.enorm.weight", get(p + "enorm.weight"))
            t(b + "nextn.hnorm.weight", get(p + "hnorm.weight"))
            t(b + "nextn.eh_proj.weight", get(p + "eh_proj.weight"))
            t(b + "nextn.shared_head_norm.weight", get(p + "shared_head.norm.weight"))
        if i < cfg.first_k_dense_replace:
            t(b + "ffn_gate.weight", get(p + "mlp.gate_proj.weight"))
            t(b + "ffn_up.weight", get(p + "mlp.up_proj.weight"))
            t(b + "ffn_down.weight", get(p + "mlp.down_proj.weight"))
        else:
            t(b + "ffn_gate_inp.weight", get(p + "mlp.gate.weight"))
            t(b + "exp_probs_b.bias", get(p + "mlp.gate.e_score_correction_bias"))
            F = cfg.moe_intermediate_size
            if p + "mlp.experts.gate_up_proj" in sd:
                gu = get(p + "mlp.experts.gate_up_proj")  # [E, 2F, D]
                gate, up, down = gu[:, :F, :], gu[:, F:, :], get(p + "mlp.experts.down_proj")  # down [E, D, F]
            else:
                E = cfg.n_routed_experts
                gate = np.stack([get(p + f"mlp.experts.{j}.gate_proj.weight") for j in range(E)])
                up = np.stack([get(p + f"mlp.experts.{j}.up_proj.weight") for j in range(E)])
                down = np.stack([get(p + f"mlp.experts.{j}.down_proj.weight") for j in range(E)])
            t(b + "ffn_gate_exps.weight", gate)
            t(b + "ffn_up_exps.weight", up)
            t(b + "ffn_down_exps.weight", down)
            t(b + "ffn_gate_shexp.weight", get(p + "mlp.shared_experts.gate_proj.weight"))
            t(b + "ffn_up_shexp.weight", get(p + "mlp.shared_experts.up_proj.weight"))
            t(b + "ffn_down_shexp.weight", get(p + "mlp.shared_experts.down_proj.weight"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def goldens(model, tok, add_bos_id):
    ids = tok.encode(PROMPT).ids
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        passes = [{"tokens": ids, "logits": out.logits[0].tolist()}]
        cache = out.past_key_values
        verify = [int(x) for x in torch.randint(0, model.config.vocab_size, (4,), generator=torch.Generator().manual_seed(7))]
        out = model(torch.tensor([verify]), past_key_values=cache, use_cache=True)
        passes.append({"tokens": verify, "logits": out.logits[0].tolist()})
        one = [int(out.logits[0, -1].argmax())]
        out = model(torch.tensor([one]), past_key_values=out.past_key_values, use_cache=True)
        passes.append({"tokens": one, "logits": out.logits[0].tolist()})
        gen = model.generate(
            torch.tensor([ids]), max_new_tokens=16, do_sample=False, pad_token_id=0, eos_token_id=None
        )
        greedy = gen[0, len(ids):].tolist()
    toks = [{"text": s, "ids": tok.encode(s).ids} for s in TOKENIZE_TEXTS]
    return {"prompt": PROMPT, "prompt_ids": ids, "tokenize": toks, "passes": passes, "greedy": greedy}


def make_mtp(model, cfg):
    """DeepSeek's MTP module (one 'NextN' layer after the main ones): enorm, hnorm, eh_proj,
    a decoder layer of the main architecture (MoE here), shared_head.norm; embedding and
    head shared with the main model. Random weights; returns the modules and the HF
    state-dict entries (model.layers.{L}.*, as DeepSeek's checkpoints name them)."""
    L = cfg.num_hidden_layers
    layer = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3DecoderLayer(cfg, L).float().eval()
    mods = torch.nn.ModuleDict(
        {
            "layer": layer,
            "enorm": transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
            "hnorm": transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
            "shared_norm": transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
            "eh_proj": torch.nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False),
        }
    ).float().eval()
    perturb(mods, 4242)
    g = torch.Generator().manual_seed(4343)
    with torch.no_grad():
        layer.mlp.gate.e_score_correction_bias.copy_(0.05 * torch.randn(cfg.n_routed_experts, generator=g))
    p = f"model.layers.{L}."
    sd = {}
    for k, v in layer.state_dict().items():
        if k == "mlp.experts.gate_up_proj":
            F = cfg.moe_intermediate_size
            for j in range(v.shape[0]):
                sd[p + f"mlp.experts.{j}.gate_proj.weight"] = v[j, :F].clone()
                sd[p + f"mlp.experts.{j}.up_proj.weight"] = v[j, F:].clone()
        elif k == "mlp.experts.down_proj":
            for j in range(v.shape[0]):
                sd[p + f"mlp.experts.{j}.down_proj.weight"] = v[j].clone()
        else:
            sd[p + k] = v.clone()
    sd[p + "enorm.weight"] = mods["enorm"].weight.detach().clone()
    sd[p + "hnorm.weight"] = mods["hnorm"].weight.detach().clone()
    sd[p + "eh_proj.weight"] = mods["eh_proj"].weight.detach().clone()
    sd[p + "shared_head.norm.weight"] = mods["shared_norm"].weight.detach().clone()
    sd[p + "embed_tokens.weight"] = model.model.embed_tokens.weight.detach().clone()
    sd[p + "shared_head.head.weight"] = model.lm_head.weight.detach().clone()
    return mods, sd


def mtp_forward(model, mods, hidden, next_ids):
    """Reference MTP forward over rows j = 0..T-1 at positions j: row j combines the
    target's post-norm hidden h_j with the embedding of the token after it. Causal
    attention over the module's own rows (as its KV cache would give).
    Returns (logits [T, V], post-norm hidden [T, D])."""
    T = hidden.shape[1]
    e = model.model.embed_tokens(torch.tensor([next_ids]))
    x = mods["eh_proj"](torch.cat([mods["enorm"](e), mods["hnorm"](hidden)], dim=-1))
    pos = torch.arange(T)[None]
    pe = model.model.rotary_emb(x, pos)
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    out = mods["layer"](x, attention_mask=mask, position_ids=pos, position_embeddings=pe)
    out = out[0] if isinstance(out, tuple) else out
    hn = mods["shared_norm"](out)
    return model.lm_head(hn)[0], hn


def mtp_golden(model, mods, cfg, gd):
    """MTP logits for the prompt (teacher-forced: next tokens are the prompt shifted left,
    then the target's first greedy token), and one chained step: the last row's
    post-norm hidden paired with its own argmax token at the next position."""
    ids = gd["prompt_ids"]
    first = gd["greedy"][0]
    with torch.no_grad():
        h = model.model(torch.tensor([ids])).last_hidden_state
        nxt = ids[1:] + [first]
        logits, hn = mtp_forward(model, mods, h, nxt)
        d1 = int(logits[-1].argmax())
        h2 = torch.cat([h, hn[:, -1:]], dim=1)
        logits2, _ = mtp_forward(model, mods, h2, nxt + [d1])
    return {"next_tokens": nxt, "logits": logits.tolist(), "chain_token": d1, "chain_logits": logits2[-1].tolist()}


def make_deepseek():
    arch = "deepseek_v3"
    torch.manual_seed(0)
    d = os.path.join(ROOT, arch)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "hf"))
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok = build_tokenizer(LLAMA3_PAT, specials, "<|begin_of_text|>")
    bos_id, eos_id = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    cfg = transformers.DeepseekV3Config(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_interleave=True,
        rope_scaling={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        num_nextn_predict_layers=1,
    )
    cfg._attn_implementation = "eager"
    model = transformers.DeepseekV3ForCausalLM(cfg).float().eval()
    perturb(model, 777)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                # small, so every selection score stays positive (see architectures.md 1.5)
                buf.copy_(0.05 * torch.randn(buf.shape, generator=g))
    model.save_pretrained(os.path.join(d, "hf"), safe_serialization=True)
    tok.save(os.path.join(d, "hf", "tokenizer.json"))
    with open(os.path.join(d, "hf", "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "bos_token": specials[0], "eos_token": specials[1]}, f, indent=1)
    sd = model.state_dict()
    mtp, mtp_sd = make_mtp(model, cfg)
    # transformers ignores model.layers.{n_layers}; DeepSeek's checkpoints carry it as an extra shard.
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in mtp_sd.items()}, os.path.join(d, "hf", "model-mtp.safetensors")
    )
    index = {"metadata": {}, "weight_map": {}}
    with safetensors.safe_open(os.path.join(d, "hf", "model.safetensors"), "pt") as f:
        for k in f.keys():
            index["weight_map"][k] = "model.safetensors"
    for k in mtp_sd:
        index["weight_map"][k] = "model-mtp.safetensors"
    with open(os.path.join(d, "hf", "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=1)
    sd = dict(sd)
    sd.update(mtp_sd)
    write_gguf_deepseek(os.path.join(d, "model.gguf"), cfg, sd, tok, bos_id, eos_id)
    gd = goldens(model, tok, bos_id)
    gd["mtp"] = mtp_golden(model, mtp, cfg, gd)
    gd["reference"] = f"transformers {transformers.__version__}, torch {torch.__version__}, f32, eager attention"
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(gd, f)
    print(arch, "vocab", cfg.vocab_size, "prompt", len(gd["prompt_ids"]), "greedy", gd["greedy"])


def make(arch):
    if arch == "deepseek_v3":
        return make_deepseek()
    torch.manual_seed(0)
    d = os.path.join(ROOT, arch)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "hf"))
    if arch == "qwen2":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = build_tokenizer(QWEN2_PAT, specials, None)
        bos_id, eos_id, add_bos, pre = None, tok.token_to_id("<|endoftext|>"), False, "qwen2"
        cfg = transformers.Qwen2Config(
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            eos_token_id=eos_id,
        )
        cls = transformers.Qwen2ForCausalLM
    else:
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
        tok = build_tokenizer(LLAMA3_PAT, specials, "<|begin_of_text|>")
        bos_id, eos_id, add_bos, pre = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>"), True, "llama-bpe"
        cfg = transformers.LlamaConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
            tie_word_embeddings=True,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
        )
        cls = transformers.LlamaForCausalLM
    cfg._attn_implementation = "eager"
    model = cls(cfg).float().eval()
    perturb(model, 1234 if arch == "qwen2" else 4321)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    shard = "40KB" if arch == "llama" else "100MB"
    model.save_pretrained(os.path.join(d, "hf"), safe_serialization=True, max_shard_size=shard)
    tok.save(os.path.join(d, "hf", "tokenizer.json"))
    with open(os.path.join(d, "hf", "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": add_bos, "bos_token": specials[0] if bos_id is not None else None,
                   "eos_token": "<|end_of_text|>" if arch == "llama" else "<|endoftext|>"}, f, indent=1)
    sd = model.state_dict()
    rope_freqs = None
    if arch == "llama":
        rp = cfg.rope_parameters
        rope_freqs = llama3_factors(rp, cfg.hidden_size // cfg.num_attention_heads, rp["rope_theta"])
    write_gguf(os.path.join(d, "model.gguf"), arch, cfg, sd, tok, pre, bos_id, eos_id, add_bos, rope_freqs)
    g = goldens(model, tok, bos_id)
    g["reference"] = f"transformers {transformers.__version__}, torch {torch.__version__}, f32, eager attention"
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(g, f)
    print(arch, "vocab", cfg.vocab_size, "prompt", len(g["prompt_ids"]), "greedy", g["greedy"])


if __name__ == "__main__":
    for a in sys.argv[1:] or ["qwen2", "llama", "deepseek_v3"]:
        make(a)
