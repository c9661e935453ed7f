"""Batch-1 greedy decoding of a Hugging Face transformers model with random bf16 weights: the PyTorch peer of Tessera's
`gpu-decode --preset NAME` for the families the hand-written Llama decoder (batched_decode.py) does not cover.

The model is built from its transformers config at the shape of Tessera's preset (gemma2-2b: Gemma2ForCausalLM; gemma3-1b:
Gemma3ForCausalLM; qwen3-0.6b: Qwen3ForCausalLM), put on the GPU in bf16, and decoded the way the transformers documentation tells a user to decode fast:
generate() with a static KV cache, whose forward transformers compiles with torch.compile (mode "reduce-overhead": CUDA
graphs). Gemma 2 runs with eager attention by default, the implementation that applies its attention soft cap; --attention
sdpa runs it on SDPA, which drops the cap (less work than Tessera does, so a generous peer; its compile is much shorter). One
prompt of P random tokens, N new tokens forced (min_new_tokens = N, no end token), after a warm-up generate that compiles.
Decode ms/token = (time of generate(N) - time of generate(1)) / (N - 1): the prompt's pass and the first token cancel.

    python3 bench/pytorch/hf_decode.py --preset gemma2-2b [--prompt 512] [--new 256] [--attention eager|sdpa] [--no-compile] [--no-header]
"""
import argparse
import time

import torch
import transformers


def config_of(preset):
    if preset == "gemma2-2b":
        return transformers.Gemma2Config(
            vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
            num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0, max_position_embeddings=8192, rope_theta=10000.0, tie_word_embeddings=True), "eager"
    if preset == "gemma3-1b":
        return transformers.Gemma3TextConfig(
            vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
            num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512, max_position_embeddings=32768,
            tie_word_embeddings=True), "sdpa"
    if preset == "qwen3-0.6b":
        return transformers.Qwen3Config(
            vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
            num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
            tie_word_embeddings=True), "sdpa"
    raise SystemExit(f"hf_decode.py: unknown preset {preset}; known: gemma2-2b, gemma3-1b, qwen3-0.6b")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", required=True)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--no-compile", action="store_true", help="dynamic cache, eager forward")
    ap.add_argument("--attention", choices=["eager", "sdpa"], help="transformers' attention implementation (default: eager for gemma2, sdpa for gemma3)")
    ap.add_argument("--no-header", action="store_true")
    a = ap.parse_args()
    cfg, attention = config_of(a.preset)
    attention = a.attention or attention
    cfg._attn_implementation = attention
    capped = getattr(cfg, "attn_logit_softcapping", None)
    note = " attention" if not capped else (" attention, capped" if attention == "eager" else " attention: the cap dropped")
    torch.manual_seed(2)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).cuda().eval()
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    ids = torch.randint(0, cfg.vocab_size, (1, a.prompt), device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if not a.no_compile:
        kwargs["cache_implementation"] = "static"

    def generate(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        torch.cuda.synchronize()
        assert out.shape[1] == a.prompt + n, out.shape
        return time.perf_counter() - t0

    generate(a.new)                      # warm-up: compiles and records the decode graphs
    generate(1)
    one = min(generate(1) for _ in range(3))
    full = min(generate(a.new) for _ in range(2))
    ms = (full - one) * 1000 / (a.new - 1)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    path = "generate, static cache, compiled" if not a.no_compile else "generate, eager"
    if not a.no_header:
        print("| system | model | dtype | decode step | prompt | new | prefill ms | decode ms/token | decode tokens/s | weight GB/s | peak GiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| transformers {transformers.__version__} + torch {torch.__version__} | {a.preset} | BF16 | {path} ({attention}{note}) | "
          f"{a.prompt} | {a.new} | {one * 1000:.1f} | {ms:.3f} | {1000 / ms:.1f} | {weights / (ms / 1000) / 1e9:.0f} | "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} |")


if __name__ == "__main__":
    main()
