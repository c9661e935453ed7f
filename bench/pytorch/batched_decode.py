"""A plain-PyTorch batched Llama decoder: the peer of Tessera's serving benchmark (bench/Tessera.Bench/Serving/ServeBench.cs).

The llama-1b shape (Llama 3.2 1B: 16 layers, 2048 wide, 32 query and 8 key/value heads of 64, SwiGLU 8192, vocabulary
128256, tied embeddings, RoPE theta 500000) with random bf16 weights, written the way a careful PyTorch user writes a fast
decoder (the gpt-fast recipe): the model is an nn.Module whose weights are parameters and whose static KV cache (one
(B, K, S, D) buffer per layer) and rotary tables are buffers, so the CUDA graph that torch.compile(mode="reduce-overhead")
records reads them in place; the cache is written in place at the step's position; decode attention is grouped (each key/value
head read once for its 4 query heads) over the whole static cache under a causal mask; greedy sampling is inside the
compiled step. A fixed batch of B sequences: each prompt of P tokens prefilled in one pass (eager, or compiled with
--compile-prefill), then N - 1 compiled decode steps. Prints one table row per batch size: generated tokens/s = B * (N - 1) /
decode time (prefill excluded), ms per step, the prefill's time (the pass that gives each sequence its first token), generated
tokens/s end to end = B * N / (prefill + decode time) (what a server's clients see, as Tessera's serving benchmark reports it),
and the number of graph recordings torch skipped (0 means every step replayed a CUDA graph).

With --fp8 every linear weight (QKV, output, gate/up, down and the tied head) is kept as float8_e4m3fn with one scale per
output row, and each product quantizes its input per row (scale = the row's largest magnitude / 448) and multiplies on the
FP8 tensor cores through torch._scaled_mm with row-wise scales and a bf16 output: the dynamic per-token FP8 recipe (as
torchao's float8 row-wise inference and vLLM's dynamic FP8 do), the peer of Tessera's `--quantize fp8`.

With --temperature T (and --top-p P) the compiled step samples instead of taking the argmax, the way a PyTorch user writes it
(gpt-fast's exponential race, with a sorted-cumsum nucleus for top-p): logits / T in fp32, the tokens outside the shortest
prefix of probability P masked, softmax, then argmax(p / E) for E ~ Exp(1) drawn in the graph (torch's CUDA-graph-safe RNG):
the peer of Tessera's serving bench with --temperature and --top-p, whose tokens are drawn on the device.

Earlier versions of this peer wrote each layer's keys and values into a view of one (L, ...) cache tensor and measured 2.8
and 1.6 ms a step at batch 1, 11.7 and 17.7 ms at batch 64 (most likely torch rebuilt the whole cache at every write); with a
buffer per layer this one gives 1.31 and 2.03 ms on an H200 (docs/benchmarks.md, session 11), as a good PyTorch decoder should.

    python3 bench/pytorch/batched_decode.py [--batch 1,8,32,64,128] [--prompt 512] [--new 128] [--no-tuning] [--compile-prefill] [--fp8]
        [--temperature T] [--top-p P]
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

L, C, H, K, D, FF, V, THETA = 16, 2048, 32, 8, 64, 8192, 128256, 500000.0
G = H // K
F8 = torch.float8_e4m3fn
F8_MAX = 448.0
PRODUCTS = ("qkv", "o", "gu", "down")


def to_fp8(w):
    # (N, K) bf16 -> the (N, K) e4m3 values and the (1, N) f32 scales that _scaled_mm takes for its second operand
    s = w.float().abs().amax(1, keepdim=True).clamp(min=1e-12) / F8_MAX
    return (w.float() / s).to(F8), s.t().contiguous()


def linear(x, m, name):
    # x @ W^T: in bf16, or (with --fp8) x quantized per row and multiplied by the e4m3 weight on the FP8 tensor cores
    if not hasattr(m, name + "_q"):
        return F.linear(x, getattr(m, name))
    wq, ws = getattr(m, name + "_q"), getattr(m, name + "_s")
    x2 = x.reshape(-1, x.shape[-1])
    sx = x2.float().abs().amax(-1, keepdim=True).clamp(min=1e-12) / F8_MAX
    xq = (x2.float() / sx).clamp(-F8_MAX, F8_MAX).to(F8)
    y = torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=ws, out_dtype=torch.bfloat16)
    return y.view(*x.shape[:-1], y.shape[-1])


def rms(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):
    # x (B, T, heads, D); cos, sin (1, T, 1, D/2): "rotate half" pairs (i, i + D/2), as Hugging Face Llama
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Block(nn.Module):
    def __init__(self, w, batch, max_len):
        super().__init__()
        # This layer's static cache (B, K, S, D), a buffer of its own: written in place at the step's position. (A view
        # into one (L, ...) buffer instead made torch rebuild the whole buffer at every write: 17.7 ms a step at batch 64.)
        self.register_buffer("kc", torch.zeros(batch, K, max_len, D, device="cuda", dtype=torch.bfloat16))
        self.register_buffer("vc", torch.zeros(batch, K, max_len, D, device="cuda", dtype=torch.bfloat16))
        self.n1 = nn.Parameter(torch.ones(C, device="cuda", dtype=torch.bfloat16), requires_grad=False)
        self.qkv = nn.Parameter(w((H + 2 * K) * D, C), requires_grad=False)
        self.o = nn.Parameter(w(C, C, std=0.02 / math.sqrt(2 * L)), requires_grad=False)
        self.n2 = nn.Parameter(torch.ones(C, device="cuda", dtype=torch.bfloat16), requires_grad=False)
        self.gu = nn.Parameter(w(2 * FF, C), requires_grad=False)
        self.down = nn.Parameter(w(C, FF, std=0.02 / math.sqrt(2 * L)), requires_grad=False)

    def to_fp8(self):
        for name in PRODUCTS:
            q, s = to_fp8(getattr(self, name))
            delattr(self, name)
            self.register_buffer(name + "_q", q)
            self.register_buffer(name + "_s", s)


class Decoder(nn.Module):
    def __init__(self, batch, max_len, fp8=False, temperature=0.0, top_p=1.0):
        super().__init__()
        self.temperature, self.top_p = temperature, top_p
        g = torch.Generator(device="cuda").manual_seed(0)
        def w(*shape, std=0.02):
            return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32) * std).to(torch.bfloat16)
        self.emb = nn.Parameter(w(V, C), requires_grad=False)
        self.layers = nn.ModuleList([Block(w, batch, max_len) for _ in range(L)])
        self.norm = nn.Parameter(torch.ones(C, device="cuda", dtype=torch.bfloat16), requires_grad=False)
        inv = 1.0 / (THETA ** (torch.arange(0, D // 2, device="cuda", dtype=torch.float64) * 2 / D))
        ang = torch.arange(max_len, device="cuda", dtype=torch.float64)[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos().to(torch.bfloat16))
        self.register_buffer("sin", ang.sin().to(torch.bfloat16))
        self.register_buffer("causal", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device="cuda")))
        if fp8:                                    # the tied head's FP8 copy; the lookup keeps the bf16 table
            for p in self.layers:
                p.to_fp8()
            q, s = to_fp8(self.emb)
            self.register_buffer("head_q", q)
            self.register_buffer("head_s", s)

    def forward(self, tokens, pos):
        # tokens (B, T); pos (T,) absolute positions shared by the batch; writes K/V at pos, attends to everything up to it,
        # returns the greedy next token of each sequence (B,).
        b, t = tokens.shape
        x = F.embedding(tokens, self.emb)
        cos, sin = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        for p in self.layers:
            qkv = linear(rms(x, p.n1), p, "qkv").view(b, t, H + 2 * K, D)
            q, k, v = qkv[:, :, :H], qkv[:, :, H:H + K], qkv[:, :, H + K:]
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            p.kc[:, :, pos] = k.transpose(1, 2)
            p.vc[:, :, pos] = v.transpose(1, 2)
            if t > 1:                                                      # prefill from position 0: causal over the prompt
                att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                     is_causal=True, enable_gqa=True).transpose(1, 2)
            else:                                                          # decode: grouped heads over the static cache
                qg = q.view(b, K, G, D)
                s = torch.matmul(qg, p.kc.transpose(-1, -2)).float() * (1.0 / math.sqrt(D))   # (B, K, G, S)
                s = s.masked_fill(~self.causal[pos][None, None], float("-inf"))
                att = torch.matmul(torch.softmax(s, dim=-1).to(x.dtype), p.vc)                 # (B, K, G, D)
            x = x + linear(att.reshape(b, t, C), p, "o")
            gu = linear(rms(x, p.n2), p, "gu")
            x = x + linear(F.silu(gu[..., :FF]) * gu[..., FF:], p, "down")
        h = rms(x[:, -1], self.norm)
        return self.choose(linear(h, self, "head") if hasattr(self, "head_q") else F.linear(h, self.emb))

    def choose(self, logits):
        # (B, V) -> (B,): greedy, or a draw at the temperature within the top-p nucleus (exponential race).
        if self.temperature == 0:
            return logits.argmax(-1)
        x = logits.float() / self.temperature
        if self.top_p < 1:
            s, i = torch.sort(x, dim=-1, descending=True)
            p = torch.softmax(s, dim=-1)
            s = s.masked_fill(p.cumsum(-1) - p >= self.top_p, float("-inf"))   # keep the shortest prefix reaching top_p
            x = torch.full_like(x, float("-inf")).scatter(-1, i, s)
        p = torch.softmax(x, dim=-1)
        return torch.argmax(p / torch.empty_like(p).exponential_(1), dim=-1)


def run(batch, prompt, new, compile_prefill, fp8, temperature=0.0, top_p=1.0):
    torch.manual_seed(0)
    dec = Decoder(batch, prompt + new, fp8, temperature, top_p)
    tokens = torch.randint(0, V, (batch, prompt), device="cuda")
    step = torch.compile(dec, mode="reduce-overhead", fullgraph=True)
    # The prompts' pass: eager as gpt-fast runs it by default, or compiled (its own graph at the prompt's shape; no CUDA graph).
    # A function of its own, so that its compiled code is cached apart from the decode step's (Decoder.forward's).
    def prompts_pass(t, pos):
        return dec(t, pos)
    prefill = torch.compile(prompts_pass, fullgraph=True, dynamic=False) if compile_prefill else dec

    def generate():
        # (prefill seconds, decode seconds): the prompts' pass gives each sequence its first token, the compiled steps the rest.
        with torch.no_grad():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            nxt = prefill(tokens, torch.arange(prompt, device="cuda"))
            pos = torch.tensor([prompt], device="cuda")
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            for _ in range(new - 1):
                nxt = step(nxt[:, None], pos).clone()
                pos += 1
            torch.cuda.synchronize()
            return t1 - t0, time.perf_counter() - t1

    generate()                      # compile and record
    generate()
    runs = [generate() for _ in range(2)]
    prefill_s, seconds = min(r[0] for r in runs), min(r[1] for r in runs)
    steps = new - 1
    skips = torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0)
    how = "compiled" if compile_prefill else "eager"
    dtype = "fp8 (e4m3, row-wise scales) + bf16" if fp8 else "bf16"
    sampling = f", sampled (temperature {temperature}, top_p {top_p})" if temperature > 0 else ""
    print(f"| PyTorch {torch.__version__} compile reduce-overhead, static cache, {how} prefill{sampling} | llama-1b | {dtype} | {batch} | {prompt} | {new} | "
          f"{batch * steps / seconds:,.0f} | {seconds * 1000 / steps:.3f} | {prefill_s * 1000:.1f} | "
          f"{batch * new / (prefill_s + seconds):,.0f} | {skips} |", flush=True)
    del dec, step
    torch._dynamo.reset()
    torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1,8,32,64,128")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--no-tuning", action="store_true", help="skip inductor's coordinate-descent tuning (faster compile)")
    ap.add_argument("--compile-prefill", action="store_true", help="compile the prompts' pass too (torch.compile at the prompt's shape)")
    ap.add_argument("--fp8", action="store_true", help="e4m3 weights with row-wise scales, inputs quantized per row, torch._scaled_mm")
    ap.add_argument("--temperature", type=float, default=0.0, help="sample at this temperature inside the compiled step (0: greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="with --temperature: keep the shortest prefix of this probability")
    a = ap.parse_args()
    torch._inductor.config.coordinate_descent_tuning = not a.no_tuning
    torch._inductor.config.triton.unique_kernel_names = True
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| system | model | dtype | batch | prompt | new | generated tokens/s (decode) | ms/step | prefill ms | "
          "generated tokens/s (prefill + decode) | graph skips |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for b in [int(s) for s in a.batch.split(",")]:
        run(b, a.prompt, a.new, a.compile_prefill, a.fp8, a.temperature, a.top_p)
