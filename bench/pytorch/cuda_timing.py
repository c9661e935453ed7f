"""How the PyTorch peers time one op (bench/pytorch/attention.py, gemm.py): CUDA events around each run."""
import torch


def median_ms(fn, reps):
    """Median milliseconds of fn() over reps runs after 3 warm-ups, each run between its own pair of CUDA events."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[reps // 2]
