#!/usr/bin/env python3
"""Write Tessera's golden reference files from PyTorch + Hugging Face transformers.

For each tiny random-init model in MODELS (the debug presets of src/Tessera.Models/ModelPresets.cs,
"gpt2-debug" and "llama-debug", and one per further family or RoPE variant: "llama3-debug" (Llama 3.2 style,
rope_type llama3, tied head, positions past original_max_position_embeddings), "qwen2-debug" (q/k/v biases,
untied head), "mistral-debug" (sliding window 5, sequences of 16), "llama-linear-debug", "llama-dynamic-debug"
and "llama-yarn-debug" (the other RoPE scalings, sequences past the original context)) this script writes

    <out>/<name>/config.json              Hugging Face config (save_pretrained)
    <out>/<name>/model.safetensors        initial weights, F32, Hugging Face names (save_pretrained)
    <out>/<name>/golden_f32.safetensors   reference results computed in float32
    <out>/<name>/golden_f64.safetensors   the same computed in float64 from the same F32 weights upcast
    <out>/<name>/golden.json              hyperparameters, seeds, versions, self-checks

Tensors in golden_<dtype>.safetensors (float tensors in that dtype, token ids I32):
    tokens            (B, T)     I32   input ids, B=2, T=8 (the model's "seq" in MODELS for the others)
    targets           (B, T)     I32   targets[b, t] = tokens[b, t+1]; the last column is random
    logits            (B, T, V)        model(tokens).logits
    loss              (1,)             mean cross-entropy of logits against targets over all B*T positions
    grad.<hf name>    param shape      d loss / d parameter after loss.backward(), one per parameter of
                                       model.named_parameters() (GPT-2's tied lm_head is not listed:
                                       grad.transformer.wte.weight already holds both contributions)
    adamw_losses      (10,)            adamw_losses[i] = loss at the parameters after i AdamW updates
    adamw_grad_norms  (10,)            global L2 norm of all gradients at step i, before clipping
  golden_f32 only:
    generate_prompt   (5,)       I32   greedy-generation prompt
    generate_tokens   (12,)      I32   the 12 new tokens of greedy generation (float32 model)
  golden_f64 only:
    adamw_final.<hf name>  param shape  parameters after the 10 AdamW updates

Training loop (same batch every step, fresh model from the initial weights):
    for i in 0..9: zero grads; loss_i = CE(model(tokens), targets); backward;
                   norm_i = clip_grad_norm_(params, 1.0); AdamW step
AdamW: torch.optim.AdamW, lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 for parameters with
dim >= 2 (embeddings included), 0.0 for the rest (norm weights, biases).

Weights: torch.manual_seed(1234) before each model is built, initializer_range 0.2 (so attention is
far from uniform and the MLP non-linearities matter), then every 1-D parameter (biases, LayerNorm and
RMSNorm weights) gets N(0, 0.1^2) noise added from torch.Generator seeded 4242.

float64 exactness: Hugging Face's Llama computes RMSNorm and the RoPE cos/sin in float32 whatever the
model dtype. To make golden_f64 a true float64 reference, this script replaces (1) the RMSNorm forward
by the same formula in the input dtype (bit-identical in float32) and (2) the rotary-embedding forward
of the float64 model by the same formula computed in float64 (inverse frequencies of every rope_type
here, llama3, linear, dynamic, yarn, and YaRN's attention factor, from transformers' formulas
re-evaluated in float64; dynamic NTK recomputed per call from max(position_ids) + 1 as transformers does
when a sequence grows); both replacements are checked against the originals first. A central finite-difference check of every parameter tensor (its largest-gradient
entry) in float64 is recorded in golden.json: it only passes if no float32 step is left in the path.

Deterministic: CPU only, one thread, fixed seeds. Run (on a machine with torch and transformers):
    python3 make_golden.py --out DIR [--tar FILE.tar.gz]
"""

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import tarfile
import tempfile

import torch
import torch.nn.functional as F

import safetensors
import transformers
from safetensors.torch import load_file, save_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

BATCH = 2
SEQ = 8
VOCAB = 96
MODEL_SEED = 1234
PERTURB_SEED = 4242
PERTURB_STD = 0.1
INIT_STD = 0.2
DATA_SEED = 4321
LR = 1e-3
BETAS = (0.9, 0.95)
EPS = 1e-8
WEIGHT_DECAY = 0.1
CLIP = 1.0
STEPS = 10
PROMPT = [5, 17, 42, 73, 90]
NEW_TOKENS = 12
FD_STEP = 1e-4


# A longer prompt for the RoPE variants whose original context is 16: prefill at 14 positions, decoding to 26.
LONG_PROMPT = [5, 17, 42, 73, 90, 11, 3, 64, 27, 58, 81, 36, 9, 50]
# Llama 3.2-style: a prompt of 70 seeded tokens, so prefill and decoding both run past original_max_position_embeddings (64).
LLAMA3_PROMPT = torch.randint(0, VOCAB, (70,), generator=torch.Generator().manual_seed(77)).tolist()


def log(*args):
    print(*args, flush=True)


GPT2_KWARGS = dict(
    vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, activation_function="gelu_new",
    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None)

LLAMA_KWARGS = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=False, attention_bias=False, mlp_bias=False, hidden_act="silu",
    initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None)


# Further families and RoPE variants (transformers 5 spellings; make_config falls back to 4's).
LLAMA3_KWARGS = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64),
    tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu",
    initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None)

QWEN2_KWARGS = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
    tie_word_embeddings=False, use_sliding_window=False, hidden_act="silu", initializer_range=INIT_STD,
    bos_token_id=None, eos_token_id=None)

MISTRAL_KWARGS = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=1000000.0,
    sliding_window=5, tie_word_embeddings=False, hidden_act="silu", initializer_range=INIT_STD,
    bos_token_id=None, eos_token_id=None)


def llama_variant(**changes):
    return dict(LLAMA_KWARGS, **changes)


# name, family (gpt2 | llama: Llama-like layers), config class, kwargs, model class, training sequence length, prompt
MODELS = [
    dict(name="gpt2-debug", family="gpt2", config_class=GPT2Config, kwargs=GPT2_KWARGS, model_class=GPT2LMHeadModel,
         seq=SEQ, prompt=PROMPT),
    dict(name="llama-debug", family="llama", config_class=LlamaConfig, kwargs=LLAMA_KWARGS, model_class=LlamaForCausalLM,
         seq=SEQ, prompt=PROMPT),
    # Llama 3.2 shape in small: rope_type llama3 with all three frequency bands at head size 16 (wavelength 6.3 kept,
    # 32 smoothed, the rest divided by 8), tied head, 80 training positions against an original context of 64.
    dict(name="llama3-debug", family="llama", config_class=LlamaConfig, kwargs=LLAMA3_KWARGS,
         model_class=LlamaForCausalLM, seq=80, prompt=LLAMA3_PROMPT),
    dict(name="qwen2-debug", family="llama", config_class=Qwen2Config, kwargs=QWEN2_KWARGS,
         model_class=Qwen2ForCausalLM, seq=SEQ, prompt=PROMPT),
    # Sliding window 5 over 16 training positions and 17 generated ones.
    dict(name="mistral-debug", family="llama", config_class=MistralConfig, kwargs=MISTRAL_KWARGS,
         model_class=MistralForCausalLM, seq=16, prompt=PROMPT),
    dict(name="llama-linear-debug", family="llama", config_class=LlamaConfig,
         kwargs=llama_variant(rope=dict(rope_type="linear", factor=4.0)), model_class=LlamaForCausalLM,
         seq=24, prompt=PROMPT),
    # Dynamic NTK past max_position_embeddings 16: training at 24 positions, prefill at 14, decoding to 26.
    dict(name="llama-dynamic-debug", family="llama", config_class=LlamaConfig,
         kwargs=llama_variant(max_position_embeddings=16, rope=dict(rope_type="dynamic", factor=4.0)),
         model_class=LlamaForCausalLM, seq=24, prompt=LONG_PROMPT),
    dict(name="llama-yarn-debug", family="llama", config_class=LlamaConfig,
         kwargs=llama_variant(rope=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16)),
         model_class=LlamaForCausalLM, seq=24, prompt=LONG_PROMPT),
]


def make_config(config_class, kwargs, notes):
    """The config, asking for SDPA attention; falls back to older/newer spellings if a keyword is refused.
    A "rope" entry ({"rope_type": ..., "factor": ..., ...}) is passed as rope_parameters (transformers 5) with
    the theta inside, or as rope_scaling beside rope_theta (transformers 4)."""
    kwargs = dict(kwargs)
    rope = kwargs.pop("rope", None)
    attempts = []
    if "rope_theta" in kwargs:
        alt = {k: v for k, v in kwargs.items() if k != "rope_theta"}
        alt["rope_parameters"] = dict(rope or {"rope_type": "default"}, rope_theta=kwargs["rope_theta"])
        if rope is None:
            attempts += [dict(kwargs, attn_implementation="sdpa"), dict(kwargs)]
        attempts += [dict(alt, attn_implementation="sdpa"), alt]
        if rope is not None:
            old = dict(kwargs, rope_scaling=dict(rope))
            attempts += [dict(old, attn_implementation="sdpa"), old]
    else:
        attempts += [dict(kwargs, attn_implementation="sdpa"), dict(kwargs)]
    errors = []
    for attempt in attempts:
        try:
            config = config_class(**attempt)
            if errors:
                notes.append(f"{config_class.__name__}: earlier keyword sets refused: {errors}")
            return config
        except Exception as e:
            errors.append(repr(e))
    raise RuntimeError(f"{config_class.__name__}: every keyword set was refused: {errors}")


def build(name, config_class, kwargs, model_class, notes):
    """The initial float32 model: seeded init, then 1-D parameters perturbed."""
    config = make_config(config_class, kwargs, notes)
    torch.manual_seed(MODEL_SEED)
    model = model_class(config)
    try:
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("sdpa")
    except Exception as e:  # keep the default; recorded below
        log(f"[{name}] set_attn_implementation('sdpa') failed: {e!r}")
    model.eval()
    gen = torch.Generator().manual_seed(PERTURB_SEED)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * PERTURB_STD)
    return model


# ---- float64 exactness patches (Llama) -------------------------------------------------------------

def rms_forward_in_input_dtype(self, hidden_states):
    eps = getattr(self, "variance_epsilon", None)
    if eps is None:
        eps = self.eps
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + eps))


def patch_rmsnorm(model, notes):
    """Replace the RMSNorm class forward (which upcasts/downcasts through float32) by the same formula in
    the input dtype; checked bit-for-bit in float32 against the original first."""
    classes = {type(m) for m in model.modules() if type(m).__name__.endswith("RMSNorm")}
    for cls in classes:
        module = next(m for m in model.modules() if type(m) is cls)
        x = torch.randn(3, 5, module.weight.shape[0], generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            want = cls.forward(module, x)
            got = rms_forward_in_input_dtype(module, x)
        diff = (want - got).abs().max().item()
        if diff <= 1e-6:
            cls.forward = rms_forward_in_input_dtype
            notes.append(f"{cls.__name__}.forward replaced by the same formula in the input dtype "
                         f"(float32 max diff vs original {diff:.3g})")
        else:
            notes.append(f"{cls.__name__}.forward NOT replaced: float32 check differed by {diff:.3g}")


def rope_settings(config):
    """(head_dim, rope parameters as a plain dict with rope_type and rope_theta) from a transformers 4 or 5 config."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
    params = dict(params)
    params.setdefault("rope_type", params.get("type", "default"))
    if params.get("rope_theta") is None:
        params["rope_theta"] = getattr(config, "rope_theta", 10000.0)
    params["rope_theta"] = float(params["rope_theta"])
    return head_dim, params


def inv_freq64(config, head_dim, p, seq_len):
    """Inverse frequencies (head_dim / 2, float64) and the cos/sin attention factor of transformers' rope_type p
    at a call whose largest position is seq_len - 1: the formulas of modeling_rope_utils in float64."""
    theta, kind, d = p["rope_theta"], p["rope_type"], head_dim
    idx = torch.arange(0, d, 2, dtype=torch.float64) / d
    base = theta ** idx                                   # theta^(2i/d)
    inv = 1.0 / base
    if kind == "default":
        return inv, 1.0
    factor = float(p["factor"])
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "dynamic":
        max_pos = config.max_position_embeddings
        length = max(seq_len, max_pos)
        b = theta * ((factor * length / max_pos) - (factor - 1)) ** (d / (d - 2))
        return 1.0 / (b ** idx), 1.0
    if kind == "llama3":
        low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
        old = float(p.get("original_max_position_embeddings") or config.max_position_embeddings)
        low_wl, high_wl = old / low, old / high
        wavelen = 2 * math.pi / inv
        out = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < high_wl) & ~(wavelen > low_wl)
        return torch.where(medium, smoothed, out), 1.0
    if kind == "yarn":
        orig = float(p.get("original_max_position_embeddings") or config.max_position_embeddings)
        mscale, mscale_all = p.get("mscale"), p.get("mscale_all_dim")

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        att = p.get("attention_factor")
        if att is None:
            att = get_mscale(factor, mscale) / get_mscale(factor, mscale_all) if (mscale and mscale_all) else get_mscale(factor)
        beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

        def corr_dim(rot):
            return (d * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(theta))

        lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        if p.get("truncate", True):
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, d - 1)
        if lo == hi:
            hi += 0.001
        ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float64) - lo) / (hi - lo), 0, 1)
        extrapolation = 1 - ramp
        interp, extra = 1.0 / (factor * base), 1.0 / base
        return interp * (1 - extrapolation) + extra * extrapolation, float(att)
    raise ValueError(f"rope_type {kind} has no float64 formula here")


def make_rope64(config, head_dim, params):
    def forward(x, position_ids, *args, **kwargs):
        seq_len = int(position_ids.max().item()) + 1
        inv, att = inv_freq64(config, head_dim, params, seq_len)
        freqs = position_ids.to(torch.float64)[..., None] * inv  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D): rotate_half layout
        return (emb.cos() * att).to(x.dtype), (emb.sin() * att).to(x.dtype)
    return forward


def patch_rope64(model, notes, check_len):
    """Give every rotary-embedding module of the float64 model a float64 cos/sin; checked against the
    original (float32) forward first, on a fresh copy of the module per call length (dynamic NTK keeps state),
    at lengths up to check_len (past every original context of these models)."""
    head_dim, params = rope_settings(model.config)
    forward = make_rope64(model.config, head_dim, params)
    for m in model.modules():
        if not type(m).__name__.endswith("RotaryEmbedding"):
            continue
        diff, shapes_ok = 0.0, True
        for length in sorted({8, check_len // 2, check_len}):
            fresh = copy.deepcopy(m).float()
            x = torch.zeros(1, 1, length, head_dim, dtype=torch.float32)
            pos = torch.arange(length)[None, :]
            with torch.no_grad():
                cos0, sin0 = type(m).forward(fresh, x, pos)
                cos1, sin1 = forward(x, pos)
            shapes_ok &= tuple(cos0.shape) == tuple(cos1.shape)
            # relative to the cos/sin magnitude (YaRN's attention factor scales both)
            diff = max(diff, (cos0.double() - cos1.double()).abs().max().item(), (sin0.double() - sin1.double()).abs().max().item())
        if diff <= 2e-5 and shapes_ok:
            m.forward = forward
            notes.append(f"{type(m).__name__} of the float64 model computes cos/sin in float64 "
                         f"(head_dim {head_dim}, rope {params}; float32 max diff vs original up to {check_len} positions {diff:.3g})")
        else:
            notes.append(f"{type(m).__name__} NOT replaced: diff {diff:.3g} over {check_len} positions, shapes equal {shapes_ok}")


# ---- computations -----------------------------------------------------------------------------------

def positions_used(spec):
    """The most positions any computation of this model touches (training sequence or prompt + new tokens)."""
    return max(spec["seq"], len(spec["prompt"]) + NEW_TOKENS)


def make(base, dtype, spec, notes):
    """A fresh copy of the initial model in dtype (never run backward on base itself)."""
    m = copy.deepcopy(base).to(dtype)
    m.eval()
    if dtype == torch.float64 and spec["family"] == "llama":
        patch_rope64(m, notes, positions_used(spec))
    return m


def forward_logits(m, tokens):
    dtype = next(m.parameters()).dtype
    logits = m(input_ids=tokens, use_cache=False).logits
    if logits.dtype != dtype:  # a head that casts logits: apply the head ourselves
        log(f"logits came back as {logits.dtype} from a {dtype} model; using lm_head(base_model(...)) instead")
        logits = m.lm_head(m.base_model(input_ids=tokens, use_cache=False).last_hidden_state)
    return logits


def loss_of(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def finite_difference_check(m, tokens, targets, grads):
    """Central difference (step FD_STEP) at the largest-|grad| entry of every parameter tensor."""
    rows = []
    params = dict(m.named_parameters())
    with torch.no_grad():
        for pname, p in params.items():
            g = grads[pname]
            idx = int(g.abs().argmax())
            flat = p.view(-1)
            old = flat[idx].item()
            flat[idx] = old + FD_STEP
            lp = loss_of(forward_logits(m, tokens), targets).item()
            flat[idx] = old - FD_STEP
            lm = loss_of(forward_logits(m, tokens), targets).item()
            flat[idx] = old
            fd = (lp - lm) / (2 * FD_STEP)
            an = g.view(-1)[idx].item()
            rows.append({"param": pname, "index": idx, "autograd": an, "finite_difference": fd,
                         "abs_error": abs(fd - an)})
    return rows


def adamw_run(base, dtype, spec, tokens, targets, notes):
    m = make(base, dtype, spec, notes)
    m.train(False)
    decay = [p for _, p in m.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in m.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=BETAS, eps=EPS)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(forward_logits(m, tokens), targets)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(list(m.parameters()), CLIP)
        opt.step()
        losses.append(loss.detach().item())
        norms.append(float(norm))
    final = {n: p.detach().clone() for n, p in m.named_parameters()}
    return (torch.tensor(losses, dtype=dtype), torch.tensor(norms, dtype=dtype), final)


def greedy(base, spec, prompt, notes):
    def fresh():
        # A fresh copy for each loop: a dynamic-NTK rotary embedding remembers the longest sequence it has seen.
        m = make(base, torch.float32, spec, notes)
        if getattr(m, "generation_config", None) is not None:
            m.generation_config.eos_token_id = None
            m.generation_config.pad_token_id = 0
        return m
    m = fresh()
    ids = torch.tensor([prompt], dtype=torch.long)
    manual = ids
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            nxt = forward_logits(m, manual)[:, -1, :].argmax(-1, keepdim=True)
            manual = torch.cat([manual, nxt], dim=1)
    manual_new = manual[0, len(prompt):].tolist()
    m = fresh()
    try:
        with torch.no_grad():
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
        hf_new = out[0, len(prompt):].tolist()
    except Exception as e:
        notes.append(f"model.generate failed ({e!r}); generate_tokens come from a plain greedy loop")
        return manual_new, "manual greedy loop (full forward, argmax)", None
    agree = hf_new == manual_new
    notes.append(f"model.generate agrees with a plain greedy loop without KV cache: {agree}"
                 + ("" if agree else " (expected for dynamic NTK: generate keeps the keys rotated at the frequencies of "
                                      "their step, a full forward rotates them all at the final length's)"))
    return hf_new, "model.generate(do_sample=False)", agree


def run_model(spec, out_dir):
    name, family, seq_len, prompt = spec["name"], spec["family"], spec["seq"], spec["prompt"]
    config_class, kwargs, model_class = spec["config_class"], spec["kwargs"], spec["model_class"]
    log(f"==== {name}")
    notes = []
    base = build(name, config_class, kwargs, model_class, notes)
    if family == "llama":
        patch_rmsnorm(base, notes)
    names = [n for n, _ in base.named_parameters()]
    n_params = sum(p.numel() for p in base.parameters())
    attn = getattr(base.config, "_attn_implementation", None)
    log(f"[{name}] {len(names)} parameter tensors, {n_params} parameters, attn {attn}")
    if family == "gpt2":
        tied = base.lm_head.weight is base.transformer.wte.weight
        notes.append(f"lm_head.weight is transformer.wte.weight: {tied}")
    elif base.config.tie_word_embeddings:
        tied = base.lm_head.weight is base.model.embed_tokens.weight
        notes.append(f"lm_head.weight is model.embed_tokens.weight: {tied}")

    model_dir = os.path.join(out_dir, name)
    os.makedirs(model_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            base.save_pretrained(tmp)
            saved = sorted(os.listdir(tmp))
            log(f"[{name}] save_pretrained wrote {saved}")
            for f in ("config.json", "model.safetensors"):
                shutil.copy(os.path.join(tmp, f), os.path.join(model_dir, f))
        except Exception as e:  # same content by hand: the config and the parameters (tied head once)
            notes.append(f"save_pretrained failed ({e!r}); wrote config.to_json_file + safetensors save_file")
            base.config.to_json_file(os.path.join(model_dir, "config.json"))
            save_file({n: p.detach().contiguous() for n, p in base.named_parameters()},
                      os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    on_disk = load_file(os.path.join(model_dir, "model.safetensors"))
    state = dict(base.named_parameters())
    missing = [n for n in names if n not in on_disk]
    extra = [n for n in on_disk if n not in state]
    mismatch = [n for n in names if n in on_disk and not torch.equal(on_disk[n], state[n].detach())]
    notes.append(f"model.safetensors: {len(on_disk)} tensors; parameters missing from it {missing}; "
                 f"extra tensors {extra}; values differing from the in-memory model {mismatch}")
    log(f"[{name}] {notes[-1]}")

    gen = torch.Generator().manual_seed(DATA_SEED)
    seq = torch.randint(0, VOCAB, (BATCH, seq_len + 1), generator=gen)
    tokens, targets = seq[:, :seq_len].contiguous(), seq[:, 1:].contiguous()

    results = {}
    fd_rows = []
    for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
        m = make(base, dtype, spec, notes)
        logits = forward_logits(m, tokens)
        loss = loss_of(logits, targets)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()}
        tensors = {
            "tokens": tokens.to(torch.int32),
            "targets": targets.to(torch.int32),
            "logits": logits.detach().contiguous(),
            "loss": loss.detach().reshape(1),
        }
        for n in names:
            tensors["grad." + n] = grads[n].contiguous()
        losses, norms, final = adamw_run(base, dtype, spec, tokens, targets, notes)
        tensors["adamw_losses"] = losses
        tensors["adamw_grad_norms"] = norms
        if tag == "f64":
            for n in names:
                tensors["adamw_final." + n] = final[n].contiguous()
            m.zero_grad(set_to_none=True)
            fd_rows = finite_difference_check(m, tokens, targets, grads)
        results[tag] = tensors
        log(f"[{name}] {tag}: loss {loss.item():.10f}")
        log(f"[{name}] {tag}: adamw losses {[round(x, 8) for x in losses.tolist()]}")
        log(f"[{name}] {tag}: grad norms   {[round(x, 8) for x in norms.tolist()]}")

    new_tokens, source, agree = greedy(base, spec, prompt, notes)
    results["f32"]["generate_prompt"] = torch.tensor(prompt, dtype=torch.int32)
    results["f32"]["generate_tokens"] = torch.tensor(new_tokens, dtype=torch.int32)
    log(f"[{name}] greedy {prompt} -> {new_tokens} ({source}, agrees with plain loop: {agree})")

    f32, f64 = results["f32"], results["f64"]
    logit_diff = (f32["logits"].double() - f64["logits"]).abs().max().item()
    grad_rel = max(((f32["grad." + n].double() - f64["grad." + n]).abs().max()
                    / f64["grad." + n].abs().max().clamp_min(1e-30)).item() for n in names)
    fd_max = max(r["abs_error"] for r in fd_rows)
    log(f"[{name}] f32 vs f64: max |logit diff| {logit_diff:.3g}, max grad diff / max |grad| {grad_rel:.3g}")
    log(f"[{name}] f64 finite-difference check (step {FD_STEP}): max abs error {fd_max:.3g} over {len(fd_rows)} tensors")

    meta = {"producer": "scripts/golden/make_golden.py", "model": name}
    for tag, tensors in results.items():
        save_file(tensors, os.path.join(model_dir, f"golden_{tag}.safetensors"), metadata=meta)

    info = {
        "model": name,
        "hf_class": model_class.__name__,
        "attn_implementation": attn,
        "parameters": n_params,
        "parameter_names": names,
        "batch": BATCH, "seq_len": seq_len, "vocab": VOCAB,
        "seeds": {"model_init_torch_manual_seed": MODEL_SEED, "perturb_generator": PERTURB_SEED,
                  "data_generator": DATA_SEED},
        "init": {"initializer_range": INIT_STD,
                 "perturbation": f"every 1-D parameter += N(0, {PERTURB_STD}^2) (torch.Generator seed {PERTURB_SEED})"},
        "inputs": "seq = torch.randint(0, vocab, (B, T+1), generator=Generator(seed)); tokens = seq[:, :T]; targets = seq[:, 1:]",
        "loss": "F.cross_entropy(logits.reshape(B*T, V), targets.reshape(B*T)), mean over all B*T positions, no ignore index",
        "adamw": {"optimizer": "torch.optim.AdamW (defaults otherwise: amsgrad False, maximize False)", "lr": LR, "betas": list(BETAS),
                  "eps": EPS, "weight_decay": WEIGHT_DECAY,
                  "weight_decay_rule": "weight_decay 0.1 for parameters with dim >= 2 (embeddings included), 0.0 otherwise",
                  "grad_clip": f"torch.nn.utils.clip_grad_norm_(params, {CLIP}) before each step: "
                               "scale = min(1, max_norm / (total_norm + 1e-6)), total_norm = L2 over all gradients",
                  "steps": STEPS,
                  "adamw_losses[i]": "loss before update i (at the parameters after i updates)",
                  "adamw_grad_norms[i]": "total_norm returned by clip_grad_norm_ at step i (before clipping)",
                  "batch": "the same tokens/targets every step",
                  "start": "fresh model from model.safetensors (F32; upcast for f64)"},
        "generate": {"prompt": prompt, "max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0,
                     "eos_token_id": None, "dtype": "float32", "source": source,
                     "agrees_with_plain_greedy_loop": agree, "tokens": new_tokens},
        "float64_notes": "f64 results start from the F32 initial weights upcast; every op in float64 (see notes)",
        "notes": list(dict.fromkeys(notes)),
        "self_checks": {"max_abs_logit_diff_f32_vs_f64": logit_diff,
                        "max_grad_diff_over_max_abs_grad_f32_vs_f64": grad_rel,
                        "f64_finite_difference_step": FD_STEP,
                        "f64_finite_difference_max_abs_error": fd_max,
                        "f64_finite_difference": fd_rows},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__, "python": platform.python_version()},
    }
    with open(os.path.join(model_dir, "golden.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    for f in sorted(os.listdir(model_dir)):
        log(f"[{name}] {f}: {os.path.getsize(os.path.join(model_dir, f))} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write <name>/... into")
    parser.add_argument("--tar", help="also pack the folder's content into this .tar.gz")
    parser.add_argument("--only", help="comma-separated model names (default: all of MODELS)")
    args = parser.parse_args()
    torch.set_default_device("cpu")
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    log(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"safetensors {safetensors.__version__}")
    os.makedirs(args.out, exist_ok=True)
    failures = []
    wanted = set(args.only.split(",")) if args.only else {m["name"] for m in MODELS}
    unknown = wanted - {m["name"] for m in MODELS}
    if unknown:
        sys.exit(f"unknown model names {sorted(unknown)}; known: {[m['name'] for m in MODELS]}")
    for spec in MODELS:
        if spec["name"] not in wanted:
            continue
        try:
            run_model(spec, args.out)
        except Exception:
            import traceback
            traceback.print_exc()
            failures.append(spec["name"])
    if args.tar:
        with tarfile.open(args.tar, "w:gz") as tar:
            for entry in sorted(os.listdir(args.out)):
                tar.add(os.path.join(args.out, entry), arcname=entry)
        log(f"packed {args.tar}: {os.path.getsize(args.tar)} bytes")
    if failures:
        log(f"FAILED: {failures}")
        sys.exit(1)


if __name__ == "__main__":
    main()
