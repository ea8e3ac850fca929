"""Random tokens (appliance/sip/tokens.py): unique, hex, never shared with a forked child."""

from __future__ import annotations

import os

from appliance.sip import tokens
from appliance.sip.dialog import new_call_id, new_tag
from appliance.sip.transaction import new_branch


def test_tokens_are_hex_of_the_length_asked_and_never_repeat():
    drawn = [tokens.token_hex(8) for _ in range(20_000)]  # 160 KB: the pool refills 40 times
    assert all(len(t) == 16 and int(t, 16) >= 0 for t in drawn)
    assert len(set(drawn)) == len(drawn)
    assert len(tokens.token_hex(5000)) == 10_000  # more than a pool at once
    assert len(new_tag()) == 12 and new_branch().startswith("z9hG4bK")
    assert new_call_id("h").endswith("@h") and len(new_call_id("h")) == 22


def test_a_forked_child_does_not_draw_its_parents_next_tokens():
    tokens.token_hex(1)  # the pool holds bytes the child could otherwise repeat
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, tokens.token_hex(16).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != tokens.token_hex(16)
