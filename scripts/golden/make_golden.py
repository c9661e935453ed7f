#!/usr/bin/env python3
"""Write Tessera's golden reference files from PyTorch + Hugging Face transformers.

For each of two tiny random-init models that match Tessera's debug presets
(src/Tessera.Models/ModelPresets.cs: "gpt2-debug" and "llama-debug") this script writes

    <out>/<name>/config.json              Hugging Face config (save_pretrained)
    <out>/<name>/model.safetensors        initial weights, F32, Hugging Face names (save_pretrained)
    <out>/<name>/golden_f32.safetensors   reference results computed in float32
    <out>/<name>/golden_f64.safetensors   the same computed in float64 from the same F32 weights upcast
    <out>/<name>/golden.json              hyperparameters, seeds, versions, self-checks

Tensors in golden_<dtype>.safetensors (float tensors in that dtype, token ids I32):
    tokens            (B, T)     I32   input ids, B=2, T=8
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
of the float64 model by the same formula computed in float64; both replacements are checked against
the originals first. A central finite-difference check of every parameter tensor (its largest-gradient
entry) in float64 is recorded in golden.json: it only passes if no float32 step is left in the path.

Deterministic: CPU only, one thread, fixed seeds. Run (on a machine with torch and transformers):
    python3 make_golden.py --out DIR [--tar FILE.tar.gz]
"""

import argparse
import copy
import json
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
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

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


def make_config(config_class, kwargs, notes):
    """The config, asking for SDPA attention; falls back to older/newer spellings if a keyword is refused."""
    attempts = [dict(kwargs, attn_implementation="sdpa"), dict(kwargs)]
    if "rope_theta" in kwargs:
        alt = {k: v for k, v in kwargs.items() if k != "rope_theta"}
        alt["rope_parameters"] = {"rope_type": "default", "rope_theta": kwargs["rope_theta"]}
        attempts += [dict(alt, attn_implementation="sdpa"), alt]
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
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    theta = None
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        theta = params.get("rope_theta")
    if theta is None:
        theta = getattr(config, "rope_theta", 10000.0)
    return head_dim, float(theta)


def make_rope64(head_dim, theta):
    def forward(x, position_ids, *args, **kwargs):
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = position_ids.to(torch.float64)[..., None] * inv_freq  # (B, T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, D): rotate_half layout
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return forward


def patch_rope64(model, notes):
    """Give every rotary-embedding module of the float64 model a float64 cos/sin; checked against the
    original (float32) forward first."""
    head_dim, theta = rope_settings(model.config)
    forward = make_rope64(head_dim, theta)
    for m in model.modules():
        if not type(m).__name__.endswith("RotaryEmbedding"):
            continue
        scaling = float(getattr(m, "attention_scaling", 1.0))
        x = torch.zeros(1, 1, SEQ, head_dim, dtype=torch.float32)
        pos = torch.arange(32)[None, :]
        with torch.no_grad():
            cos0, sin0 = type(m).forward(m, x, pos)
            cos1, sin1 = forward(x, pos)
        diff = max((cos0.float() - cos1.float()).abs().max().item(), (sin0.float() - sin1.float()).abs().max().item())
        if diff <= 1e-5 and scaling == 1.0 and tuple(cos0.shape) == tuple(cos1.shape):
            m.forward = forward
            notes.append(f"{type(m).__name__} of the float64 model computes cos/sin in float64 "
                         f"(head_dim {head_dim}, theta {theta}; float32 max diff vs original over 32 positions {diff:.3g})")
        else:
            notes.append(f"{type(m).__name__} NOT replaced: diff {diff:.3g}, attention_scaling {scaling}, "
                         f"shapes {tuple(cos0.shape)} vs {tuple(cos1.shape)}")


# ---- computations -----------------------------------------------------------------------------------

def make(base, dtype, family, notes):
    """A fresh copy of the initial model in dtype (never run backward on base itself)."""
    m = copy.deepcopy(base).to(dtype)
    m.eval()
    if dtype == torch.float64 and family == "llama":
        patch_rope64(m, notes)
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


def adamw_run(base, dtype, family, tokens, targets, notes):
    m = make(base, dtype, family, notes)
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


def greedy(base, family, prompt, notes):
    m = make(base, torch.float32, family, notes)
    if getattr(m, "generation_config", None) is not None:
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    ids = torch.tensor([prompt], dtype=torch.long)
    manual = ids
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            nxt = forward_logits(m, manual)[:, -1, :].argmax(-1, keepdim=True)
            manual = torch.cat([manual, nxt], dim=1)
    manual_new = manual[0, len(prompt):].tolist()
    try:
        with torch.no_grad():
            out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
        hf_new = out[0, len(prompt):].tolist()
    except Exception as e:
        notes.append(f"model.generate failed ({e!r}); generate_tokens come from a plain greedy loop")
        return manual_new, "manual greedy loop (full forward, argmax)", None
    agree = hf_new == manual_new
    notes.append(f"model.generate agrees with a plain greedy loop without KV cache: {agree}")
    return hf_new, "model.generate(do_sample=False)", agree


def run_model(name, family, config_class, kwargs, model_class, out_dir):
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
    seq = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
    tokens, targets = seq[:, :SEQ].contiguous(), seq[:, 1:].contiguous()

    results = {}
    fd_rows = []
    for dtype, tag in ((torch.float32, "f32"), (torch.float64, "f64")):
        m = make(base, dtype, family, notes)
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
        losses, norms, final = adamw_run(base, dtype, family, tokens, targets, notes)
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

    new_tokens, source, agree = greedy(base, family, PROMPT, notes)
    results["f32"]["generate_prompt"] = torch.tensor(PROMPT, dtype=torch.int32)
    results["f32"]["generate_tokens"] = torch.tensor(new_tokens, dtype=torch.int32)
    log(f"[{name}] greedy {PROMPT} -> {new_tokens} ({source}, agrees with plain loop: {agree})")

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
        "batch": BATCH, "seq_len": SEQ, "vocab": VOCAB,
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
        "generate": {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0,
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
    args = parser.parse_args()
    torch.set_default_device("cpu")
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    log(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"safetensors {safetensors.__version__}")
    os.makedirs(args.out, exist_ok=True)
    failures = []
    for name, family, config_class, kwargs, cls in (
            ("gpt2-debug", "gpt2", GPT2Config, GPT2_KWARGS, GPT2LMHeadModel),
            ("llama-debug", "llama", LlamaConfig, LLAMA_KWARGS, LlamaForCausalLM)):
        try:
            run_model(name, family, config_class, kwargs, cls, args.out)
        except Exception:
            import traceback
            traceback.print_exc()
            failures.append(name)
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
