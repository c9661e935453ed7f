#!/usr/bin/env bash
# The serving benchmark in ONE device call: the CUDA serving tests (optional), Tessera's HTTP server under 1..128 concurrent
# streaming clients, the batch-1 `generate` decode of the same shape for the 5 % comparison, and the plain-PyTorch batched
# decoder as the peer.
#
#   DEST=.device/serve bench/serve/gpu-serve-bench.sh prepare     (development machine, repository root)
#       builds bench/Tessera.Bench (with Tessera.Server) into DEST/app, packs the .NET runtime with ASP.NET Core's shared
#       framework (DEST/dotnet-runtime.tar.xz), copies this script and bench/pytorch/batched_decode.py; with TESTS=1 also
#       the test project, compressed (DEST/tests.tar.xz: the carried folder must stay under 64 MiB).
#   bash .device/serve/gpu-serve-bench.sh run                      (GPU machine, repository root, .device carried)
#       runs, logging under $OUT: the serving tests when tests.tar.xz is there (CudaPagedServingTests, the flash-attention
#       forward it shares a tile with, the gate/up products; TEST_TIMEOUT s), then `serve` (llama-1b bf16, 512-token
#       prompts, 128 new tokens, concurrency 1,8,32,64,128, 2 requests per client; SERVE_TIMEOUT s), `gpu-decode` (llama-1b
#       bf16, prompt 512, 128 new, the dense generate path), then batched_decode.py (batches 1,8,32,64,128; TORCH_TIMEOUT s).
#       Prints the tables last. LEVELS=..., ROUNDS=..., TORCH_BATCHES=..., RUN_TESTS=0, RUN_TORCH=0, RUN_DECODE=0 change or
#       skip parts; SERVE_ARGS adds arguments to `serve` (e.g. "--no-graphs", "--decoding-step-tokens 1024", "--device-time"); SERVE_AB runs `serve`
#       again with SERVE_AB added to SERVE_ARGS (e.g. "--no-async"), logged to serve-ab.md, and with several variants separated
#       by ';' once per variant (serve-ab.md, serve-ab-2.md, ...), after `gpu-decode`; TEST_METHODS replaces the test selection
#       (xunit -method patterns, space-separated); TESTS_LAST=1 runs the tests after the benchmarks (a short call measures
#       first); DECODE_TIMEOUT (default 180 s) bounds `gpu-decode`.
set -uo pipefail
mode="${1:-run}"; shift || true
case "$mode" in
prepare)
    set -e
    dest="${DEST:-.device/serve}"
    rm -rf "$dest/app"; mkdir -p "$dest/app"
    dotnet build bench/Tessera.Bench -c Release -o "$dest/app" -v q -nologo
    find "$dest/app" -name '*.pdb' -delete
    rm -rf "$dest/app/runtimes/win"* "$dest/app/runtimes/osx"* 2>/dev/null || true
    [ -f "$dest/dotnet-runtime.tar.xz" ] || scripts/pack-dotnet-runtime.sh "$dest/dotnet-runtime.tar.xz"
    rm -f "$dest/tests.tar.xz"
    if [ "${TESTS:-0}" = 1 ]; then
        tmp="$(mktemp -d)"
        dotnet build tests/Tessera.Tests -c Release -o "$tmp/tests" -v q -nologo
        find "$tmp/tests" -name '*.pdb' -delete
        rm -rf "$tmp/tests/runtimes"                                  # the plotting library's native builds: no plots on the GPU
        tar -C "$tmp" -cJf "$dest/tests.tar.xz" tests
        rm -rf "$tmp"
    fi
    cp "$0" "$dest/gpu-serve-bench.sh"
    cp bench/pytorch/batched_decode.py "$dest/batched_decode.py"
    git rev-parse --short HEAD > "$dest/commit.txt"
    du -sh "$dest"
    ;;
run)
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
    out="${OUT:-$PWD/gpu-serve-out}"; mkdir -p "$out"
    dir="$(cd "$(dirname "$0")" && pwd)"
    if [ ! -x /tmp/dotnet/dotnet ] || [ ! -d /tmp/dotnet/shared/Microsoft.AspNetCore.App ]; then
        mkdir -p /tmp/dotnet && tar -C /tmp/dotnet -xJf "$dir/dotnet-runtime.tar.xz" || { echo "cannot unpack the runtime"; exit 1; }
    fi
    export DOTNET_ROOT=/tmp/dotnet DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_gcServer=0
    export TESSERA_KERNEL_CACHE="${TESSERA_KERNEL_CACHE:-/tmp/tessera-kernels}"
    dn=/tmp/dotnet/dotnet
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu.txt"
    echo "commit $(cat "$dir/commit.txt" 2>/dev/null), $(date -u +%Y-%m-%dT%H:%MZ)" | tee -a "$out/gpu.txt"
    rc=0
    run_tests() {
        [ -f "$dir/tests.tar.xz" ] && [ "${RUN_TESTS:-1}" = 1 ] || return 0
        rm -rf /tmp/tessera-tests && mkdir -p /tmp/tessera-tests && tar -C /tmp/tessera-tests -xJf "$dir/tests.tar.xz"
        t=/tmp/tessera-tests/tests/Tessera.Tests.dll
        # -method filters only (xunit v3 ORs filters of one kind and ANDs kinds), fully qualified names with wildcards.
        methods="${TEST_METHODS:-Tessera.Tests.Cuda.CudaPagedServingTests.* *.FlashAttentionMatchesReference *.StackedGateAndUpProductMatchesTheReference *.FusedSwiGluProductMatchesTheReference}"
        margs=(); for m in $methods; do margs+=(-method "$m"); done
        timeout "${TEST_TIMEOUT:-110}" $dn "$t" "${margs[@]}" -parallel none -reporter verbose > "$out/tests.log" 2>&1 || rc=1
    }
    [ "${TESTS_LAST:-0}" = 1 ] || run_tests
    # shellcheck disable=SC2086
    timeout "${SERVE_TIMEOUT:-420}" $dn "$dir/app/Tessera.Bench.dll" serve --device cuda --preset llama-1b --dtype bf16 --prompt 512 --new 128 \
        --concurrency "${LEVELS:-1,8,32,64,128}" --rounds "${ROUNDS:-2}" ${SERVE_ARGS:-} > "$out/serve.md" 2> "$out/serve.err" || rc=1
    if [ "${RUN_DECODE:-1}" = 1 ]; then
        timeout "${DECODE_TIMEOUT:-180}" $dn "$dir/app/Tessera.Bench.dll" gpu-decode --preset llama-1b --dtype bf16 --prompt 512 --new 128 > "$out/decode.md" 2>> "$out/serve.err" || rc=1
    fi
    ab_files=()
    if [ -n "${SERVE_AB:-}" ]; then
        IFS=';' read -r -a variants <<< "$SERVE_AB"
        for i in "${!variants[@]}"; do
            f="$out/serve-ab$([ "$i" -gt 0 ] && echo "-$((i + 1))").md"
            echo "${variants[$i]}" > "$f.args"
            ab_files+=("$f")
            # shellcheck disable=SC2086
            timeout "${SERVE_TIMEOUT:-420}" $dn "$dir/app/Tessera.Bench.dll" serve --device cuda --preset llama-1b --dtype bf16 --prompt 512 --new 128 \
                --concurrency "${LEVELS:-1,8,32,64,128}" --rounds "${ROUNDS:-2}" ${SERVE_ARGS:-} ${variants[$i]} > "$f" 2>> "$out/serve.err" || rc=1
        done
    fi
    [ "${TESTS_LAST:-0}" = 1 ] && run_tests
    if [ "${RUN_TORCH:-1}" = 1 ]; then
        timeout "${TORCH_TIMEOUT:-420}" python3 "$dir/batched_decode.py" --batch "${TORCH_BATCHES:-${LEVELS:-1,8,32,64,128}}" --prompt 512 --new 128 > "$out/torch.md" 2> "$out/torch.err" || rc=1
    fi
    echo
    if [ -f "$out/tests.log" ]; then
        echo "================ CUDA serving tests ================"
        sed 's/\x1b\[[0-9;]*m//g' "$out/tests.log" | grep -E -A3 '\[FAIL\]' | head -60
        sed 's/\x1b\[[0-9;]*m//g' "$out/tests.log" | grep -E '^\s*\[(paged|dense)|^\| |Total: ' | head -200
    fi
    echo "================ Tessera server (HTTP, streaming clients) ================"; cat "$out/serve.md"; tail -5 "$out/serve.err"
    for f in "${ab_files[@]}"; do
        [ -f "$f" ] && { echo "================ Tessera server with $(cat "$f.args") ================"; cat "$f"; }
    done
    echo "================ Tessera generate (batch 1, dense cache) ================"; cat "$out/decode.md" 2>/dev/null
    echo "================ PyTorch batched decoder ================"; cat "$out/torch.md" 2>/dev/null; tail -5 "$out/torch.err" 2>/dev/null
    exit $rc
    ;;
*) echo "usage: gpu-serve-bench.sh prepare | run"; exit 2 ;;
esac
