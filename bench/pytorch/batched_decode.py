"""A plain-PyTorch batched Llama decoder: the peer of Tessera's serving benchmark (bench/Tessera.Bench/Serving/ServeBench.cs).

The llama-1b shape (Llama 3.2 1B: 16 layers, 2048 wide, 32 query and 8 key/value heads of 64, SwiGLU 8192, vocabulary
128256, tied embeddings, RoPE theta 500000) with random bf16 weights; a static KV cache (L, B, S, K, D); a fixed batch of
B sequences; each prompt of P tokens prefilled in one pass, then N greedy decode steps, the decode step compiled with
torch.compile(mode="reduce-overhead") (CUDA graphs). Prints one table row per batch size:
generated tokens/s = B * N / decode time (prefill excluded), and ms per step.

    python3 bench/pytorch/batched_decode.py [--batch 1,8,32,64,128] [--prompt 512] [--new 128]
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

L, C, H, K, D, FF, V, THETA = 16, 2048, 32, 8, 64, 8192, 128256, 500000.0


def rms(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def rope(x, cos, sin):
    # x (B, T, heads, D); cos, sin (B, T, 1, D/2): "rotate half" pairs (i, i + D/2), as Hugging Face Llama
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Decoder:
    def __init__(self, batch, max_len, device="cuda", dtype=torch.bfloat16):
        g = torch.Generator(device=device).manual_seed(0)
        def w(*shape, std=0.02):
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * std).to(dtype)
        self.emb = w(V, C)
        self.layers = [dict(n1=torch.ones(C, device=device, dtype=dtype), qkv=w((H + 2 * K) * D, C), o=w(C, C, std=0.02 / math.sqrt(2 * L)),
                            n2=torch.ones(C, device=device, dtype=dtype), gu=w(2 * FF, C), down=w(C, FF, std=0.02 / math.sqrt(2 * L))) for _ in range(L)]
        self.norm = torch.ones(C, device=device, dtype=dtype)
        self.k = torch.zeros(L, batch, max_len, K, D, device=device, dtype=dtype)
        self.v = torch.zeros(L, batch, max_len, K, D, device=device, dtype=dtype)
        # A static cache: fixed addresses, so the recorded decode graph may write into them (as transformers' StaticCache).
        torch._dynamo.mark_static_address(self.k)
        torch._dynamo.mark_static_address(self.v)
        inv = 1.0 / (THETA ** (torch.arange(0, D // 2, device=device, dtype=torch.float64) * 2 / D))
        ang = torch.arange(max_len, device=device, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().to(dtype), ang.sin().to(dtype)
        self.max_len = max_len

    def forward(self, tokens, pos):
        # tokens (B, T); pos (B, T) absolute positions; writes K/V at pos and attends to everything up to it.
        b, t = tokens.shape
        x = self.emb[tokens]
        cos, sin = self.cos[pos][:, :, None, :], self.sin[pos][:, :, None, :]
        mask = torch.arange(self.max_len, device=tokens.device)[None, None, None, :] <= pos[:, None, :, None]   # (B, 1, T, S)
        bidx = torch.arange(b, device=tokens.device)[:, None]
        for i, p in enumerate(self.layers):
            qkv = (rms(x, p["n1"]) @ p["qkv"].T).view(b, t, H + 2 * K, D)
            q, k, v = qkv[:, :, :H], qkv[:, :, H:H + K], qkv[:, :, H + K:]
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            self.k[i][bidx, pos] = k
            self.v[i][bidx, pos] = v
            att = F.scaled_dot_product_attention(q.transpose(1, 2), self.k[i].transpose(1, 2), self.v[i].transpose(1, 2),
                                                 attn_mask=mask, enable_gqa=True)
            x = x + att.transpose(1, 2).reshape(b, t, C) @ p["o"].T
            gu = rms(x, p["n2"]) @ p["gu"].T
            x = x + (F.silu(gu[..., :FF]) * gu[..., FF:]) @ p["down"].T
        return rms(x[:, -1], self.norm) @ self.emb.T                          # (B, V) logits of the last position


def run(batch, prompt, new):
    torch.manual_seed(0)
    dec = Decoder(batch, prompt + new)
    tokens = torch.randint(0, V, (batch, prompt), device="cuda")
    pos = torch.arange(prompt, device="cuda")[None, :].expand(batch, prompt).contiguous()
    step = torch.compile(dec.forward, mode="reduce-overhead", fullgraph=True)
    def generate():
        nxt = dec.forward(tokens, pos).argmax(-1)
        p = torch.full((batch, 1), prompt, device="cuda", dtype=torch.long)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(new - 1):
            nxt = step(nxt[:, None], p).argmax(-1)
            p += 1
        torch.cuda.synchronize()
        return time.perf_counter() - t0
    generate()                      # compile and record
    generate()
    seconds = min(generate() for _ in range(2))
    steps = new - 1
    print(f"| PyTorch {torch.__version__} compile reduce-overhead, static cache | llama-1b | bf16 | {batch} | {prompt} | {new} | "
          f"{batch * steps / seconds:,.0f} | {seconds * 1000 / steps:.3f} |", flush=True)
    del dec, step
    torch.cuda.empty_cache()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1,8,32,64,128")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    a = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}")
    print("| system | model | dtype | batch | prompt | new | generated tokens/s (decode) | ms/step |")
    print("|---|---|---|---|---|---|---|---|")
    for b in [int(s) for s in a.batch.split(",")]:
        run(b, a.prompt, a.new)
