"""config.yaml survives a writer killed at any moment.

A child process rewrites the file in a tight loop, alternating a small and a large
config, and is SIGKILLed after a random 5-50 ms. Each time the file must load as
one of the two, and the only debris allowed is a `.tmp-` file, which the next
ConfigStore.ensure() removes. (SIGKILL tests the rename protocol; the fsyncs that
make it hold across power loss are not observable from here.)
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from appliance.store.atomic import TEMP_PREFIX
from appliance.store.config import ConfigStore, load_config

pytestmark = pytest.mark.integration

ROUNDS = 50

CONFIGS = """
from appliance.store.config import Config, Extension, SystemConfig

def configs():
    small = Config(extensions={n: Extension(f"pw-{n}-small", f"Ext {n}") for n in ("100", "101")})
    large = Config(
        system=SystemConfig(name="Large"),
        extensions={str(n): Extension(f"pw-{n}-large" * 4, f"Desk phone {n} " * 3) for n in range(200, 600)},
    )
    return small, large
"""

WRITER = (
    CONFIGS
    + """
import sys
from appliance.store.config import save_config

path = sys.argv[1]
small, large = configs()
save_config(path, small)
print("ready", flush=True)
while True:
    save_config(path, large)
    save_config(path, small)
"""
)


def test_killed_writer_never_leaves_a_torn_file(tmp_path):
    scope: dict = {}
    exec(CONFIGS, scope)
    expected = [c.to_dict() for c in scope["configs"]()]
    store = ConfigStore(tmp_path)
    rng = random.Random(1234)
    started = time.monotonic()
    leftovers = 0

    for _ in range(ROUNDS):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.path)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.005, 0.050))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            child.stdout.close()

        assert load_config(store.path).to_dict() in expected
        names = os.listdir(tmp_path)
        assert "config.yaml" in names
        stray = [n for n in names if n != "config.yaml"]
        assert all(n.startswith(TEMP_PREFIX) for n in stray), stray
        leftovers += bool(stray)

        cfg, created = store.ensure()  # cleans the dead writer's temp file
        assert not created and cfg.to_dict() in expected
        assert os.listdir(tmp_path) == ["config.yaml"]

    assert time.monotonic() - started < 30
    print(f"{ROUNDS} kills, {leftovers} left a temp file behind")
