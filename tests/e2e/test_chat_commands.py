"""``tokenwire chat`` in a real terminal (tmux): /help, /key, /model, /new, and a gateway that went away."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import urllib.request

import pytest
from secutil import create_key
from test_client_cli import STATS, TOKENWIRE, Tmux, clean_env

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def keyed(spawn, tmp_path):
    db = tmp_path / "keys.db"
    key = create_key(db, "alice")
    gw = spawn("serve", "--port", "0", env={"TOKENWIRE_DB": str(db), "TOKENWIRE_SIMULATED_SPEED": "50"})
    gw.key = key
    return gw


def models(gw) -> list[str]:
    req = urllib.request.Request(gw.http + "/v1/models", headers={"Authorization": f"Bearer {gw.key}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return [m["id"] for m in json.load(resp)["data"]]


def test_chat_commands_a_key_typed_in_the_chat_and_a_gateway_that_went_away(keyed) -> None:
    cmd = f"{shlex.join([*TOKENWIRE, 'chat', '--url', keyed.ws, '--max-tokens', '6'])}; echo EXIT=$?; sleep 30"
    term = Tmux(cmd, clean_env())
    try:
        # without a key it says what to do, and stays
        screen = term.wait(r"you> ")
        assert "type /key" in screen, screen
        first_conv = re.search(r"conversation (conv_[0-9a-f]+)", screen).group(1)

        term.keys("/help", "Enter")
        screen = term.wait(r"/model \[NAME\]")
        for command in ("/help", "/new", "/key [KEY]", "/quit"):
            assert command in screen

        term.keys("/key", "Enter")  # asked for without echo
        term.wait(r"API key \(not shown\): ")
        term.keys(keyed.key, "Enter")
        screen = term.wait(r"key accepted")
        assert keyed.key not in screen

        term.keys("hello", "Enter")
        term.wait(STATS)

        names = models(keyed)
        other = next(n for n in names if n != names[0])
        term.keys("/model", "Enter")
        screen = term.wait(r"models: ")
        assert all(n in screen for n in names)
        term.keys("/model no-such-model", "Enter")
        term.wait(r"unknown model 'no-such-model'")
        term.keys(f"/model {other}", "Enter")
        term.wait(rf"model: {re.escape(other)} \(from the next message on\)")
        term.keys("second", "Enter")
        screen = term.wait(STATS + rf" · {re.escape(other)} \(simulated\)")

        term.keys("/new", "Enter")
        screen = term.wait(r"new conversation conv_[0-9a-f]+")
        new_conv = re.findall(r"new conversation (conv_[0-9a-f]+)", screen)[-1]
        assert new_conv != first_conv

        term.keys("/bogus", "Enter")
        term.wait(r"unknown command /bogus: /help lists them")

        keyed.stop()  # the gateway goes away: a sentence, not an exception
        term.keys("anyone there?", "Enter")
        screen = term.wait(r"is it running\? Start one with `tokenwire serve`", within=30)
        assert "Error:" not in screen and "Traceback" not in screen and "ClientConnectorError" not in screen
        term.wait(r"\[connection_lost\]\s*\nyou> ")  # still in the chat
        term.keys("/quit", "Enter")
        term.wait(r"EXIT=0")
    finally:
        term.kill()
