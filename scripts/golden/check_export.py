#!/usr/bin/env python3
"""Load a Hugging Face directory that Tessera exported with transformers and compare against Tessera's own results.

The directory holds, beside the model files, tessera_reference.safetensors (written by the test that exported it):
    tokens          (B, T) I32   input ids
    logits          (B, T, V)    Tessera's logits for them (F32)
    generate_prompt (P,)   I32   a prompt
    generate_tokens (N,)   I32   Tessera's greedy continuation of it

The script loads the directory with AutoModelForCausalLM (float32, CPU, eager attention: the reference implementation, and
the only one that applies Gemma 2's attention soft cap; SDPA drops it) and AutoTokenizer (when tokenizer files are present),
computes the logits and greedy tokens (model.generate, do_sample=False, eos_token_id=None) and prints one JSON line:
{"dir", "max_rel_logit_error", "greedy_equal", "tokenizer_loaded", "versions"}. Exit status 0 when the logits agree within
--tolerance (default 1e-4, norm-free: max |diff| / max |reference|) and the greedy tokens are equal.

Where generate's tokens differ, the greedy tokens are also taken without a cache (a whole forward per token, the model's
own meaning of each position) and reported as "greedy_uncached_equal"; that comparison decides. It matters where a cached
generator and the model disagree: LongRoPE past the original context rotates new positions with the long factors, and a
cache holding keys rotated with the short ones gives other logits than the whole sequence does (Tessera's generator
recomputes the sequence once when it crosses, as transformers 4's Phi3ForCausalLM did).

    python3 check_export.py DIR [DIR...] [--tolerance 1e-4]
"""

import argparse
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def check(path, tolerance):
    ref = load_file(os.path.join(path, "tessera_reference.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tokens = ref["tokens"].long()
    with torch.no_grad():
        logits = model(input_ids=tokens, use_cache=False).logits.float()
    expected = ref["logits"].float()
    err = ((logits - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()
    prompt = ref["generate_prompt"].long()[None, :]
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=ref["generate_tokens"].numel(), eos_token_id=None, pad_token_id=0)
    greedy = out[0, prompt.shape[1]:].tolist()
    expected_tokens = ref["generate_tokens"].tolist()
    uncached_equal = None
    if greedy != expected_tokens:
        sequence = prompt
        with torch.no_grad():
            for _ in range(len(expected_tokens)):
                nxt = model(input_ids=sequence, use_cache=False).logits[0, -1].argmax()
                sequence = torch.cat([sequence, nxt.view(1, 1)], dim=1)
        uncached_equal = sequence[0, prompt.shape[1]:].tolist() == expected_tokens
    tokenizer_loaded = None
    if os.path.exists(os.path.join(path, "tokenizer.json")) or os.path.exists(os.path.join(path, "tokenizer.model")):
        try:
            from transformers import AutoTokenizer
            AutoTokenizer.from_pretrained(path)
            tokenizer_loaded = True
        except Exception as e:  # reported, and a failure
            tokenizer_loaded = repr(e)
    result = {"dir": path, "model_type": model.config.model_type, "max_rel_logit_error": err,
              "greedy_equal": greedy == expected_tokens, "greedy": greedy, "greedy_uncached_equal": uncached_equal,
              "tokenizer_loaded": tokenizer_loaded,
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    print(json.dumps(result), flush=True)
    return err <= tolerance and (result["greedy_equal"] or uncached_equal is True) and tokenizer_loaded in (None, True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ok = all([check(d, args.tolerance) for d in args.dirs])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
