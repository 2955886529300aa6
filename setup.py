"""Verify a vlae installation: ``python setup.py``.

This file is NOT a setuptools script. The package is built by hatchling from
pyproject.toml (``pip install -e .``), which never runs this file. Running it
proves, in a few seconds on the CPU, that masked convolutions, the decoders'
receptive fields, MADE, the flows, the IW bound and a training step behave as
the paper's mathematics says (see ``vlae.verify``). Exit status 0: all checks
passed; 1: some failed; 2: wrong usage or vlae cannot be imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Commands a setuptools-era tool or tutorial might pass to a setup.py.
SETUPTOOLS_COMMANDS = {
    "install", "develop", "build", "build_py", "build_ext", "sdist", "bdist", "bdist_wheel", "bdist_egg",
    "egg_info", "dist_info", "editable_wheel", "clean", "check", "test", "upload", "register",
}

USAGE = "usage: python setup.py    (runs the vlae verification checks; takes no arguments)"


def main(argv: list[str]) -> int:
    if any(a in SETUPTOOLS_COMMANDS or a.startswith("--") and a not in ("--help",) for a in argv):
        print("error: setup.py is the verification script; install with `pip install -e .` (pyproject.toml)",
              file=sys.stderr)
        return 2
    if argv in (["-h"], ["--help"]):
        print(USAGE)
        print(__doc__.strip().split("\n\n", 1)[1])
        return 0
    if argv:
        print(f"error: unexpected argument {argv[0]!r}; {USAGE}", file=sys.stderr)
        return 2
    # Work from a fresh checkout too, before `pip install -e .`.
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    try:
        from vlae.verify import main as verify
    except ImportError as exc:
        print(f"error: cannot import vlae ({exc}); install it with `pip install -e .`", file=sys.stderr)
        return 2
    return verify()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
