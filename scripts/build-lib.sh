#!/usr/bin/env bash
# Builds the shipped library into dist/:
#   dist/lib/libpeftswift.so   Swift runtime linked in statically, only pst_* exported
#   dist/include/peftswift.h   the header, generated from this build's Swift sources
#   dist/lib/pkgconfig/peftswift.pc
#   dist/bin/peftswift         the command-line program (finetune / generate / info), on the C API
# Usage: scripts/build-lib.sh [--prefix DIR]   (default DIR = <repo>/dist)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/dist"
if [ "${1:-}" = "--prefix" ]; then prefix="$2"; fi

cd "$root"
# A separate build folder: PST_DIST changes the manifest (static stdlib, export map), and the
# ordinary debug/test build in .build must not be thrown away each time.
PST_DIST=1 swift build -c release --product peftswift --scratch-path .build-dist >&2
so="$root/.build-dist/release/libpeftswift.so"

mkdir -p "$prefix/lib/pkgconfig" "$prefix/include"
cp "$so" "$prefix/lib/libpeftswift.so.tmp" && mv "$prefix/lib/libpeftswift.so.tmp" "$prefix/lib/libpeftswift.so"
strip --strip-unneeded "$prefix/lib/libpeftswift.so"
# The header shipped is generated from this very build; Tests/abi/check.sh fails when the
# committed include/peftswift.h differs from it (update it with scripts/update-header.sh).
python3 "$root/scripts/gen_header.py" \
    "$root/.build-dist/x86_64-unknown-linux-gnu/release/PeftSwift.build/include/PeftSwift-Swift.h" \
    "$prefix/include/peftswift.h"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@VERSION@|$(sed -n 's/^#define PST_VERSION_STRING "\(.*\)"/\1/p' include/peftswift.h)|" \
    "$root/scripts/peftswift.pc.in" > "$prefix/lib/pkgconfig/peftswift.pc"
mkdir -p "$prefix/bin"
cc -std=c11 -O2 -Wall -Wextra -Werror -I"$prefix/include" "$root/Sources/peftswift-cli/peftswift.c" \
    -L"$prefix/lib" -lpeftswift -Wl,-rpath,'$ORIGIN/../lib' -o "$prefix/bin/peftswift"
echo "$prefix/lib/libpeftswift.so"
