#!/usr/bin/env python3
"""Load a Hugging Face base directory plus a Tessera-written LoRA adapter with peft and compare against Tessera's logits.

Each case directory (written by tests/Tessera.Tests/Models/Adapters/PeftInteropTests.cs) holds:
    base/                           the base model (Tessera's Hugging Face export: config.json, model.safetensors)
    adapter/                        the adapter Tessera wrote (adapter_config.json, adapter_model.safetensors)
    tessera_reference.safetensors   tokens (B, T) I32 and logits (B, T, V) F32: Tessera's base + unmerged adapter

The script loads base/ with AutoModelForCausalLM (float32, CPU, SDPA attention), wraps it with
peft.PeftModel.from_pretrained(model, adapter/), and checks that
  - every lora_A / lora_B tensor of the file became a parameter of the model with the same values (nothing dropped or
    renamed: peft loads adapters non-strictly, so a wrong name would otherwise pass silently as a zero adapter),
  - the adapted logits agree with Tessera's within --tolerance (default 1e-4, max |diff| / max |reference|),
  - the adapter matters: the logits with peft's adapter disabled differ from Tessera's by more than 100x the tolerance.
A mixture-of-experts case is skipped, saying so, where transformers builds no per-expert modules (fused expert parameters).
It prints one JSON line per case and exits 0 when every case passes.

    python3 check_peft.py CASE_DIR [CASE_DIR...] [--tolerance 1e-4]
"""

import argparse
import json
import os
import sys

import peft
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM


def check(path, tolerance):
    ref = load_file(os.path.join(path, "tessera_reference.safetensors"))
    adapter_dir = os.path.join(path, "adapter")
    base = AutoModelForCausalLM.from_pretrained(os.path.join(path, "base"), dtype=torch.float32, attn_implementation="sdpa")
    # Tessera's expert adapters are one per expert's nn.Linear (block_sparse_moe.experts.J.w1, mlp.experts.J.gate_proj), as PEFT
    # makes them where transformers builds the experts as modules. Releases that hold the experts as fused 3-D parameters
    # (experts.gate_up_proj) have no such modules (PEFT adapts those through target_parameters): say so and skip the case.
    expert = {"mixtral": ".experts.0.w1", "qwen2_moe": ".experts.0.gate_proj", "qwen3_moe": ".experts.0.gate_proj"}.get(base.config.model_type)
    if expert is not None and not any(name.endswith(expert) for name, _ in base.named_modules()):
        print(json.dumps({"dir": path, "model_type": base.config.model_type, "skipped":
                          f"transformers {transformers.__version__} builds no per-expert modules (*{expert}); per-expert PEFT adapters do not apply"}), flush=True)
        return True
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()

    # Every tensor of the adapter file is a parameter of the peft model, with the file's values.
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    params = {}
    for name, p in model.named_parameters():
        if "lora_A" in name or "lora_B" in name:
            # "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight" -> the file's name without the adapter's name
            params[name.replace(".default", "")] = p.detach()
    missing = sorted(set(saved) - set(params))
    unloaded = sorted(set(params) - set(saved))
    value_error = max(((params[n] - saved[n].float()).abs().max().item() for n in saved if n in params), default=float("inf"))

    tokens = ref["tokens"].long()
    expected = ref["logits"].float()
    with torch.no_grad():
        logits = model(input_ids=tokens, use_cache=False).logits.float()[..., : expected.shape[-1]]
        with model.disable_adapter():
            base_logits = model(input_ids=tokens, use_cache=False).logits.float()[..., : expected.shape[-1]]
    scale = expected.abs().max().clamp_min(1e-30)
    err = ((logits - expected).abs().max() / scale).item()
    adapter_effect = ((base_logits - expected).abs().max() / scale).item()
    result = {
        "dir": path, "model_type": base.config.model_type, "tensors": len(saved), "missing": missing[:3], "not_in_file": unloaded[:3],
        "max_abs_value_error": value_error, "max_rel_logit_error": err, "adapter_effect": adapter_effect,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
    }
    print(json.dumps(result), flush=True)
    return not missing and not unloaded and value_error == 0.0 and err <= tolerance and adapter_effect > 100 * tolerance


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
