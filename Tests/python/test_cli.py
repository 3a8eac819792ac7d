"""The peftswift command (dist/bin/peftswift, built by scripts/build-lib.sh on the C API):
interrupted runs (SIGINT, SIGKILL) leave a checkpoint that `--resume auto` continues from, and
the result equals an uninterrupted run bit for bit; bad input fails before any work."""
import pathlib
import re
import signal
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = ROOT / "dist" / "bin" / "peftswift"
TINY = ROOT / "Tests" / "fixtures" / "llm" / "tiny_llama.gguf"

pytestmark = pytest.mark.skipif(not CLI.exists(), reason="dist/bin/peftswift not built (scripts/build-lib.sh)")

STEPS = 300


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("cli") / "data.txt"
    p.write_text(("the cat in the hat sat on the mat. " * 40 + "\n") * 20, encoding="utf-8")
    return p


def finetune(out, data, *extra, **popen):
    args = [str(CLI), "finetune", "--model", str(TINY), "--data", str(data), "--out", str(out),
            "--steps", str(STEPS), "--seq-len", "64", "--batch", "4", "--lr", "5e-3", "--dropout", "0.1",
            "--optim", "adamw8bit", "--paged-budget", "1", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def weights(out):
    return (pathlib.Path(out) / "adapter_model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("full") / "run"
    p = finetune(out, data)
    so, se = p.communicate(timeout=300)
    assert p.returncode == 0, se
    assert re.search(rf"^step\s+{STEPS}/{STEPS}\b", so, re.M)
    return weights(out)


def run_until(p, needle):
    """Reads the child's stdout until a line contains needle; returns the lines read."""
    lines = []
    for line in p.stdout:
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} never printed: {lines[-3:]} {p.stderr.read()}")


def test_sigint_writes_a_checkpoint_that_resumes_exactly(tmp_path, data, uninterrupted):
    out = tmp_path / "run"
    p = finetune(out, data)
    run_until(p, "step   20/")
    p.send_signal(signal.SIGINT)
    so, se = p.communicate(timeout=120)
    assert p.returncode == 130, (so, se)
    assert "checkpoint" in se and "--resume auto" in se
    cks = sorted(out.glob("checkpoint-*"))
    assert len(cks) == 1 and (cks[0] / "trainer_state.json").exists()
    stopped = int(cks[0].name.split("-")[1])
    assert 20 <= stopped < STEPS
    r = finetune(out, data, "--resume", "auto")
    so, se = r.communicate(timeout=300)
    assert r.returncode == 0, se
    assert f"resuming from {cks[0]}" in so
    assert re.search(rf"^step\s+{stopped + 1}/{STEPS}\b", so, re.M) and not re.search(rf"^step\s+{stopped}/", so, re.M)
    assert weights(out) == uninterrupted


def test_sigkill_leaves_the_last_checkpoint_intact(tmp_path, data, uninterrupted):
    out = tmp_path / "run"
    p = finetune(out, data, "--checkpoint-every", "7")
    run_until(p, "saved")
    run_until(p, "saved")
    p.kill()
    p.communicate(timeout=60)
    done = [c for c in out.glob("checkpoint-*") if (c / "trainer_state.json").exists()]
    assert done, list(out.iterdir())
    # every complete checkpoint directory is whole: all four files
    for c in done:
        assert {f.name for f in c.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "optimizer.bin",
                                                 "trainer_state.json"}
    r = finetune(out, data, "--resume", "auto", "--checkpoint-every", "7")
    so, se = r.communicate(timeout=300)
    assert r.returncode == 0, se
    assert weights(out) == uninterrupted


@pytest.mark.parametrize("case", ["not_gguf", "truncated", "empty_data", "latin1_data", "seq_len", "format", "missing"])
def test_bad_input_fails_before_training(tmp_path, data, case):
    model, d, extra = TINY, data, ["--seq-len", "64"]
    if case == "not_gguf":
        model = tmp_path / "model.gguf"
        model.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file" * 10)
    elif case == "truncated":
        model = tmp_path / "cut.gguf"
        model.write_bytes(TINY.read_bytes()[: TINY.stat().st_size // 2])
    elif case == "empty_data":
        d = tmp_path / "empty.txt"
        d.write_bytes(b"")
    elif case == "latin1_data":
        d = tmp_path / "latin1.txt"
        d.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    elif case == "seq_len":
        extra = ["--seq-len", "4096"]   # beyond the model's context (128)
    elif case == "format":
        extra += ["--format", "csv"]
    elif case == "missing":
        d = tmp_path / "nope.txt"
    out = tmp_path / "out"
    r = subprocess.run([str(CLI), "finetune", "--model", str(model), "--data", str(d), "--out", str(out), "--steps", "3",
                        *extra], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "step " not in r.stdout
    msg = r.stderr
    want = {"not_gguf": str(model), "truncated": str(model), "empty_data": "empty", "latin1_data": "UTF-8",
            "seq_len": "4096", "format": "data_format", "missing": str(d)}[case]
    assert want in msg, msg
    assert not out.exists() or not any(out.glob("checkpoint-*"))


def test_generate_streams_text(tmp_path):
    r = subprocess.run([str(CLI), "generate", "--model", str(TINY), "--prompt", "the cat", "--raw", "--max-new", "5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("model ") and len(r.stdout.splitlines()) >= 2
