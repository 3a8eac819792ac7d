"""safetensors loading: peftswift (memory-mapped, zero-copy) vs the safetensors Python package,
side by side on the same files.

    .bench-venv/bin/python bench/bench_files.py [--gib 1.0]
        (after scripts/bench-venv.sh (once): a venv with the newest peers and this checkout's binding)

Prints the time to the first tensor for a large (1 GiB) file and a small one with as many
tensors (64x smaller) — with mmap it should not depend on the file size — and the time to read every tensor of the large
file (peftswift: map + touch every byte through a copy into one preallocated buffer;
safetensors: load_file, which reads into numpy arrays). Page cache warm for both. The output
starts with the host's CPU, flags and load and the peers' versions (bench/_host.py)."""
import argparse
import os
import tempfile
import time

import numpy as np
import safetensors.numpy as st

import peftswift
from _host import print_header


def write(path, total_bytes, tensor_bytes=16 << 20):
    n = max(1, total_bytes // tensor_bytes)
    tensors = {f"layer.{i:04d}.weight": np.full(tensor_bytes // 4, i, dtype=np.float32) for i in range(n)}
    st.save_file(tensors, path)
    return n


def best(fn, reps=5):
    fn()
    ts = []
    for _ in range(reps):
        s = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - s)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    a = ap.parse_args()
    print_header(["safetensors"])
    small = os.path.join(a.dir, "pst_bench_small.safetensors")
    large = os.path.join(a.dir, "pst_bench_large.safetensors")
    n = write(large, int(a.gib * (1 << 30)))
    write(small, n * (256 << 10), 256 << 10)  # the same number of tensors, 64x smaller
    try:
        def first_ours(p):
            def f():
                with peftswift.files.SafeTensors(p) as fh:
                    return fh.get_tensor(fh.keys()[0])[0]
            return f

        def first_theirs(p):
            def f():
                with st.safe_open(p, framework="numpy") as fh:
                    return fh.get_tensor(next(iter(fh.keys())))[0]
            return f

        t_small = best(first_ours(small))
        t_large = best(first_ours(large))
        s_small = best(first_theirs(small))
        s_large = best(first_theirs(large))
        print(f"time to first tensor: peftswift {t_small * 1e3:.2f} ms (small file) vs {t_large * 1e3:.2f} ms "
              f"({a.gib:.1f} GiB file, {n} tensors); safetensors.safe_open {s_small * 1e3:.2f} ms vs {s_large * 1e3:.2f} ms")

        size = os.path.getsize(large)
        sink = np.empty(size // 4 + 16, dtype=np.float32)

        def all_ours():
            off = 0
            for v in peftswift.files.load_file(large).values():
                k = v.size
                np.copyto(sink[off:off + k], v.reshape(-1))
                off += k

        def all_theirs():
            return st.load_file(large)

        t_all = best(all_ours, 3)
        s_all = best(all_theirs, 3)
        print(f"read all tensors of the {a.gib:.1f} GiB file: peftswift {t_all * 1e3:.0f} ms "
              f"({size / t_all / 2**30:.1f} GiB/s), safetensors.numpy.load_file {s_all * 1e3:.0f} ms "
              f"({size / s_all / 2**30:.1f} GiB/s): {s_all / t_all:.2f}x (target >= 1x)")
    finally:
        os.remove(small)
        os.remove(large)


if __name__ == "__main__":
    main()
