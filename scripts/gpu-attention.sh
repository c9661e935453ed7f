#!/usr/bin/env bash
# The Hopper attention kernel (flash_attention_hopper.cu) on a GPU in ONE device call: its tests, the FlashAttention-2
# tests, compute-sanitizer memcheck on its test class, and the gpu-attention micro-benchmark.
#
#   DEST=.device/fa3 scripts/gpu-attention.sh prepare      (development machine, repository root)
#       runs scripts/gpu-bench.sh prepare into DEST (tests/Tessera.Tests and its GpuBenchLauncher, which runs gpu-attention; framework-
#       dependent), copies this script. The .NET runtime is not packed: `run` takes DEST/dotnet-runtime.tar.xz, else
#       DEST/../dotnet-runtime.tar.xz (scripts/pack-dotnet-runtime.sh makes it).
#   bash .device/fa3/gpu-attention.sh run                   (GPU machine, repository root, .device carried)
#       RUN_TESTS=0, RUN_MEMCHECK=0, RUN_BENCH=0 skip a part; TRAINING_TESTS=1 adds the golden-model and mixed-precision
#       training test classes; SHAPES="B,T,H,K,D;..." and REPS=N go to gpu-attention;
#       TRAIN_AB="PRESET:B:T ..." adds gpu-train steps of each case under each of TRAIN_OPTIONS (';'-separated --cuda-options
#       settings, an empty one for the defaults; default "HopperAttention=false;": FA-2, then the defaults).
#       Logs go to $OUT (tests.log, memcheck.log, attention.md); the summary is printed last.
set -uo pipefail
mode="${1:-run}"; shift || true
case "$mode" in
prepare)
    set -e
    dest="${DEST:-.device/fa3}"
    repo="$(pwd)"
    # The test assembly and the launcher are gpu-bench.sh's (its launcher runs gpu-attention and gpu-train).
    DEST="$dest" bash "$repo/scripts/gpu-bench.sh" prepare
    cp "$0" "$dest/gpu-attention.sh"
    git rev-parse --short HEAD > "$dest/commit.txt"
    du -sh "$dest"
    ;;
run)
    out="${OUT:-$PWD/gpu-attention-out}"; mkdir -p "$out"
    dir="$(cd "$(dirname "$0")" && pwd)"
    runtime="$dir/dotnet-runtime.tar.xz"; [ -f "$runtime" ] || runtime="$dir/../dotnet-runtime.tar.xz"
    if [ ! -x /tmp/dotnet/dotnet ]; then
        mkdir -p /tmp/dotnet && tar -C /tmp/dotnet -xJf "$runtime" || { echo "cannot unpack $runtime"; exit 1; }
    fi
    export DOTNET_ROOT=/tmp/dotnet DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_gcServer=0
    export TESSERA_KERNEL_CACHE="${TESSERA_KERNEL_CACHE:-/tmp/tessera-kernels}"
    dn=/tmp/dotnet/dotnet
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
    echo "commit $(cat "$dir/commit.txt" 2>/dev/null), $(date -u +%Y-%m-%dT%H:%MZ)" | tee -a "$out/gpu.txt"
    rc=0
    if [ "${RUN_TESTS:-1}" = 1 ]; then
        t0=$(date +%s)
        timeout "${TEST_TIMEOUT:-100}" $dn "$dir/app/Tessera.Tests.dll" -class Tessera.Tests.Cuda.CudaHopperAttentionTests \
            -class Tessera.Tests.Cuda.CudaFlashAttentionTests -class Tessera.Tests.Cuda.CudaBackendOptionsTests \
            -parallel none -reporter verbose -showLiveOutput > "$out/tests.log" 2>&1 || rc=1
        echo "tests: $(( $(date +%s) - t0 )) s, exit $rc"
    fi
    if [ "${TRAINING_TESTS:-0}" = 1 ]; then
        # the golden-model and mixed-precision training tests under the current defaults (which attention kernels they use)
        t0=$(date +%s)
        timeout "${TRAINING_TEST_TIMEOUT:-70}" $dn "$dir/app/Tessera.Tests.dll" -class Tessera.Tests.Cuda.Training.CudaGoldenModelTests \
            -class Tessera.Tests.Cuda.Training.MixedPrecisionTrainingTests -parallel none -reporter verbose > "$out/training-tests.log" 2>&1 || rc=1
        echo "training tests: $(( $(date +%s) - t0 )) s, exit $rc"
    fi
    sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)"
    [ -n "$sanitizer" ] || echo "memcheck: no compute-sanitizer found"
    if [ "${RUN_MEMCHECK:-1}" = 1 ] && [ -n "$sanitizer" ]; then
        t0=$(date +%s)
        timeout "${MEMCHECK_TIMEOUT:-80}" "$sanitizer" --tool memcheck --print-limit 20 \
            $dn "$dir/app/Tessera.Tests.dll" -class Tessera.Tests.Cuda.CudaHopperAttentionTests -parallel none > "$out/memcheck.log" 2>&1
        echo "memcheck: $(( $(date +%s) - t0 )) s, exit $?"
    fi
    if [ "${RUN_BENCH:-1}" = 1 ]; then
        t0=$(date +%s)
        timeout "${BENCH_TIMEOUT:-50}" $dn "$dir/app/GpuBenchLauncher.dll" gpu-attention ${SHAPES:+--shapes "$SHAPES"} --reps "${REPS:-10}" \
            > "$out/attention.md" 2>&1 || rc=1
        echo "gpu-attention: $(( $(date +%s) - t0 )) s"
    fi
    for case in ${TRAIN_AB-}; do
        IFS=: read -r preset b t <<< "$case"
        IFS=';' read -ra variants <<< "${TRAIN_OPTIONS-HopperAttention=false;}"
        for options in "${variants[@]}"; do
            t0=$(date +%s)
            timeout "${TRAIN_TIMEOUT:-100}" $dn "$dir/app/GpuBenchLauncher.dll" gpu-train --preset "$preset" --batch "$b" --seq "$t" \
                --steps "${TRAIN_STEPS:-6}" --warmup 2 ${options:+--cuda-options "$options"} >> "$out/train.md" 2>&1 || rc=1
            echo "gpu-train $case ${options:-defaults}: $(( $(date +%s) - t0 )) s"
        done
    done
    echo "== tests (failures, measured errors, summary)"; grep -E "\[FAIL\]|\[SKIP\]|Total:|Failed|relative error|NVRTC|rror" "$out/tests.log" 2>/dev/null | head -120
    [ "${TRAINING_TESTS:-0}" = 1 ] && { echo "== training tests"; grep -E "\[FAIL\]|Total:" "$out/training-tests.log" | head -20; }
    echo "== memcheck"; grep -E "ERROR SUMMARY|Invalid|Total:" "$out/memcheck.log" 2>/dev/null | head -20
    echo "== gpu-attention"; cat "$out/attention.md" 2>/dev/null
    [ -n "${TRAIN_AB-}" ] && { echo "== gpu-train"; grep -E "^\|" "$out/train.md"; }
    exit $rc
    ;;
*)
    echo "usage: scripts/gpu-attention.sh prepare|run" >&2; exit 2 ;;
esac
