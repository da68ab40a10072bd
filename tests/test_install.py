"""The install is reproducible: constraints.txt pins every dependency pyproject.toml names (extras included,
torch excepted: the machine's own build) at a version its lower bound admits, and both README commands and
.ci/run install through it."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and not name.startswith("-"), line
            out[canonicalize_name(name)] = version.strip()
    return out


def test_constraints_pin_every_dependency_within_its_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pinned = pins()
    assert "torch" not in pinned  # a CPU machine installs the local wheel first, a GPU machine its CUDA build
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pinned, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])


def test_the_readme_commands_and_ci_install_from_the_constraints():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^python3 -m venv .*$", readme, flags=re.MULTILINE)[:2]
    assert len(commands) == 2 and all("-c constraints.txt -e " in c for c in commands), commands
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"pip install -q -c constraints.txt -e \"\.\[test\]\"", ci)
