"""The CLI contract: subcommands, flags, outputs, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from workbench.cli import main


def run(*args):
    r = subprocess.run([sys.executable, "-m", "workbench", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    return r.returncode, r.stdout, r.stderr


def test_fetch_prints_verified_path(smollm2_path):
    code, out, _ = run("fetch", "smollm2")
    assert code == 0 and out.strip() == str(smollm2_path)


def test_inspect_json(smollm2_path):
    code, out, _ = run("inspect", smollm2_path, "--json")
    d = json.loads(out)
    assert code == 0 and d["version"] == 3 and len(d["tensors"]) == 272
    t = {x["name"]: x for x in d["tensors"]}["token_embd.weight"]
    assert t["type"] == "Q8_0" and t["shape"] == [49152, 576] and t["bytes"] == 30081024


def test_tokenize_json(smollm2_path):
    code, out, _ = run("tokenize", "smollm2", "--text", "Hello world", "--json")
    assert code == 0 and json.loads(out) == [19556, 905]


def test_logits_last_and_all_positions(tmp_path, smollm2_path, capsys):
    out = tmp_path / "l.npy"
    assert main(["logits", str(smollm2_path), "--token-ids", "19556,905", "--out", str(out)]) == 0
    last = np.load(out)
    assert last.shape == (49152,) and last.dtype == np.float32
    assert main(["logits", str(smollm2_path), "--token-ids", "19556,905", "--all-positions", "--out", str(out)]) == 0
    allp = np.load(out)
    assert allp.shape == (2, 49152)
    np.testing.assert_allclose(allp[-1], last, atol=1e-4)


def test_generate_json(smollm2_path, capsys):
    assert main(["generate", str(smollm2_path), "--prompt", "The capital of France is", "-n", "4",
                 "--weight-cache", "f32", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["ids"]) == 4 and d["prompt_tokens"] == 5 and d["text"]


@pytest.mark.parametrize("args, msg", [
    (["generate", "nosuchmodel", "--prompt", "x"], "not a known model name"),
    (["generate", "smollm2", "--prompt", "x", "--backend", "cuda"], "invalid choice"),
    (["generate", "smollm2", "--prompt", "x", "-n", "-3"], "must be >= 0"),
    (["logits", "smollm2", "--token-ids", "1,99999999", "--out", "/tmp/x.npy"], "out of range"),
    (["logits", "smollm2", "--token-ids", "a,b", "--out", "/tmp/x.npy"], "comma-separated integers"),
    (["fetch", "llama-70b"], "unknown model 'llama-70b'"),
])
def test_errors_are_one_line(args, msg, smollm2_path):
    code, out, err = run(*args)
    assert code != 0
    assert msg in err
    assert "Traceback" not in err


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    code, _, err = run("inspect", p)
    assert code == 1 and "not a GGUF file" in err and "Traceback" not in err
