#!/usr/bin/env bash
# The C ABI checks: header in sync with the Swift sources, usable from C99/C11/C++17 with
# -Wall -Wextra -Werror, exported symbols == declared functions, no Swift runtime needed,
# examples build with pkg-config and run, every function survives bad input, a caller built
# with older (shorter) parameter structs works.
# Expects scripts/build-lib.sh to have filled dist/. Prints "abi: N passed, M failed".
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dist="$root/dist"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pass=0; fail=0
ok() { echo "PASS $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; [ -n "${2:-}" ] && sed 's/^/    /' <<<"$2"; fail=$((fail + 1)); }
run() { # name, command...
    local name="$1"; shift
    local out
    if out="$("$@" 2>&1)"; then ok "$name"; else bad "$name" "$out"; fi
}
so="$dist/lib/libpeftswift.so"
hdr="$dist/include/peftswift.h"

# 1. the committed header is the one the Swift sources generate
run "committed include/peftswift.h matches the header generated from the sources" \
    diff -u "$root/include/peftswift.h" "$hdr"

# 1b. the AVX-512 kernel modules define no shared (weak) code: a weak symbol compiled with AVX-512
#     could be the copy the linker keeps for callers on AVX2-only CPUs (Package.swift's rule: these
#     modules hold only their own kernels, reached after the run-time CPU check)
objs="$(ls "$root"/.build-dist/x86_64-unknown-linux-gnu/release/PeftSwiftAVX512*.build/*.o 2>/dev/null)"
if [ -z "$objs" ]; then
    bad "AVX-512 modules: objects not found under .build-dist (scripts/build-lib.sh)"
else
    weak="$(nm --defined-only $objs | grep -E ' [Ww] ' || true)"
    foreign="$(nm --defined-only $objs | awk '$2 == "T" && $3 !~ /^\$s(15PeftSwiftAVX512|19PeftSwiftAVX512BF16)/ {print $3}')"
    if [ -z "$weak$foreign" ]; then ok "AVX-512 modules define only their own code (no weak or foreign text symbols)"
    else bad "AVX-512 modules define shared code" "$weak$foreign"; fi
fi

# 2. the header compiles under C99, C11 and C++17 with every warning an error, and links
for std in "gcc -std=c99" "gcc -std=c11" "g++ -std=c++17 -x c++"; do
    run "header compiles and links: $std -Wall -Wextra -Werror -pedantic" bash -c \
        "$std -Wall -Wextra -Werror -pedantic -I'$dist/include' '$root/Tests/abi/header_check.c' -x none -L'$dist/lib' -Wl,-rpath,'$dist/lib' -lpeftswift -o '$work/hc' && '$work/hc'"
done

# 3. exported symbols == declared functions
nm -D --defined-only "$so" | awk '{print $3}' | sort > "$work/exported"
grep -oE '^PST_API [^(]*\b(pst_[a-z0-9_]+)\(' "$hdr" | grep -oE 'pst_[a-z0-9_]+\($' | tr -d '(' | sort > "$work/declared"
if diff -u "$work/declared" "$work/exported" > "$work/symdiff"; then
    ok "exported symbols == declared functions ($(wc -l < "$work/declared") functions, nothing else exported)"
else
    bad "exported symbols == declared functions" "$(cat "$work/symdiff")"
fi
if nm -D --defined-only "$so" | awk '{print $3}' | grep -qv '^pst_'; then
    bad "nm -D --defined-only lists only pst_*" "$(nm -D --defined-only "$so" | grep -v ' pst_')"
else
    ok "nm -D --defined-only lists only pst_*"
fi

# 4. no Swift runtime needed
if ldd "$so" | grep -q 'libswift\|libdispatch\|libFoundation\|libBlocksRuntime'; then
    bad "ldd lists no Swift runtime library" "$(ldd "$so")"
else
    ok "ldd lists no Swift runtime library"
fi

# 5. examples build with pkg-config (C and C++), run with the toolchain's libraries hidden
export PKG_CONFIG_PATH="$dist/lib/pkgconfig"
run "C example builds with pkg-config (-std=c11 -Wall -Wextra -Werror)" bash -c \
    "cc -std=c11 -Wall -Wextra -Werror '$root/examples/quantize.c' \$(pkg-config --cflags --libs peftswift) -lm -o '$work/quantize'"
run "C++ example builds with pkg-config (-std=c++17 -Wall -Wextra -Werror)" bash -c \
    "c++ -std=c++17 -Wall -Wextra -Werror '$root/examples/quantize.cpp' \$(pkg-config --cflags --libs peftswift) -o '$work/quantize_cpp'"
swiftlib="$(dirname "$(dirname "$(command -v swift)")")/lib/swift/linux"
if unshare -m true 2>/dev/null; then
    run "C example runs with the Swift toolchain's library folder hidden (unshare + bind mount)" \
        unshare -m bash -c "mkdir -p '$work/empty' && mount --bind '$work/empty' '$swiftlib' && env -u LD_LIBRARY_PATH '$work/quantize'"
else
    run "C example runs with no Swift runtime loaded (LD_DEBUG)" bash -c \
        "env -u LD_LIBRARY_PATH LD_DEBUG=libs '$work/quantize' 2>&1 | { ! grep -q 'libswift'; }"
fi
run "C++ example runs" env -u LD_LIBRARY_PATH "$work/quantize_cpp"
run "examples/finetune.c builds with pkg-config (-std=c11 -Wall -Wextra -Werror -pedantic)" bash -c \
    "cc -std=c11 -Wall -Wextra -Werror -pedantic '$root/examples/finetune.c' \$(pkg-config --cflags --libs peftswift) -o '$work/finetune'"
run "examples/finetune.c trains and generates on the tiny test model" bash -c \
    "env -u LD_LIBRARY_PATH '$work/finetune' '$root/Tests/fixtures/llm/tiny_llama.gguf' '$root/examples/data/peftswift_faq.jsonl' '$work/ft-out' 3 >'$work/ft.log' 2>&1 && grep -q 'step   3/3' '$work/ft.log' && test -s '$work/ft-out/adapter_model.safetensors'"

# 6. every exported function is called with bad arguments and answers with a status + message
run "bad-input program builds" bash -c \
    "cc -std=c11 -Wall -Wextra -Werror -Wno-unused-result '$root/Tests/abi/bad_input.c' \$(pkg-config --cflags --libs peftswift) -o '$work/bad_input'"
missing="$(while read -r f; do grep -q "\b$f(" "$root/Tests/abi/bad_input.c" || echo "$f"; done < "$work/declared")"
if [ -z "$missing" ]; then ok "bad_input.c calls every declared function"; else bad "bad_input.c calls every declared function" "missing: $missing"; fi
out="$("$work/bad_input" "$root/Tests/fixtures/llm/tiny_llama.gguf" 2>&1)"; rc=$?
echo "$out" | grep -E '^(PASS|FAIL)' | sed 's/^/  /'
if [ $rc -eq 0 ]; then ok "every function rejects NULL/undersized/invalid arguments with a status and a message"
else bad "bad input" "$(echo "$out" | grep FAIL)"; fi

# 6b. structs that grow: Tests/abi/struct_size.c is a caller compiled with shortened copies of
#     four parameter structs. Against this library (whose version-1 layout is today's) they are
#     older than version 1 and refused; against the same sources built with those fields counted
#     as appended after version 1 (Tests/abi/grown_lib.sh) the older caller works.
struct_size_run() { # name, binary, mode
    local out rc
    out="$(env -u LD_LIBRARY_PATH "$2" "$3" 2>&1)"; rc=$?
    echo "$out" | grep -E '^(PASS|FAIL)' | sed 's/^/  /'
    if [ $rc -eq 0 ]; then ok "$1"; else bad "$1" "$(echo "$out" | grep -A1 '^FAIL')"; fi
}
if out="$(cc -std=c11 -Wall -Wextra -Werror -pedantic "$root/Tests/abi/struct_size.c" -I"$dist/include" \
          -L"$dist/lib" -Wl,-rpath,"$dist/lib" -lpeftswift -lm -o "$work/struct_size" 2>&1)"; then
    ok "struct_size program builds (an older caller: shortened pst_lora_params, pst_adamw_params, pst_pager_stats, pst_tensor)"
    struct_size_run "struct_size current: this library refuses structs older than version 1, 0 and larger than sizeof, with a message naming struct_size and the value" \
        "$work/struct_size" current
    if grown="$("$root/Tests/abi/grown_lib.sh" "$work/struct_size" 2>"$work/grown.err")"; then
        ok "the library with those fields appended after version 1 builds (Tests/abi/grown_lib.sh, in .build-abi-grown/)"
        if out="$(cc -std=c11 -Wall -Wextra -Werror -pedantic "$root/Tests/abi/struct_size.c" -I"$dist/include" \
                  -L"$grown" -Wl,-rpath,"$grown" -lpeftswift -lm -o "$work/struct_size_older" 2>&1)"; then
            struct_size_run "struct_size older: the older caller works with a newer library (defaults for the missing fields, nothing read or written past struct_size)" \
                "$work/struct_size_older" older
        else bad "struct_size program links with the grown library" "$out"; fi
    else
        bad "the library with grown structs builds (Tests/abi/grown_lib.sh)" "$(cat "$work/grown.err")"
    fi
else
    bad "struct_size program builds" "$out"
fi

# 7. an older CPU (no AVX2/FMA/F16C): every function answers PST_ERR_UNSUPPORTED_CPU (or its
#    documented value), never SIGILL. qemu-user runs the programs as those CPUs would; a
#    Haswell model (x86-64-v3, the oldest the library supports) must still compute.
run "entry points (Sources/CPeftSwift/entry.c) are the ones the header generates" bash -c \
    "python3 '$root/scripts/gen_entry.py' '$hdr' '$work/entry.c' && diff -u '$root/Sources/CPeftSwift/entry.c' '$work/entry.c'"
if command -v qemu-x86_64 >/dev/null; then
    run "old-CPU program builds (every declared function, from the header)" bash -c \
        "python3 '$root/Tests/abi/gen_old_cpu.py' '$hdr' > '$work/old_cpu.c' && cc -std=c11 -Wall -Wextra -Werror -Wno-unused-result '$work/old_cpu.c' \$(pkg-config --cflags --libs peftswift) -o '$work/old_cpu'"
    for case in Nehalem:avx SandyBridge:f16c Haswell-noTSX,avx2=off:avx2 Haswell-noTSX,fma=off:fma; do
        model="${case%:*}" lacks="${case##*:}"
        run "qemu-x86_64 -cpu $model: every function answers PST_ERR_UNSUPPORTED_CPU naming $lacks" bash -c \
            "env -u LD_LIBRARY_PATH qemu-x86_64 -cpu '$model' '$work/old_cpu' '$lacks' 2>&1 | grep -v '^qemu-x86_64: warning' | tee '$work/old_cpu.log' && grep -q ', 0 failed' '$work/old_cpu.log'"
    done
    run "qemu-x86_64 -cpu Nehalem: examples/quantize.c fails with a clear message (exit 1, no signal)" bash -c \
        "env -u LD_LIBRARY_PATH qemu-x86_64 -cpu Nehalem '$work/quantize' > '$work/q.log' 2>&1; rc=\$?; cat '$work/q.log'; [ \$rc -eq 1 ] && grep -q 'unsupported CPU' '$work/q.log'"
    run "qemu-x86_64 -cpu Haswell-noTSX: the kernels dispatch to AVX2 (no AVX-512 reached) with the native run's result bits" bash -c \
        "cc -std=c11 -Wall -Wextra -Werror '$root/Tests/abi/isa_dispatch.c' \$(pkg-config --cflags --libs peftswift) -o '$work/isa' && \
         '$work/isa' | tee '$work/isa_native.log' && \
         env -u LD_LIBRARY_PATH qemu-x86_64 -cpu Haswell-noTSX '$work/isa' 0 2>&1 | grep -v '^qemu-x86_64: warning' | tee '$work/isa_qemu.log' && \
         grep -q 'host isa 0' '$work/isa_qemu.log' && [ \"\$(grep checksum '$work/isa_native.log')\" = \"\$(grep checksum '$work/isa_qemu.log')\" ]"
    run "qemu-x86_64 -cpu Haswell-noTSX (x86-64-v3): examples/quantize.c runs and computes" bash -c \
        "env -u LD_LIBRARY_PATH qemu-x86_64 -cpu Haswell-noTSX '$work/quantize' 2>&1 | grep -v '^qemu-x86_64: warning' | tee '$work/qh.log' && grep -q 'round trip: max' '$work/qh.log'"
else
    bad "qemu-x86_64 not found (scripts/install-deps.sh installs qemu-user): the old-CPU checks did not run"
fi

echo "abi: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
