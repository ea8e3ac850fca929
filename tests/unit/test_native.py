"""The mypyc-compiled message path (tools/build_native.py) and its stale-build guard."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import appliance

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("build_native", ROOT / "tools" / "build_native.py")
assert _spec is not None and _spec.loader is not None
build_native = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_native)

PROBE = ("import appliance, appliance.sip.message as m, appliance.pbx.core as c; "
         "print(appliance.NATIVE); print(m.__file__); print(c.__file__); "
         "from appliance.sip.message import parse_message; "
         "print(parse_message(b'OPTIONS sip:a SIP/2.0\\r\\nVia: SIP/2.0/UDP h;branch=z9hG4bK1"
         "\\r\\nContent-Length: 0\\r\\n\\r\\n').method)")


def _probe(root: Path) -> tuple[list[str], str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(), out.stderr


@pytest.fixture
def built_copy(tmp_path: Path) -> Path:
    """A copy of the package with its compiled modules, importable from tmp_path."""
    if appliance.NATIVE != "compiled":
        pytest.fail(f"the compiled modules are not in use ({appliance.NATIVE}): run `make native`")
    shutil.copytree(ROOT / "appliance", tmp_path / "appliance",
                    ignore=shutil.ignore_patterns("__pycache__", "voice"))
    return tmp_path


def test_the_tests_run_the_compiled_modules():
    # `make test` builds them first: the suite tests what `make run` and the bench run.
    assert appliance.NATIVE == "compiled"
    for rel in build_native.MODULES:
        name = "appliance." + rel.removesuffix(".py").replace("/", ".")
        module = __import__(name, fromlist=["_"])
        assert module.__file__.endswith(".so"), name


def test_a_complete_build_is_used(built_copy: Path):
    (native, message, core, method), err = _probe(built_copy)
    assert native == "compiled" and err == ""
    assert message.startswith(str(built_copy)) and message.endswith(".so")
    assert core.endswith(".so") and method == "OPTIONS"


def test_an_edited_source_makes_every_module_run_as_python(built_copy: Path):
    src = built_copy / "appliance" / "sip" / "message.py"
    src.write_text(src.read_text() + "\n# edited after the build\n")
    (native, message, core, method), err = _probe(built_copy)
    assert native == "sources: changed since `make native`: sip/message.py"
    # not only the edited one: compiled modules call each other directly
    assert message.endswith("message.py") and core.endswith("core.py") and method == "OPTIONS"
    assert "running the Python sources" in err and "sip/message.py" in err


def test_an_unfinished_build_is_not_used(built_copy: Path):
    (built_copy / "appliance" / "_native.txt").unlink()
    (native, message, core, _), err = _probe(built_copy)
    assert native == "sources: no complete build (FileNotFoundError)"
    assert message.endswith("message.py") and core.endswith("core.py")


def test_no_build_at_all_is_plain_python(built_copy: Path):
    for path in built_copy.joinpath("appliance").rglob("*.so"):
        path.unlink()
    (built_copy / "appliance" / "_native.txt").unlink()
    (native, message, _, _), err = _probe(built_copy)
    assert native == "sources" and message.endswith("message.py") and err == ""


def test_a_module_compiled_by_an_earlier_build_is_not_used(built_copy: Path):
    # e.g. after checking out a commit that compiles fewer modules: its leftover would
    # look for itself in a shared library that no longer has it
    pkg = built_copy / "appliance"
    uri_so = next((pkg / "sip").glob("uri.*.so"))
    shutil.copy(uri_so, pkg / "pbx" / uri_so.name.replace("uri.", "bridge."))
    (native, message, core, method), err = _probe(built_copy)
    assert native.startswith("sources: not from the last build: pbx/bridge.")
    assert message.endswith("message.py") and core.endswith("core.py") and method == "OPTIONS"
    probe = subprocess.run([sys.executable, "-c", "import appliance.pbx.bridge as b; "
                            "print(b.__file__)"], cwd=built_copy, capture_output=True,
                           text=True, timeout=60)
    assert probe.stdout.strip().endswith("bridge.py"), probe.stderr


def test_the_build_removes_every_compiled_module_it_no_longer_makes(tmp_path, monkeypatch):
    pkg = tmp_path / "appliance"
    (pkg / "pbx").mkdir(parents=True)
    for name in ("pbx/dialplan.cpython-311-x86_64-linux-gnu.so", "_native__mypyc.abi3.so",
                 "_native.txt"):
        (pkg / name).write_bytes(b"old")
    monkeypatch.setattr(build_native, "PACKAGE", pkg)
    monkeypatch.setattr(build_native, "MANIFEST", pkg / "_native.txt")
    build_native.clean()
    assert list(pkg.rglob("*.*")) == []


def test_a_compiled_module_without_its_shared_library_is_not_used(built_copy: Path):
    next((built_copy / "appliance").glob("_native__mypyc.*")).unlink()
    (native, message, core, _), err = _probe(built_copy)
    assert native == "sources: no complete build (FileNotFoundError)"
    assert message.endswith("message.py") and core.endswith("core.py")
