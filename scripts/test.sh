#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine: installs what it lacks (Debian
# packages with apt-get, the Python peers with pip), builds the shipped library, then runs
#   1. the Swift tests (swift test: Swift Testing + XCTest),
#   2. the C ABI checks (Tests/abi/check.sh),
#   3. the Python tests (pytest Tests/python) against the installed package and the real
#      bitsandbytes / PyTorch / PEFT, and on an AVX-512 host the PyTorch comparisons once more
#      with PyTorch's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2), as an AVX2-only host runs them,
# and ends with one line "N passed, N failed".
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
logdir="$(mktemp -d)"
step() { printf '\n==== %s\n' "$*"; }

step "dependencies"
bash "$root/scripts/install-deps.sh" || { echo "dependency installation failed"; exit 1; }

total_pass=0; total_fail=0
add() { total_pass=$((total_pass + $1)); total_fail=$((total_fail + $2)); }

step "build the shipped library (scripts/build-lib.sh)"
if ! scripts/build-lib.sh; then echo "library build failed"; echo "0 passed, 1 failed"; exit 1; fi

step "Swift tests (swift test)"
swift build --build-tests 2>&1 | tail -3
swift test 2>&1 | tee "$logdir/swift.log" | grep -E '✘|error|Test run|Executed|passed after|failed after' | grep -vE '^.*✔ Test [a-zA-Z]' | tail -40
sw_rc=${PIPESTATUS[0]}
sw_pass=$(grep -cE '✔ Test .* passed after' "$logdir/swift.log")
sw_fail=$(grep -E '✘ Test [^ ]+ failed after' "$logdir/swift.log" | grep -vc '✘ Test run ')
if [ "$sw_rc" -ne 0 ] && [ "$sw_fail" -eq 0 ]; then sw_fail=1; fi
echo "swift: $sw_pass passed, $sw_fail failed"
add "$sw_pass" "$sw_fail"

step "C ABI checks (Tests/abi/check.sh)"
bash Tests/abi/check.sh | tee "$logdir/abi.log"
abi_pass=$(grep -c '^PASS' "$logdir/abi.log"); abi_fail=$(grep -c '^FAIL' "$logdir/abi.log")
add "$abi_pass" "$abi_fail"

step "Python package (pip install ./bindings/python) and tests (pytest Tests/python)"
if python3 -m pip install -q --no-build-isolation ./bindings/python 2>&1 | tail -5 && \
   (cd /tmp && python3 -c "import peftswift; print('import peftswift OK:', peftswift.__version__, peftswift.__file__)"); then
    (cd "$root" && python3 -m pytest -q -p no:cacheprovider Tests/python 2>&1) | tee "$logdir/py.log" | tail -25
    py_pass=$(grep -oE '[0-9]+ passed' "$logdir/py.log" | tail -1 | grep -oE '[0-9]+'); py_pass=${py_pass:-0}
    py_fail=$(grep -oE '[0-9]+ (failed|error|errors)' "$logdir/py.log" | awk '{s+=$1} END {print s+0}')
    if [ "$py_pass" -eq 0 ] && [ "$py_fail" -eq 0 ]; then py_fail=1; fi
else
    echo "pip install ./bindings/python failed"; py_pass=0; py_fail=1
fi
add "$py_pass" "$py_fail"

step "Python tests against PyTorch again, both on AVX2 kernels (ATEN_CPU_CAPABILITY=avx2, PST_ISA=avx2)"
# PyTorch picks AVX-512 kernels where the CPU has them, and they round differently from the
# AVX2 ones an AVX2-only host runs: the comparisons must hold both ways (their bounds come from
# a float64 arbiter, not from one host's error). peftswift likewise runs its AVX2 kernels here
# (PST_ISA=avx2), as on an AVX2-only host; test_compute.py covers every path in one run.
# On an AVX2-only host the first run was that.
cap="$(python3 -c 'import torch; print(torch.backends.cpu.get_cpu_capability())' 2>/dev/null)"
if [ "$py_pass" -gt 0 ] && [ "$cap" = "AVX512" ]; then
    (cd "$root" && ATEN_CPU_CAPABILITY=avx2 PST_ISA=avx2 python3 -m pytest -q -p no:cacheprovider \
        Tests/python/test_quant.py Tests/python/test_lora.py Tests/python/test_optim.py \
        Tests/python/test_files.py Tests/python/test_llm.py Tests/python/test_llm_tiny.py 2>&1) \
        | tee "$logdir/py_avx2.log" | tail -8
    a2_pass=$(grep -oE '[0-9]+ passed' "$logdir/py_avx2.log" | tail -1 | grep -oE '[0-9]+'); a2_pass=${a2_pass:-0}
    a2_fail=$(grep -oE '[0-9]+ (failed|error|errors)' "$logdir/py_avx2.log" | awk '{s+=$1} END {print s+0}')
    if [ "$a2_pass" -eq 0 ] && [ "$a2_fail" -eq 0 ]; then a2_fail=1; fi
    echo "python (ATEN_CPU_CAPABILITY=avx2): $a2_pass passed, $a2_fail failed"
    add "$a2_pass" "$a2_fail"
else
    a2_pass=0; a2_fail=0
    echo "skipped: PyTorch's CPU capability here is ${cap:-unknown}, so the run above already used its AVX2 kernels"
fi

step "summary"
echo "swift $sw_pass/$((sw_pass + sw_fail)), abi $abi_pass/$((abi_pass + abi_fail)), python $py_pass/$((py_pass + py_fail)), python with PyTorch's AVX2 kernels $a2_pass/$((a2_pass + a2_fail))"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
