"""Office phone system in a box: the SIP PBX daemon."""

from __future__ import annotations

import hashlib
import sys
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path

_HERE = Path(__file__).resolve().parent

# How the message path runs: "compiled" (mypyc, see tools/build_native.py), "sources"
# (never compiled), or "sources: <why>" (compiled, but not for these sources).
NATIVE = "sources"


class _Sources:
    """Import every appliance.* module from its .py file, never from a compiled extension
    beside it: used when the compiled modules do not match their sources."""

    @staticmethod
    def find_spec(fullname: str, path: list[str] | None = None,
                  target: object = None) -> ModuleSpec | None:
        if not fullname.startswith("appliance.") or not path:
            return None
        name = fullname.rpartition(".")[2]
        for entry in path:
            src = Path(entry) / f"{name}.py"
            if src.is_file():
                return spec_from_file_location(fullname, src)
        return None  # packages and everything else: the usual finders


def _native_guard() -> str:
    """Use the compiled modules only if `_native.txt` vouches for every source they were
    built from; otherwise all of them run as Python (compiled modules call each other
    directly, so a mix of old compiled and new source code must never run)."""
    compiled = list(_HERE.rglob("*.so"))
    if not compiled:
        return "sources"
    try:
        if not any(so.name.startswith("_native__mypyc.") for so in compiled):
            raise FileNotFoundError("the shared library")
        lines = (_HERE / "_native.txt").read_text().splitlines()
        built = dict(line.split() for line in lines)
        changed = [rel for rel, digest in built.items()
                   if hashlib.sha256((_HERE / rel).read_bytes()).hexdigest() != digest]
        why = f"changed since `make native`: {', '.join(changed)}" if changed else ""
        # A module compiled by an earlier build but not by this one would load against
        # a library that no longer has it.
        stray = sorted(str(so.relative_to(_HERE)) for so in compiled
                       if not so.name.startswith("_native__mypyc.")
                       and f"{so.relative_to(_HERE).parent / so.name.split('.')[0]}.py"
                       .removeprefix("./") not in built)
        if stray and not why:
            why = f"not from the last build: {', '.join(stray)}"
    except (OSError, ValueError) as e:
        why = f"no complete build ({e.__class__.__name__})"
    if not why:
        return "compiled"
    sys.meta_path.insert(0, _Sources)  # type: ignore[arg-type]
    print(f"appliance: running the Python sources; the compiled modules are stale ({why})",
          file=sys.stderr)
    return f"sources: {why}"


NATIVE = _native_guard()
