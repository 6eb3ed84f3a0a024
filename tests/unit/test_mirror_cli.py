"""``kvtui mirror``'s input: the profile it takes, its flags, the banner; bad input is exit 2 before any server."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvtui.cli import main
from kvtui.core.errors import ProfileError
from kvtui.core.mirror.session import MirrorSettings
from kvtui.mirror_cli import banner, mirror_profile

REPO = Path(__file__).resolve().parents[2]


def test_a_profiles_prompts_or_conversation_give_way_to_the_agents_turns():
    for name in ("demo.toml", "coding-conversation.toml", "mirror.toml"):
        p = mirror_profile(str(REPO / "profiles" / name))
        assert p.conversation is None and [x.name for x in p.prompts] == ["warm-up"]
        assert p.prompt.endpoint == "chat" and p.run.repeats == 1
    assert mirror_profile(str(REPO / "profiles" / "mirror.toml")).run.schedule == "alternate"


def test_a_bad_profile_says_what_kvtui_run_says(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[sides]]\nname = 1\n")
    with pytest.raises(ProfileError):
        mirror_profile(str(bad))
    with pytest.raises(ProfileError, match="no such profile file"):
        mirror_profile(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize("argv, expect", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 would let other machines send requests"),
    (["--port", "70000"], "--port 70000 is not a port"),
])
def test_bad_flags_are_exit_2_with_a_fix(argv, expect, capsys):
    code = main(["mirror", str(REPO / "profiles" / "mirror.toml"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and "kvtui: fix:" in err


def test_banner_says_where_and_how_to_point_an_agent():
    lines = banner("http://127.0.0.1:8080", MirrorSettings(), "q8_0", ["q4_0"])
    assert lines[0] == "mirror: listening on http://127.0.0.1:8080 (primary: q8_0; mirrored to: q4_0)"
    assert "OPENAI_BASE_URL=http://127.0.0.1:8080/v1" in lines[1]
    open_to_all = banner("http://0.0.0.0:8080", MirrorSettings(host="0.0.0.0", allow_remote=True), "a", ["b"])
    assert "without a key" in open_to_all[-1]
    keyed = banner("http://0.0.0.0:8080", MirrorSettings(host="0.0.0.0", allow_remote=True, api_key="k"), "a", [])
    assert not any("without a key" in line for line in keyed)
