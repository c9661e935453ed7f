#!/usr/bin/env python3
"""List the tensors of .safetensors files with the standard library alone (no torch, no numpy).

For each file: the header's tensors (name, dtype, shape, byte range), a check that the byte ranges
tile the data area exactly and match dtype x shape, and the values of small tensors (at most --show
elements). Exit status 1 if any file is malformed.

    python3 scripts/golden/inspect_golden.py tests/Tessera.Tests/Golden/*/*.safetensors
"""

import argparse
import json
import struct
import sys

SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FORMATS = {"F64": "d", "F32": "f", "I64": "q", "I32": "i", "I16": "h", "I8": "b", "U8": "B"}


def inspect(path, show):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    meta = header.pop("__metadata__", None)
    print(f"{path}: {len(header)} tensors, {len(blob)} bytes, metadata {meta}")
    problems = []
    spans = []
    for name, t in header.items():
        begin, end = t["data_offsets"]
        count = 1
        for d in t["shape"]:
            count *= d
        if end - begin != count * SIZES[t["dtype"]]:
            problems.append(f"{name}: {end - begin} bytes for {t['dtype']} {t['shape']}")
        spans.append((begin, end, name))
        line = f"  {name:55s} {t['dtype']:4s} {t['shape']}"
        if count <= show and t["dtype"] in FORMATS:
            values = struct.unpack_from("<" + FORMATS[t["dtype"]] * count, data, begin)
            line += "  " + " ".join(f"{v:.9g}" if isinstance(v, float) else str(v) for v in values)
        print(line)
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            problems.append(f"{name}: starts at {begin}, expected {position}")
        position = end
    if position != len(data):
        problems.append(f"data area is {len(data)} bytes, tensors cover {position}")
    for p in problems:
        print(f"  PROBLEM {p}")
    return not problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--show", type=int, default=16, help="print values of tensors with at most this many elements")
    args = parser.parse_args()
    ok = all([inspect(p, args.show) for p in args.files])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
