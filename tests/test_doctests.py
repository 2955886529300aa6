"""The examples in vlae's docstrings run as written: every module's doctests, by module name
(so they run against the installed package, editable or not), and those of the tests' own
helpers."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import vlae

MODULES = sorted(m.name for m in pkgutil.walk_packages(vlae.__path__, "vlae.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", ["vlae", *MODULES, "emulated_cuda"])
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
