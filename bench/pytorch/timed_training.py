"""What the PyTorch peers of Tessera's gpu-train (train_gpt2.py, train_llama.py) share: TF32 and the markdown header, fused
AdamW as Tessera's (betas 0.9/0.95, weight decay 0.1 on matrices, none on vectors), the CUDA-event-timed steps under bf16
autocast with global-norm clipping at 1.0, and the timing cells of the row: ms/step (median of the timed steps after
warm-up), tokens/s, MFU = (6N + 12*L*T*C) * tokens/s over 989 and 790 TFLOP/s, peak GiB (torch.cuda.max_memory_allocated),
and the phase split (forward+loss, backward, optimizer).

Not a script: the peers import it from their own folder (scripts/gpu-bench.sh copies it beside them).
"""
import statistics
import sys

import torch


def start(no_header):
    """TF32 matmuls, as Tessera's F32 paths; then the table header unless no_header."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if not no_header:
        print("| system | model | dtype | B x T | recompute | ms/step | tokens/s | MFU (989) | MFU (790) | peak GiB | fwd+loss ms | bwd ms | optim ms |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def adamw(model):
    """Fused AdamW: weight decay 0.1 on matrices (and embeddings), none on vectors."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-4, betas=(0.9, 0.95), eps=1e-8, fused=True)


def train_and_time(model, compile_model, token_high, batch, seq, steps, warmup, profile=False):
    """Trains model (compiled or not) on random tokens in [0, token_high) for warmup + steps steps; returns its parameter
    count, the timed steps' (total, forward+loss, backward, optimizer) ms, and the last loss. With profile, one more step
    (not timed) runs under torch.profiler and the 25 kernels with the most GPU time are printed to stderr (the per-op
    table beside Tessera's ProfileOps=true; which attention kernels SDPA took shows there)."""
    n_params = sum(p.numel() for p in model.parameters())
    opt = adamw(model)
    step_model = torch.compile(model) if compile_model else model
    x = torch.randint(0, token_high, (batch, seq), device="cuda")
    y = torch.randint(0, token_high, (batch, seq), device="cuda")
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    rows = []
    torch.cuda.reset_peak_memory_stats()
    for s in range(warmup + steps + (1 if profile else 0)):
        prof = None
        if s == warmup + steps:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            prof.__enter__()
        ev[0].record()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(x, y)
        ev[1].record()
        loss.backward()
        ev[2].record()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ev[3].record()
        loss_value = loss.item()
        torch.cuda.synchronize()
        if prof is not None:
            prof.__exit__(None, None, None)
            print_kernels(prof)
        elif s >= warmup:
            rows.append((ev[0].elapsed_time(ev[3]), ev[0].elapsed_time(ev[1]), ev[1].elapsed_time(ev[2]), ev[2].elapsed_time(ev[3])))
    return n_params, rows, loss_value


def print_kernels(prof):
    """The profiled step's kernels, most GPU time first (the profiler's own table, 25 rows), to stderr."""
    averages = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            print(averages.table(sort_by=key, row_limit=25, max_name_column_width=90), file=sys.stderr)
            return
        except (AttributeError, KeyError, ValueError):
            continue


def system_cell(compile_model):
    """The row's first cell (without its closing bar): the PyTorch version, and whether the model is compiled."""
    return f"| PyTorch {torch.__version__.split('+')[0]}{' compile' if compile_model else ''} |"


def timing_cells(rows, batch, seq, n_params, layers, c):
    """The row's cells from ms/step to the phase split, from train_and_time's rows (peak memory read now)."""
    ms = statistics.median(r[0] for r in rows)
    tok_s = batch * seq / (ms / 1000)
    flops = (6 * n_params + 12 * layers * seq * c) * tok_s
    peak = torch.cuda.max_memory_allocated() / 2**30
    med = lambda i: statistics.median(r[i] for r in rows)
    return (f"{ms:.1f} | {tok_s:.0f} | {flops / 989e12:.1%} | {flops / 790e12:.1%} | {peak:.1f} | "
            f"{med(1):.1f} | {med(2):.1f} | {med(3):.1f} |")
