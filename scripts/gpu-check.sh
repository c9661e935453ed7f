#!/usr/bin/env bash
# The CUDA check, in two halves.
#
#   scripts/gpu-check.sh prepare     (development machine, from the repository root)
#       builds the test project framework-dependent, packs the .NET runtime, and puts both under
#       DEST (default .device/, git-ignored; set DEST=/path/to/checkout/.device when the device
#       tool sends another checkout).
#   scripts/gpu-check.sh run [FILTER...]   (GPU machine, repository root, .device/ carried)
#       unpacks the runtime to /tmp/dotnet, runs the CUDA tests (default: namespace
#       Tessera.Tests.Cuda), keeps the full log under $OUT (or ./gpu-check-out), prints a summary last.
#
# The device call is then: run(carry [".device"], command "bash .device/gpu-check.sh run").
set -uo pipefail
mode="${1:-run}"; shift || true
case "$mode" in
prepare)
    set -e
    dest="${DEST:-.device}"
    rm -rf "$dest/tests" "$dest/dotnet-runtime.tar.xz" "$dest/gpu-check.sh"
    mkdir -p "$dest"
    dotnet build tests/Tessera.Tests -c Release -o "$dest/tests" -v q -nologo
    # Only what the test executable loads travels: no symbols for other platforms, no runtimes/ for other OSes.
    find "$dest/tests" -name '*.pdb' -delete
    # No native libraries travel: they are the plotting library's (SkiaSharp, a dozen platforms, 100 MB), and the GPU runs
    # draw no plots; the payload must stay under the device tool's 64 MiB.
    rm -rf "$dest/tests/runtimes"
    "$(dirname "$0")/pack-dotnet-runtime.sh" "$dest/dotnet-runtime.tar.xz"
    cp "$0" "$dest/gpu-check.sh"
    du -sh "$dest"
    ;;
run)
    export NCCL_NVLS_ENABLE=0
    out="${OUT:-$PWD/gpu-check-out}"; mkdir -p "$out"
    dir="$(cd "$(dirname "$0")" && pwd)"
    if [ ! -x /tmp/dotnet/dotnet ]; then
        mkdir -p /tmp/dotnet && tar -C /tmp/dotnet -xJf "$dir/dotnet-runtime.tar.xz" || { echo "cannot unpack the runtime"; exit 1; }
    fi
    export DOTNET_ROOT=/tmp/dotnet DOTNET_CLI_TELEMETRY_OPTOUT=1
    export TESSERA_KERNEL_CACHE="${TESSERA_KERNEL_CACHE:-/tmp/tessera-kernels}"
    export TESSERA_CUDA_TIMINGS="${TESSERA_CUDA_TIMINGS:-1}" TESSERA_CUDA_TIMINGS_OUT="$out/timings.md"
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
    # xunit v3 matches a namespace exactly: every CUDA test namespace is named.
    filters=("$@"); [ ${#filters[@]} -eq 0 ] && filters=(-namespace Tessera.Tests.Cuda -namespace Tessera.Tests.Cuda.Training -namespace Tessera.Tests.Cuda.Distributed)
    start=$(date +%s)
    /tmp/dotnet/dotnet "$dir/tests/Tessera.Tests.dll" "${filters[@]}" -parallel none -reporter verbose \
        -xml "$out/results.xml" 2>&1 | tee "$out/tests.log"
    rc=${PIPESTATUS[0]}
    end=$(date +%s)
    echo
    echo "================ summary ($(head -2 "$out/gpu.txt" | tail -1)) ================"
    if [ -f "$out/results.xml" ]; then
        python3 - "$out/results.xml" <<'PY' || grep -E '\[(PASS|FAIL|SKIP)\]' "$out/tests.log" | tail -80
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
rows = []
for t in root.iter("test"):
    name = t.get("name").replace("Tessera.Tests.Cuda.", "")
    res = t.get("result"); secs = float(t.get("time") or 0)
    msg = ""
    if res == "Fail":
        m = t.find("failure/message"); msg = (m.text or "").strip().splitlines()[0][:110] if m is not None and m.text else ""
    if res == "Skip":
        r = t.find("reason"); msg = (r.text or "")[:110] if r is not None and r.text else ""
    rows.append((res, name, secs, msg))
for res, name, secs, msg in sorted(rows, key=lambda r: (r[0] != "Fail", r[1])):
    print(f"{res:5} {secs:7.3f}s  {name[:90]}  {msg}")
n = {k: sum(1 for r in rows if r[0] == k) for k in ("Pass", "Fail", "Skip")}
print(f"TOTAL pass={n['Pass']} fail={n['Fail']} skip={n['Skip']}")
PY
    fi
    [ -f "$out/timings.md" ] && { echo; cat "$out/timings.md"; }
    echo "exit code $rc, $((end - start)) s"
    exit $rc
    ;;
*) echo "usage: gpu-check.sh prepare | run [xunit filters]"; exit 2 ;;
esac
