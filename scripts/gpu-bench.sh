#!/usr/bin/env bash
# GPU training/generation check and benchmarks in ONE device call (tests + Tessera vs PyTorch), two halves.
#
#   DEST=/path/to/main-checkout/.device/gputrain scripts/gpu-bench.sh prepare   (development machine, repo root)
#       builds tests/Tessera.Tests and a throwaway launcher for the bench/Tessera.Bench/Gpu entry points into
#       DEST/app (framework-dependent; one folder, so the Tessera assemblies travel once), copies this script and
#       bench/pytorch/train_gpt2.py. The .NET runtime is NOT packed again: `run` takes DEST/dotnet-runtime.tar.xz,
#       else DEST/../dotnet-runtime.tar.xz (made by scripts/gpu-check.sh prepare).
#   bash .device/gputrain/gpu-bench.sh run          (GPU machine, repository root, .device carried)
#       compiles every kernel module side by side first (gpu-compile; PRECOMPILE=0 skips it), then
#       runs the GPU tests of Tessera.Tests.Cuda.Training (TESTS=... to change the xunit filter, TESTS=none to skip),
#       gpu-train (GPT-2 124M, bf16, B=64 as 2 micro-batches of 32 x T=1024; then with --recompute),
#       bench/pytorch/train_gpt2.py with the same shape (RUN_TORCH=0 skips it; RUN_TRAIN=0 skips gpu-train,
#       RUN_RECOMPUTE=0 its --recompute run; PROFILE=1 adds a profiled run with a per-op table; TRAIN_VARIANTS="notune tune micro64 ce512
#       opt:FusedBiasGradient=true" adds runs without the timed cuBLASLt algorithm choice, with it (also "default"), with other
#       micro-batches, other cross-entropy threads, any backend options, TRAIN_ROUNDS=N times over (MICRO=64 runs gpt2-124m's
#       64 x 1024 as one micro-batch, as docs/benchmarks.md has measured it since session 7); NCU_TRAIN="REGEX:COUNT;..."
#       adds ncu sections of chosen kernels of one step), gpu-decode (llama-1b bf16, 512-token
#       prompt, 256 new tokens, the step recorded as a CUDA graph; RUN_DECODE=0 skips it; DECODE_VARIANTS="eager cublas profile"
#       (the default set) adds op-by-op, cuBLASLt-products and per-op-profiled runs; "nopdl", "nogqa", "ctasN", "noearly" and
#       "default" run without programmatic dependent launch, with the per-head decode attention, with N matrix-vector CTAs per SM,
#       with the products' first weight loads after the wait even in a decode step, and the default again; "int8" with every
#       weight matrix in int8, --quantize int8; "int8profile" the per-op profile of that; "fp8" and "fp8profile" the same with --quantize fp8; "int4" with --quantize int4, "int4profile" its per-op profile; "opts:K=V,..." with those backend options (no spaces: the variants are split on them); "resources" the step kernels' registers and CTAs per SM; "preset:NAME" the default decode of another preset, e.g. gemma2-2b; "hf:NAME[:eager|sdpa]" bench/pytorch/hf_decode.py's Hugging Face peer of that preset, with that attention), RUN_NCU=1 (ncu's GPU time and DRAM bytes of
#       every kernel of a few eager decode steps, in $OUT/ncu-decode.csv), LLAMA_CASES="PRESET:B:T[:recompute] ..." (gpu-train of
#       Llama shapes, each followed by bench/pytorch/train_llama.py with the same shape unless LLAMA_TORCH=0; LLAMA_PROFILE=1 adds
#       a profiled run of the first case with its per-op table), OFFLOAD_CASES="ARGS;ARGS" (gpu-offload runs, each in
#       its own process), PP_CASES="ARGS;ARGS" (gpu-pp runs: --stages, --curve N), SERVE_CASES="default;OPTIONS;..." (the serving benchmark at
#       SERVE_STREAMS clients, once per case; SERVE_TORCH=1 adds bench/pytorch/batched_decode.py at that batch,
#       SERVE_TORCH_COMPILE_PREFILL=1 with its prompts' pass compiled, SERVE_TORCH_FP8=1 its FP8 form (--fp8) after it,
#       SERVE_TORCH_SAMPLED=1 its sampled form (--temperature 1 --top-p 0.95)), NCU_TEST="REGEX:COUNT:Class.Method" (ncu's warp-state and memory tables of chosen
#       kernels inside a GPU test's profiled region), keeps logs under $OUT, and prints the summary tables last. Every variant reaches the CUDA backend as
#       the bench's --cuda-options flag (CudaBackendOptions.Parse's "Name=value,..." form), never as environment variables. The .NET runtime comes from
#       `scripts/pack-dotnet-runtime.sh .device/dotnet-runtime.tar.xz`.
set -uo pipefail
mode="${1:-run}"; shift || true
case "$mode" in
prepare)
    set -e
    dest="${DEST:-.device/gputrain}"
    repo="$(pwd)"
    rm -rf "$dest/app"; mkdir -p "$dest/app"
    dotnet build tests/Tessera.Tests -c Release -o "$dest/app" -v q -nologo
    launcher="$(mktemp -d)"
    cat > "$launcher/GpuBenchLauncher.csproj" <<XML
<Project Sdk="Microsoft.NET.Sdk">
  <PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><ImplicitUsings>enable</ImplicitUsings><Nullable>enable</Nullable></PropertyGroup>
  <ItemGroup><ProjectReference Include="$repo/bench/Tessera.Bench/Tessera.Bench.csproj" /></ItemGroup>
</Project>
XML
    cat > "$launcher/Program.cs" <<'CS'
return args.Length == 0 ? Usage() : args[0] switch
{
    "gpu-train" => Tessera.Bench.Gpu.GpuTrainingBench.Run(args[1..]),
    "gpu-decode" => Tessera.Bench.Gpu.GpuDecodeBench.Run(args[1..]),
    "gpu-offload" => Tessera.Bench.Gpu.OffloadBench.Run(args[1..]),
    "gpu-tp" => Tessera.Bench.Gpu.TensorParallelComputeBench.Run(args[1..]),
    "gpu-pp" => Tessera.Bench.Gpu.PipelineBench.Run(args[1..]),
    "gpu-attention" => Tessera.Bench.Gpu.GpuAttentionBench.Run(args[1..]),
    "gpu-gemm" => Tessera.Bench.Gpu.GpuMatMulBench.Run(args[1..]),
    "gpu-compile" => Tessera.Bench.Gpu.KernelPrecompileBench.Run(args[1..]),
    _ => Usage(),
};
static int Usage() { Console.Error.WriteLine("usage: GpuBenchLauncher gpu-train|gpu-decode|gpu-offload|gpu-tp|gpu-pp|gpu-attention|gpu-gemm|gpu-compile [options]"); return 2; }
CS
    dotnet build "$launcher/GpuBenchLauncher.csproj" -c Release -o "$dest/app" -v q -nologo
    rm -rf "$launcher"
    find "$dest/app" -name '*.pdb' -delete
    # No native libraries travel: they are the plotting library's (SkiaSharp, a dozen platforms, 100 MB), and the GPU runs
    # draw no plots; the payload must stay under the device tool's 64 MiB.
    rm -rf "$dest/app/runtimes"
    # Nor do the XML docs, the satellite resource folders (cs, de, ..., zh-Hant) or the golden files (5.6 MB): with the runtime
    # the folder would pass 64 MiB beside the working tree. The golden files travel with the repository; `run` copies them in.
    find "$dest/app" -maxdepth 1 -name '*.xml' -delete
    find "$dest/app" -mindepth 1 -maxdepth 1 -type d -regextype posix-extended -regex '.*/[a-z]{2}(-[A-Za-z]{2,4})?' -exec rm -rf {} +
    rm -rf "$dest/app/Golden"
    # Nor the plotting library (only the CLI's plot command uses it) or the VSTest adapter (the test assembly runs as its own
    # program here): 3 MB that the payload, the runtime and the tracked tree together no longer have room for (session 21).
    rm -f "$dest/app/ScottPlot.dll" "$dest/app/SkiaSharp.dll" "$dest/app/xunit.runner.visualstudio.testadapter.dll"
    # Nor VSTest's host and its dependencies (2.5 MB; session 26 found the payload 0.1 MiB under the limit without this): the
    # in-process xUnit v3 runner never loads them.
    rm -f "$dest/app/"Microsoft.TestPlatform.*.dll "$dest/app/"Microsoft.VisualStudio.TestPlatform.*.dll "$dest/app/testhost.dll" \
        "$dest/app/Microsoft.VisualStudio.CodeCoverage.Shim.dll" "$dest/app/Microsoft.ApplicationInsights.dll" "$dest/app/Newtonsoft.Json.dll"
    cp "$0" "$dest/gpu-bench.sh"
    cp bench/pytorch/train_gpt2.py "$dest/train_gpt2.py"
    cp bench/pytorch/train_llama.py "$dest/train_llama.py"
    cp bench/pytorch/timed_training.py "$dest/timed_training.py"   # the two peers import it from their folder
    cp bench/pytorch/batched_decode.py "$dest/batched_decode.py"
    cp bench/pytorch/hf_decode.py "$dest/hf_decode.py"
    cp bench/pytorch/gemm.py "$dest/gemm.py"
    cp bench/pytorch/cuda_timing.py "$dest/cuda_timing.py"   # gemm.py imports it from its folder
    git rev-parse --short HEAD > "$dest/commit.txt"
    du -sh "$dest"
    ;;
run)
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONUNBUFFERED=1
    out="${OUT:-$PWD/gpu-bench-out}"; mkdir -p "$out"
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
    # The golden files (left out of the payload) from the repository this runs in, for CudaGoldenModelTests.
    [ -d "$dir/app/Golden" ] || [ ! -d tests/Tessera.Tests/Golden ] || cp -r tests/Tessera.Tests/Golden "$dir/app/Golden"
    if [ "${PRECOMPILE:-1}" = 1 ]; then
        # Every kernel module compiled side by side on the machine's cores before anything launches (a fresh machine's cache is
        # empty, and each module would otherwise compile alone at its first launch: minutes of NVRTC in series). A failure
        # here stops nothing: what did not compile compiles at its first launch, as before. PRECOMPILE=0 skips it;
        # PRECOMPILE_MODULES="gemv.cu,flash_attention.cu,..." compiles only those (a short call's modules).
        t0=$(date +%s)
        timeout "${PRECOMPILE_TIMEOUT:-240}" $dn "$dir/app/GpuBenchLauncher.dll" gpu-compile ${PRECOMPILE_MODULES:+--modules "$PRECOMPILE_MODULES"} > "$out/compile.md" 2>&1 || echo "gpu-compile failed (see compile.md)"
        echo "gpu-compile: $(( $(date +%s) - t0 )) s"; tail -1 "$out/compile.md"
    fi
    tests="${TESTS:--namespace Tessera.Tests.Cuda.Training}"
    if [ "$tests" != none ]; then
        t0=$(date +%s)
        # shellcheck disable=SC2086
        timeout "${TEST_TIMEOUT:-240}" $dn "$dir/app/Tessera.Tests.dll" $tests -parallel none -reporter verbose -xml "$out/results.xml" > "$out/tests.log" 2>&1 || rc=1
        echo "tests: $(( $(date +%s) - t0 )) s"
    fi
    train() { timeout "$1" $dn "$dir/app/GpuBenchLauncher.dll" gpu-train "${@:2}" 2>>"$out/bench.err" | tee -a "$out/train.md"; }
    if [ "${RUN_TRAIN:-1}" = 1 ]; then
        t0=$(date +%s); train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 6 --warmup 2; echo "gpu-train: $(( $(date +%s) - t0 )) s"
        if [ "${RUN_RECOMPUTE:-1}" = 1 ]; then
            t0=$(date +%s); train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 6 --warmup 2 --recompute --no-header; echo "gpu-train --recompute: $(( $(date +%s) - t0 )) s"
        fi
    fi
    for round in $(seq 1 "${TRAIN_ROUNDS:-1}"); do
    for variant in ${TRAIN_VARIANTS-}; do
        # A/B runs of the plain step: notune keeps cuBLASLt's first heuristic answer for every product, tune (or default) is
        # the default again (to interleave), microN runs the batch as micro-batches of N, ceN gives the cross-entropy N threads
        # per row, opt:Name=value,... passes any backend options (--cuda-options), args:A+B+... any gpu-train arguments (split
        # at '+', e.g. args:--norm-bias-sums+--cuda-options+FusedAttentionBiasGradient=true). TRAIN_ROUNDS=N runs the list N times over,
        # alternating, since machines of one kind differ by about 2 % from call to call and a step by about 1 % from run to run.
        t0=$(date +%s)
        case "$variant" in
            notune) train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 6 --warmup 2 --no-header --cuda-options TuneMatMulAlgorithms=false ;;
            tune|default) train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 6 --warmup 2 --no-header ;;
            micro*) train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${variant#micro}" --steps 6 --warmup 2 --no-header ;;
            ce*) train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 6 --warmup 2 --no-header --cuda-options "CrossEntropyThreadsPerRow=${variant#ce}" ;;
            opt:*) train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 6 --warmup 2 --no-header --cuda-options "${variant#opt:}" ;;
            args:*) IFS='+' read -ra extra <<< "${variant#args:}"
                train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 6 --warmup 2 --no-header "${extra[@]}" ;;
            *) echo "gpu-bench.sh: unknown TRAIN_VARIANTS entry '$variant'"; rc=1 ;;
        esac
        echo "gpu-train $variant (round $round): $(( $(date +%s) - t0 )) s"
    done
    done
    if [ -n "${NCU_TRAIN:-}" ] && command -v ncu >/dev/null; then
        # ncu sections of chosen kernels of one training step: NCU_TRAIN="REGEX:COUNT;REGEX:COUNT", each its own ncu run
        # (the first COUNT launches whose names match REGEX), all into $OUT/ncu-train.txt.
        IFS=';' read -ra probes <<< "$NCU_TRAIN"
        for probe in "${probes[@]}"; do
            t0=$(date +%s)
            timeout "${NCU_TIMEOUT:-150}" ncu --kernel-name "regex:${probe%:*}" --launch-count "${probe##*:}" --section SpeedOfLight \
                --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
                $dn "$dir/app/GpuBenchLauncher.dll" gpu-train --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 1 --warmup 0 \
                >> "$out/ncu-train.txt" 2>>"$out/bench.err"
            echo "ncu train $probe: $(( $(date +%s) - t0 )) s"
        done
    fi
    if [ "${PROFILE:-0}" = 1 ]; then
        # per-op GPU time table (the backend's ProfileOps option): 3 timed steps after 1 warm-up
        t0=$(date +%s); train "${TRAIN_TIMEOUT:-75}" --batch "${BATCH:-64}" --micro "${MICRO:-32}" --steps 3 --warmup 1 --no-header --cuda-options ProfileOps=true; echo "gpu-train profiled: $(( $(date +%s) - t0 )) s"
    fi
    if [ "${RUN_TORCH:-1}" = 1 ]; then
        t0=$(date +%s)
        timeout "${TORCH_TIMEOUT:-120}" python3 "$dir/train_gpt2.py" --batch "${BATCH:-64}" --no-header 2>>"$out/bench.err" | tee -a "$out/train.md"
        echo "pytorch: $(( $(date +%s) - t0 )) s"
    fi
    llama_first=1
    for case in ${LLAMA_CASES-}; do
        # PRESET:B:T[:recompute]: Tessera's step, then the PyTorch Llama trainer on the same shape, one micro-batch each.
        IFS=: read -r preset b t rc <<< "$case"
        extra=(); [ "${rc:-}" = recompute ] && extra=(--recompute)
        header=(); { [ "${RUN_TRAIN:-1}" = 1 ] || [ $llama_first = 0 ]; } && header=(--no-header)
        t0=$(date +%s); train "${LLAMA_TIMEOUT:-150}" --preset "$preset" --batch "$b" --seq "$t" --steps "${LLAMA_STEPS:-6}" --warmup 2 "${extra[@]}" "${header[@]}"
        echo "gpu-train $case: $(( $(date +%s) - t0 )) s"
        if [ "${LLAMA_PROFILE:-0}" = 1 ] && [ $llama_first = 1 ]; then
            t0=$(date +%s)
            timeout "${LLAMA_TIMEOUT:-150}" $dn "$dir/app/GpuBenchLauncher.dll" gpu-train --preset "$preset" --batch "$b" --seq "$t" --steps 2 --warmup 1 \
                "${extra[@]}" --no-header --cuda-options ProfileOps=true > "$out/llama-profile.md" 2>>"$out/bench.err"
            echo "gpu-train $case profiled: $(( $(date +%s) - t0 )) s"
        fi
        if [ "${LLAMA_TORCH:-1}" = 1 ]; then
            t0=$(date +%s)
            timeout "${TORCH_TIMEOUT:-200}" python3 "$dir/train_llama.py" --preset "$preset" --batch "$b" --seq "$t" --steps "${LLAMA_STEPS:-6}" --warmup 4 \
                "${extra[@]}" --no-header 2>>"$out/bench.err" | tee -a "$out/train.md"
            echo "pytorch $case: $(( $(date +%s) - t0 )) s"
        fi
        llama_first=0
    done
    if [ "${RUN_DECODE:-1}" = 1 ]; then
        # The decode step recorded in a CUDA graph (default), run op by op, and with cuBLASLt for the products.
        decode() { timeout "${DECODE_TIMEOUT:-60}" $dn "$dir/app/GpuBenchLauncher.dll" gpu-decode "$@" 2>>"$out/bench.err" | tee -a "$out/decode.md"; }
        t0=$(date +%s); decode; echo "gpu-decode: $(( $(date +%s) - t0 )) s"
        for variant in ${DECODE_VARIANTS-eager cublas profile}; do
            case "$variant" in
                eager) decode --no-graph --no-header ;;
                cublas) decode --no-header --cuda-options MatrixVectorKernels=false ;;
                nopdl) decode --no-header --cuda-options ProgrammaticDependentLaunch=false ;;
                nogqa) decode --no-header --cuda-options DecodeAttention=PerQueryHead ;;
                gqa) decode --no-header --cuda-options DecodeAttention=Grouped ;;
                ctas*) decode --no-header --cuda-options "MatrixVectorCtasPerSm=${variant#ctas}" ;;
                noearly) decode --no-header --cuda-options EarlyWeightLoads=false ;;
                default) decode --no-header ;;
                opts:*) decode --no-header --cuda-options "${variant#opts:}" ;;
                resources) decode --no-header --resources ;;
                preset:*) decode --no-header --preset "${variant#preset:}" ;;
                hf:*) IFS=: read -r _ hf_preset hf_attention <<< "$variant"
                    timeout "${TORCH_TIMEOUT:-300}" python3 "$dir/hf_decode.py" --preset "$hf_preset" ${hf_attention:+--attention "$hf_attention"} --no-header 2>>"$out/bench.err" | tee -a "$out/decode.md" ;;
                int8) decode --no-header --quantize int8 ;;
                fp8) decode --no-header --quantize fp8 ;;
                int4) decode --no-header --quantize int4 ;;
                fp8profile) decode --no-header --repeat 2 --quantize fp8 --cuda-options ProfileOps=true > "$out/decode-profile-fp8.md"; head -40 "$out/decode-profile-fp8.md" ;;
                profile) decode --no-header --repeat 2 --cuda-options ProfileOps=true > "$out/decode-profile.md"; head -40 "$out/decode-profile.md" ;;
                int8profile) decode --no-header --repeat 2 --quantize int8 --cuda-options ProfileOps=true > "$out/decode-profile-int8.md"; head -40 "$out/decode-profile-int8.md" ;;
                int4profile) decode --no-header --repeat 2 --quantize int4 --cuda-options ProfileOps=true > "$out/decode-profile-int4.md"; head -40 "$out/decode-profile-int4.md" ;;
            esac
        done
    fi
    if [ -n "${SERVE_CASES:-}" ]; then
        # The serving benchmark (llama-1b bf16, 512-token prompts, 128 new tokens, SERVE_STREAMS clients, through HTTP, the
        # device's time per step) once per ';'-separated case: "default", backend options (--cuda-options), or the bench's own
        # arguments where the case starts with "--" (e.g. "--decoding-step-tokens 4096"). List a pair twice
        # to alternate them: runs of one build differ by about 4 %. Its tables into $OUT/serve.md; the rows printed here.
        IFS=';' read -ra cases <<< "$SERVE_CASES"
        for c in "${cases[@]}"; do
            t0=$(date +%s)
            opts=()
            case "$c" in default) ;; --*) read -ra opts <<< "$c" ;; *) opts=(--cuda-options "$c") ;; esac
            echo "### serve ${SERVE_STREAMS:-64} streams, $c" >> "$out/serve.md"
            timeout "${SERVE_TIMEOUT:-200}" $dn "$dir/app/Tessera.Bench.dll" serve --device cuda --preset llama-1b --dtype bf16 --prompt 512 --new 128 \
                --concurrency "${SERVE_STREAMS:-64}" --rounds 1 --device-time "${opts[@]}" >> "$out/serve.md" 2>>"$out/bench.err" || rc=1
            echo "serve $c: $(( $(date +%s) - t0 )) s"; grep -E '^\| Tessera' "$out/serve.md" | tail -1
        done
        # the PyTorch decoder at the same batch, prompt and length: SERVE_TORCH=1 in bf16, SERVE_TORCH_FP8=1 with FP8 products too,
        # SERVE_TORCH_SAMPLED=1 sampling in its compiled step (temperature 1, top_p 0.95: a sampled Tessera case's peer)
        for torch_case in $([ "${SERVE_TORCH:-0}" = 1 ] && echo bf16) $([ "${SERVE_TORCH_FP8:-0}" = 1 ] && echo fp8) $([ "${SERVE_TORCH_SAMPLED:-0}" = 1 ] && echo sampled); do
            t0=$(date +%s)
            timeout "${TORCH_TIMEOUT:-240}" python3 "$dir/batched_decode.py" --batch "${SERVE_STREAMS:-64}" --prompt 512 --new 128 \
                $([ "${SERVE_TORCH_COMPILE_PREFILL:-0}" = 1 ] && echo --compile-prefill) $([ "$torch_case" = fp8 ] && echo --fp8) \
                $([ "$torch_case" = sampled ] && echo --temperature 1 --top-p 0.95) \
                >> "$out/serve.md" 2>>"$out/bench.err" || rc=1
            echo "pytorch decoder ($torch_case): $(( $(date +%s) - t0 )) s"; grep -E '^\| PyTorch' "$out/serve.md" | tail -1
        done
    fi
    if [ -n "${NCU_TEST:-}" ] && command -v ncu >/dev/null; then
        # ncu over a GPU test that brackets its timed work with cuProfilerStart/Stop (e.g. the recorded decode steps):
        # NCU_TEST="REGEX:COUNT:Namespace.Class.Method", the first COUNT launches whose names match REGEX, with the warp-state,
        # scheduler and memory tables, into $OUT/ncu-test.txt.
        IFS=: read -r regex count method <<< "$NCU_TEST"
        t0=$(date +%s)
        timeout "${NCU_TIMEOUT:-150}" ncu --profile-from-start off --kernel-name "regex:$regex" --launch-count "$count" --section SpeedOfLight \
            --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
            --section MemoryWorkloadAnalysis_Tables --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" $dn "$dir/app/Tessera.Tests.dll" -method "$method" -parallel none > "$out/ncu-test.txt" 2>>"$out/bench.err"
        echo "ncu $method: $(( $(date +%s) - t0 )) s"
    fi
    if [ "${RUN_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
        # GPU time of every kernel of a few eager decode steps (no host gaps): the per-kernel floor table's input.
        t0=$(date +%s)
        timeout "${NCU_TIMEOUT:-120}" ncu --csv --print-units base --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
            --log-file "$out/ncu-decode.csv" $dn "$dir/app/GpuBenchLauncher.dll" gpu-decode --no-graph --prompt 512 --new 3 --repeat 1 >/dev/null 2>>"$out/bench.err"
        echo "ncu decode: $(( $(date +%s) - t0 )) s"
    fi
    if [ -n "${OFFLOAD_CASES:-}" ]; then
        # ';'-separated argument lists for gpu-offload, each in its own process (own peak memory).
        IFS=';' read -ra cases <<< "$OFFLOAD_CASES"
        first=1
        for c in "${cases[@]}"; do
            t0=$(date +%s)
            # shellcheck disable=SC2086
            timeout "${OFFLOAD_TIMEOUT:-150}" $dn "$dir/app/GpuBenchLauncher.dll" gpu-offload $c $([ $first = 1 ] || echo --no-header) 2>>"$out/bench.err" | tee -a "$out/offload.md"
            echo "gpu-offload $c: $(( $(date +%s) - t0 )) s"; first=0
        done
    fi
    if [ -n "${PP_CASES:-}" ]; then
        # ';'-separated argument lists for gpu-pp (pipeline stages alone and predicted schedules: --stages; loss curves: --curve N),
        # each in its own process.
        IFS=';' read -ra cases <<< "$PP_CASES"
        for c in "${cases[@]}"; do
            t0=$(date +%s)
            # shellcheck disable=SC2086
            timeout "${PP_TIMEOUT:-240}" $dn "$dir/app/GpuBenchLauncher.dll" gpu-pp $c 2>>"$out/bench.err" | tee -a "$out/pp.md"
            echo "gpu-pp $c: $(( $(date +%s) - t0 )) s"
        done
    fi
    echo; echo "---- bench stderr ----"; tail -30 "$out/bench.err"
    echo; echo "================ summary ($(head -1 "$out/gpu.txt")) ================"
    if [ -f "$out/results.xml" ]; then
        python3 - "$out/results.xml" <<'PY' || grep -E '\[(PASS|FAIL|SKIP)\]' "$out/tests.log" | tail -40
import sys, xml.etree.ElementTree as ET
rows = []
for t in ET.parse(sys.argv[1]).getroot().iter("test"):
    res, secs, msg = t.get("result"), float(t.get("time") or 0), ""
    node = t.find("failure/message") if res == "Fail" else t.find("reason") if res == "Skip" else None
    if node is not None and node.text: msg = node.text.strip().splitlines()[0][:160]
    out = t.find("output")
    if res == "Pass" and out is not None and out.text: msg = out.text.strip().splitlines()[-1][:160]
    rows.append((res, t.get("name").replace("Tessera.Tests.Cuda.Training.", ""), secs, msg))
for res, name, secs, msg in sorted(rows, key=lambda r: (r[0] != "Fail", r[1])):
    print(f"{res:5} {secs:7.2f}s  {name[:110]}  {msg}")
print("TOTAL " + " ".join(f"{k}={sum(1 for r in rows if r[0] == k)}" for k in ("Pass", "Fail", "Skip")))
PY
    elif [ -f "$out/tests.log" ]; then tail -20 "$out/tests.log"; fi
    echo; echo "training (synthetic tokens):"; cat "$out/train.md" 2>/dev/null
    [ -f "$out/llama-profile.md" ] && { echo; echo "llama per-op profile:"; head -60 "$out/llama-profile.md"; }
    echo; echo "decode:"; cat "$out/decode.md" 2>/dev/null
    [ -f "$out/offload.md" ] && { echo; echo "offload:"; cat "$out/offload.md"; }
    [ -f "$out/pp.md" ] && { echo; echo "pipeline:"; cat "$out/pp.md"; }
    exit $rc
    ;;
*) echo "usage: gpu-bench.sh prepare | run"; exit 2 ;;
esac
