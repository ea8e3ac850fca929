"""Compile the SIP message path with mypyc: the same Python sources, as C extensions.

    python tools/build_native.py          # build in place, then write appliance/_native.txt
    python tools/build_native.py --clean  # remove the compiled modules: pure Python again

mypyc (from mypy) turns the type-annotated modules below into C extension modules that
sit next to their sources (`message.cpython-311-*.so` beside `message.py`) and that
Python imports in their place. There is no second implementation: the .py files are
the source and stay importable as they are. `appliance/_native.txt` records the
SHA-256 of every source compiled; `appliance/__init__.py` falls back to the Python
sources, all of them, when any has changed since (see `_native_guard` there), so an
edited module never runs stale compiled code.

Why these modules: they are the per-message work of registrations and calls (parse,
validate, transactions, digest, registrar, location, B2BUA), and the log's handler that
writes a call's three lines; see docs/performance.md.
Needs a C compiler and Python's headers (`make native` installs gcc and python3-dev).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "appliance"
MANIFEST = PACKAGE / "_native.txt"
GROUP = "appliance._native"  # the shared library: appliance/_native__mypyc.*.so

MODULES = [
    "sip/memo.py",
    "sip/uri.py",
    "sip/tokens.py",
    "sip/message.py",
    "sip/digest.py",
    "sip/transaction.py",
    "sip/express.py",
    "sip/register.py",
    "sip/endpoint.py",
    "sip/transport.py",
    "sip/dialog.py",
    "pbx/location.py",
    "pbx/dialplan.py",
    "sip/prack.py",
    "pbx/registrar.py",
    "pbx/core.py",
    "pbx/call.py",
    "loglines.py",
]


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built_files() -> list[Path]:
    """Every compiled module in the package: this build's, and those of an earlier build
    whose list was longer (a leftover would shadow its source; the package ships no
    other extension modules)."""
    return list(PACKAGE.rglob("*.so"))


def clean() -> None:
    for path in [MANIFEST, *built_files()]:
        path.unlink(missing_ok=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    clean()  # a half-finished build must not leave a mix of old and new modules
    os.chdir(ROOT)
    # Type errors in the compiled modules stop the build; the modules they import
    # (media, config, ...) stay Python and are not held to mypy here.
    paths = ["--follow-imports=silent", *(f"appliance/{rel}" for rel in MODULES)]
    setup(
        name="appliance-native",
        ext_modules=mypycify(paths, opt_level="3", group_name=GROUP),
        script_args=["-q", "build_ext", "--inplace", "--build-temp", "build/native",
                     "--build-lib", "build/native"],
    )
    # Written last: only a complete build is ever used.
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text("".join(f"{rel} {source_hash(PACKAGE / rel)}\n" for rel in MODULES))
    tmp.replace(MANIFEST)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    args = parser.parse_args()
    if args.clean:
        clean()
        return 0
    build()
    print(f"compiled {len(MODULES)} modules with mypyc", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
