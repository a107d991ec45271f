import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_lists_the_pyproject_dependencies():
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(proj["dependencies"]) | set(proj["optional-dependencies"]["test"])
    env = (ROOT / "environment.yml").read_text()
    pip_section = env.split("- pip:", 1)[1]
    listed = {m.group(1).strip() for m in re.finditer(r"^\s+- ([A-Za-z][^#\n]*)$", pip_section, re.M)}
    listed = {x for x in listed if not x.startswith(("python", "pip", "-e"))}
    assert listed == wanted


def test_kernels_is_ours():
    """`kernels` is also the name of an unrelated PyPI project; ours must win."""
    import kernels
    from kernels import qtypes

    assert Path(kernels.__file__).resolve().parent == ROOT / "kernels"
    assert qtypes.BY_NAME["Q4_1"].type_size == 20
