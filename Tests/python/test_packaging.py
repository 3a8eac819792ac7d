"""The package as users get it: import from anywhere in a fresh virtual environment, errors
carrying status and message, the ABI check at import, the GIL released around native calls."""
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

import numpy as np
import pytest

import peftswift

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_version_and_abi():
    assert peftswift.__version__ == peftswift._native.HEADER_VERSION
    assert peftswift.ABI_VERSION == peftswift._native.HEADER_ABI_VERSION
    assert peftswift.status_string(0) == "ok"


def test_error_hierarchy():
    for name in ["InvalidArgumentError", "ShapeError", "NonFiniteError", "CorruptDataError", "IOError",
                 "NotFoundError", "MisuseError", "OutOfMemoryError", "UnsupportedError", "ExistsError", "InternalError"]:
        assert issubclass(getattr(peftswift, name), peftswift.Error)
    with pytest.raises(peftswift.InvalidArgumentError) as e:
        peftswift.set_num_threads(0)
    assert e.value.status == 1
    assert str(e.value) == "pst_set_num_threads: n (0) must be in 1...1024"


def test_library_is_self_contained():
    so = pathlib.Path(peftswift.__file__).parent / "libpeftswift.so"
    out = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout
    assert "libswift" not in out, out


def test_gil_is_released_during_native_calls():
    """A Python thread keeps running while another thread is inside a long native call."""
    x = np.random.default_rng(0).standard_normal(48 * 1024 * 1024 // 4).astype(np.float32)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.0005)

    t = threading.Thread(target=ticker)
    t.start()
    time.sleep(0.01)
    start = time.perf_counter()
    for _ in range(5):
        peftswift.quantize_4bit(x)
    end = time.perf_counter()
    done.set()
    t.join()
    inside = [s for s in ticks if start < s < end]
    assert len(inside) >= 5, f"ticker ran {len(inside)} times during native calls"


def test_fresh_venv_import_from_any_directory(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin/python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT / "bindings/python")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import numpy as np, peftswift; p, s = peftswift.quantize_4bit(np.ones(100, dtype=np.float32)); "
            "print(peftswift.__version__, p.shape, peftswift.dequantize_4bit(p, s).sum())")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == peftswift.__version__ and "100.0" in r.stdout


def test_abi_mismatch_is_a_clear_import_error(tmp_path):
    """Build the extension against a header that claims another ABI version: import must fail
    with ImportError naming both versions."""
    pkg = pathlib.Path(peftswift.__file__).parent
    hdr = (pkg / "include/peftswift.h").read_text()
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc/peftswift.h").write_text(hdr.replace("#define PST_ABI_VERSION 1", "#define PST_ABI_VERSION 999"))
    src = ROOT / "bindings/python/src"
    fake = tmp_path / "peftswift"
    fake.mkdir()
    shutil.copy2(pkg / "libpeftswift.so", fake / "libpeftswift.so")
    ext = fake / ("_native" + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = sysconfig.get_config_var("CC").split()[0]
    cmd = [cc, "-shared", "-fPIC", "-std=c11", f"-I{sysconfig.get_paths()['include']}", f"-I{tmp_path / 'inc'}",
           f"-I{src}", str(src / "_native.c"), f"-L{fake}", "-lpeftswift", "-Wl,-rpath,$ORIGIN", "-o", str(ext)]
    subprocess.run(cmd, check=True)
    (fake / "__init__.py").write_text("from . import _native\n")
    r = subprocess.run([sys.executable, "-c", "import peftswift"], capture_output=True, text=True, cwd=str(tmp_path))
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "ABI version 1" in r.stderr and "ABI version 999" in r.stderr


def test_type_stubs_cover_the_public_api():
    """Every public name of the package is declared in the stubs (py.typed ships them)."""
    pkg = pathlib.Path(peftswift.__file__).parent
    stubs = "".join(p.read_text() for p in pkg.glob("*.pyi"))
    assert (pkg / "py.typed").exists()
    public = [n for n in dir(peftswift) if not n.startswith("_") and n not in ("quant", "lora", "optim", "files", "llm")]
    missing = [n for n in public if n not in stubs]
    assert not missing, f"not in the .pyi stubs: {missing}"


def test_import_on_a_cpu_without_avx2_is_an_import_error(tmp_path):
    """The library is built for x86-64-v3. On an older CPU `import peftswift` must raise an
    ImportError naming the missing features, never die of SIGILL. qemu-user runs this Python as
    a Nehalem (no AVX) and a Haswell without AVX2 would; scripts/install-deps.sh installs it."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.fail("qemu-x86_64 is missing: scripts/install-deps.sh installs qemu-user")
    code = ("import sys\n"
            "try:\n    import peftswift\nexcept ImportError as e:\n    print('IMPORTERROR', e); sys.exit(3)\n"
            "print('IMPORTED'); sys.exit(0)\n")
    for model, lacks in (("Nehalem", "avx2"), ("Haswell-noTSX,avx2=off,fma=off", "fma")):
        r = subprocess.run([qemu, "-cpu", model, sys.executable, "-c", code], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
        out = r.stdout + r.stderr
        assert r.returncode == 3, f"{model}: exit {r.returncode} (negative: killed by a signal)\n{out[-2000:]}"
        assert "peftswift cannot run on this CPU" in out and lacks in out and "x86-64-v3" in out, out[-2000:]
