#!/usr/bin/env bash
# Regenerates the committed include/peftswift.h from the Swift sources, and from it the exported
# CPU-checking entry points (Sources/CPeftSwift/entry.c); rebuilds when the entry points changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for round in 1 2; do
    "$root/scripts/build-lib.sh" >/dev/null
    cp "$root/dist/include/peftswift.h" "$root/include/peftswift.h"
    before="$(cksum < "$root/Sources/CPeftSwift/entry.c" 2>/dev/null || true)"
    python3 "$root/scripts/gen_entry.py" "$root/include/peftswift.h" "$root/Sources/CPeftSwift/entry.c"
    [ "$before" = "$(cksum < "$root/Sources/CPeftSwift/entry.c")" ] && break
    echo "Sources/CPeftSwift/entry.c updated; rebuilding"
done
echo "include/peftswift.h updated"
