"""Programs from Debian packages that some tests need, and what a test does when one is missing.

``.ci/run`` installs every package named here. Without one, a test that needs it skips on a developer's
machine, saying the ``apt-get install`` line that lets it run, and fails under CI (``CI=true``), where a
missing package is a broken CI script, not a reason to test less.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest


def missing(what: str, package: str) -> None:
    """Skip (or, under CI, fail) a test that needs ``what`` from Debian's ``package``."""
    message = f"{what} is not installed; `apt-get install -y {package}` (as .ci/run does) lets this test run"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def program(name: str, package: str, *patterns: str) -> str:
    """The path of program ``name`` from the PATH, else from the first of ``patterns`` (globs) that exists."""
    found = shutil.which(name) or next((p for pattern in patterns for p in sorted(glob.glob(pattern), reverse=True)), None)
    if found is None:
        missing(name, package)
    return found or ""
