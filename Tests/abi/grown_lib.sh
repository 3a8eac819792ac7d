#!/usr/bin/env bash
# Builds the library once more, from a copy of these sources in which the V1 sizes of some
# structs are lowered to the sizes Tests/abi/struct_size.c prints with --v1-sizes: the library
# as it would be had the fields that test's "older" caller lacks been appended after version 1.
# The copy lives in .build-abi-grown/ and only files whose bytes changed are copied into it, so
# a later run rebuilds only when the sources did. Prints the directory holding the library.
# Usage: Tests/abi/grown_lib.sh STRUCT_SIZE_PROGRAM
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dst="$root/.build-abi-grown/src"
python3 - "$root" "$dst" "$("$1" --v1-sizes)" <<'PY'
import pathlib, re, shutil, sys
root, dst, sizes = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3].split("\n")
types = "Sources/CPeftSwift/include/peftswift_types.h"
want = {}
for rel in ["Package.swift", "include", "scripts", "Sources"]:
    src = root / rel
    for f in ([src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]):
        want[f.relative_to(root).as_posix()] = f.read_bytes()
text = want[types].decode()
for line in sizes:
    name, value = line.split()
    text, n = re.subn(rf"^#define {name} \d+", f"#define {name} {value}", text, flags=re.M)
    if n != 1:
        sys.exit(f"grown_lib.sh: no `#define {name}` in {types}")
want[types] = text.encode()
for rel, data in want.items():
    out = dst / rel
    if not out.exists() or out.read_bytes() != data:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
# Package.swift names the test target's folder; the library product does not build it
(dst / "Tests/PeftSwiftTests").mkdir(parents=True, exist_ok=True)
for rel in ["include", "scripts", "Sources"]:
    for f in list((dst / rel).rglob("*")):
        if f.is_file() and f.relative_to(dst).as_posix() not in want:
            f.unlink()
PY
bash "$dst/scripts/build-lib.sh" > "$root/.build-abi-grown/build.log" 2>&1 || { tail -30 "$root/.build-abi-grown/build.log" >&2; exit 1; }
echo "$dst/dist/lib"
