"""Print pip constraints that pin each of the project's direct dependencies to the lowest version it allows.

Reads ``[project.dependencies]`` and the runtime extras named on the command line from pyproject.toml;
``name>=X`` becomes ``name==X`` (its environment marker kept). A dependency without a lower bound is an
error: a bound the suite never installs is a promise nobody checked.

    python3 .ci/lowest.py redis postgres > constraints.txt
    pip install -e '.[test]' -c constraints.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")


def lowest(requirement: str) -> str:
    match = REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"cannot read the requirement {requirement!r}")
    name, _extras, spec, marker = match.groups()
    bounds = dict(re.findall(r"(==|>=)\s*([^,\s]+)", spec))
    version = bounds.get("==") or bounds.get(">=")
    if version is None:
        raise SystemExit(f"{name} has no lower bound in pyproject.toml ({requirement!r}); give it one")
    return f"{name}=={version}{' ' + marker if marker else ''}"


def main(extras: list[str]) -> None:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    for requirement in requirements:
        print(lowest(requirement))


if __name__ == "__main__":
    main(sys.argv[1:])
