"""Builds the agent-only virtual environment the way a device installs splitinfer, and checks it has no torch.

    python scripts/agent_venv.py [VENV_DIR]      # default .cache/agent-venv; prints its python

A fresh venv, then ``pip install '<checkout>[agent]'``: no ``--no-deps``, no hand-made requirement list, so
whatever the core dependencies pull is what a device gets. The checkout is a copy of what a source
distribution holds (pyproject.toml, README.md and the three packages, the generated protobuf modules
included) in a temporary directory, so that building the wheel writes nothing into the working tree. The
build fails if torch is importable afterwards. The venv is reused while pyproject.toml and the packages'
sources are unchanged (a marker holds their hash), so CI builds it once per change.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / ".cache" / "agent-venv"
#: What a source distribution of the project holds (as the Dockerfile copies it).
SOURCES = ("pyproject.toml", "README.md", "splitinfer", "server_node", "edge_agent")
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".generated")


def _files() -> list[Path]:
    found = []
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.py*") if "__pycache__" not in p.parts))
        else:
            found.append(path)
    return found


def digest() -> str:
    """Hash of what the install is built from."""
    h = hashlib.sha256()
    for path in _files():
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def ensure(directory: Path = DEFAULT) -> Path:
    """The venv's python, building or rebuilding the venv when the project changed."""
    marker = directory / f".ready-{digest()}"
    python = directory / "bin" / "python"
    if marker.is_file() and python.is_file():
        return python
    venv.EnvBuilder(clear=True, with_pip=True).create(directory)
    with tempfile.TemporaryDirectory(prefix="splitinfer-checkout-") as tmp:
        checkout = Path(tmp) / "splitinfer"
        checkout.mkdir()
        for name in SOURCES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, checkout / name, ignore=_SKIP)
            else:
                shutil.copy2(source, checkout / name)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{checkout}[agent]"],
            check=True,
            cwd=tmp,
        )
    found = subprocess.run([str(python), "-c", "import torch"], capture_output=True, cwd=directory)
    if found.returncode == 0:
        raise SystemExit(f"{directory}: torch became importable; `pip install 'splitinfer[agent]'` must not pull it")
    for old in directory.glob(".ready-*"):
        old.unlink()
    marker.write_text("pip install '<checkout>[agent]'\n")
    return python


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
