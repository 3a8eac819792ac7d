#!/usr/bin/env bash
# Regenerates the committed include/peftswift.h from the Swift sources.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/build-lib.sh" >/dev/null
cp "$root/dist/include/peftswift.h" "$root/include/peftswift.h"
echo "include/peftswift.h updated"
