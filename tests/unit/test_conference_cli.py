"""`appliance room add|list|remove`."""

from __future__ import annotations

from appliance import cli
from appliance.store.config import load_config


def test_room_add_list_update_remove(tmp_path, capsys) -> None:
    data = str(tmp_path / "data")
    assert cli.main(["room", "add", "800", "--name", "Sales", "--data", data]) == 0
    assert "added room 800 (Sales), without a PIN" in capsys.readouterr().out
    assert cli.main(["room", "add", "801", "--pin", "2468", "--max-participants", "10",
                     "--language", "zh", "--data", data]) == 0
    rooms = load_config(f"{data}/config.yaml").rooms
    assert rooms["800"].pin is None and rooms["800"].max_participants == 5
    assert rooms["801"].pin == "2468" and rooms["801"].max_participants == 10
    assert rooms["801"].language == "zh"
    capsys.readouterr()

    assert cli.main(["room", "list", "--data", data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NUMBER", "NAME", "PIN", "MAX", "LANGUAGE"]
    assert lines[1].split() == ["800", "Sales", "-", "5", "(en)"]
    assert lines[2].split() == ["801", "-", "2468", "10", "zh"]

    assert cli.main(["room", "add", "800", "--pin", "1357", "--data", data]) == 0
    assert "updated room 800, with a PIN" in capsys.readouterr().out
    assert load_config(f"{data}/config.yaml").rooms["800"].pin == "1357"

    assert cli.main(["room", "remove", "800", "--data", data]) == 0
    assert list(load_config(f"{data}/config.yaml").rooms) == ["801"]


def test_room_edits_refused(tmp_path, capsys) -> None:
    data = str(tmp_path / "data")
    assert cli.main(["room", "add", "8x", "--data", data]) == cli.EXIT_USAGE
    assert "invalid room number" in capsys.readouterr().err
    cli.main(["room", "list", "--data", data])  # creates the defaults
    before = (tmp_path / "data" / "config.yaml").read_text()
    for argv, message in (
        (["room", "add", "100"], "is also an extension number"),
        (["room", "add", "802", "--pin", "12"], "must be 3-12 digits"),
        (["room", "add", "802", "--max-participants", "1"], "max_participants"),
        (["room", "remove", "809"], "no room 809"),
    ):
        assert cli.main([*argv, "--data", data]) == cli.EXIT_USAGE, argv
        assert message in capsys.readouterr().err, argv
    assert (tmp_path / "data" / "config.yaml").read_text() == before
