#!/usr/bin/env bash
# Packs the .NET runtime of this machine's SDK install (the dotnet host, host/,
# shared/Microsoft.NETCore.App/ and shared/Microsoft.AspNetCore.App/, which Tessera.Server and the tests
# that start it need) into a .tar.xz, so framework-dependent builds can run on a machine without .NET
# (the GPU machines). About 35 MB.
# Usage: scripts/pack-dotnet-runtime.sh OUTPUT.tar.xz
set -euo pipefail
out="${1:?usage: pack-dotnet-runtime.sh OUTPUT.tar.xz}"
root="$(dirname "$(readlink -f "$(command -v dotnet)")")"
[ -d "$root/shared/Microsoft.NETCore.App" ] || { echo "no shared/Microsoft.NETCore.App under $root" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
[ -d "$root/shared/Microsoft.AspNetCore.App" ] || { echo "no shared/Microsoft.AspNetCore.App under $root" >&2; exit 1; }
tar -C "$root" -cJf "$out" dotnet host shared/Microsoft.NETCore.App shared/Microsoft.AspNetCore.App
ls -l "$out"
