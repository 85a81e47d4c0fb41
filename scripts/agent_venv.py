"""Builds the agent-only virtual environment: the ``[agent]`` extra of pyproject.toml and no torch.

    python scripts/agent_venv.py [VENV_DIR]      # default .cache/agent-venv; prints its python

The project itself is not installed into it (its core dependencies include torch): the agent runs from
the source tree with ``PYTHONPATH`` set, as ``pip install --no-deps .`` would leave it on a device. Each
requirement is pinned to the version installed here when there is one, so the agent is tested against
what the servers run. The venv is reused while the resolved requirements are unchanged (a marker holds
their hash), so CI builds it once.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tomllib
import venv
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / ".cache" / "agent-venv"


def requirements() -> list[str]:
    """The ``[agent]`` extra, each pinned to the locally installed version where there is one."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["agent"]
    pinned = []
    for requirement in extra:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(requirement)
    return pinned


def ensure(directory: Path = DEFAULT) -> Path:
    """The venv's python, building or rebuilding the venv when its requirements changed."""
    wanted = requirements()
    digest = hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:16]
    python = directory / "bin" / "python"
    marker = directory / f".ready-{digest}"
    if marker.is_file() and python.is_file():
        return python
    venv.EnvBuilder(clear=True, with_pip=True).create(directory)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted], check=True)
    found = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    if found.returncode == 0:
        raise SystemExit(f"{directory}: torch became importable; the [agent] extra must not pull it")
    marker.write_text("\n".join(wanted) + "\n")
    return python


if __name__ == "__main__":
    print(ensure(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
