"""The trainers' own data code, for checking exports with it: TRL's data utilities and LLaMA-Factory's dataset
converters, both installed without their dependencies (``pip install --no-deps -r tests/consumers.txt``, in the
README's test command) because they would bring torch for code that only reads rows.

TRL's ``trl.data_utils`` imports as it is. LLaMA-Factory's converters live in a package whose ``__init__`` imports
torch (``llamafactory/data/__init__.py`` → ``collator``), as do two modules they import for two names each
(``extras.misc``: ``use_modelscope`` / ``use_openmind``; ``peft.utils``: two file-name constants): those two are
stood in for, the package is entered without running its ``__init__``, and everything that reads a row —
``converter.py``, ``parser.py``, ``data_utils.py``, ``extras/constants.py`` — is LLaMA-Factory's own code.
Missing, the tests skip saying how to install them (and fail under CI).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

import pytest

INSTALL = ".venv/bin/pip install --no-deps -r tests/consumers.txt"


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed; `{INSTALL}` installs the trainers' data code the export tests use"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def trl_data_utils() -> Any:
    _require("trl")
    return importlib.import_module("trl.data_utils")


def llamafactory_converters() -> tuple[Any, Any]:
    """LLaMA-Factory's ``data.converter`` and ``data.parser`` modules, torch left out (see the module's docstring)."""
    _require("llamafactory")
    if "llamafactory.data.converter" not in sys.modules:
        import transformers.utils  # noqa: F401  (first: transformers asks for peft's spec, which a stand-in has not)

        if importlib.util.find_spec("peft") is None:
            peft = types.ModuleType("peft")
            peft.__path__ = []
            utils = types.ModuleType("peft.utils")
            utils.SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"  # type: ignore[attr-defined]
            utils.WEIGHTS_NAME = "adapter_model.bin"  # type: ignore[attr-defined]
            sys.modules.setdefault("peft", peft)
            sys.modules.setdefault("peft.utils", utils)
        import llamafactory

        package = types.ModuleType("llamafactory.data")
        package.__path__ = [os.path.join(os.path.dirname(llamafactory.__file__), "data")]
        sys.modules["llamafactory.data"] = package
        misc = types.ModuleType("llamafactory.extras.misc")
        misc.use_modelscope = lambda: False  # type: ignore[attr-defined]
        misc.use_openmind = lambda: False  # type: ignore[attr-defined]
        sys.modules["llamafactory.extras.misc"] = misc
    return importlib.import_module("llamafactory.data.converter"), importlib.import_module("llamafactory.data.parser")


def llamafactory_convert(dataset_info: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row as LLaMA-Factory's converter makes it, for a ``dataset_info.json`` entry as its README writes them."""
    converter, parser = llamafactory_converters()
    (attr,) = parser.get_dataset_list(["exported"], {"exported": dataset_info})
    convert = converter.get_dataset_converter(attr.formatting, attr, types.SimpleNamespace(media_dir="."))
    return [convert(row) for row in rows]
