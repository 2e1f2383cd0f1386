"""agent.paths: directory expansion with Go's os.ExpandEnv semantics."""

from __future__ import annotations

import pytest

from agent.paths import expand_directory, expand_env, home_directory

ENV = {"HOME": "/home/ada", "PROJECT": "engine", "EMPTY": ""}


@pytest.mark.parametrize(
    ("raw", "expanded"),
    [
        ("", ""),
        ("~", "/home/ada"),
        ("~/src", "/home/ada/src"),
        ("$HOME", "/home/ada"),
        ("${HOME}/x", "/home/ada/x"),
        ("~/src/$PROJECT", "/home/ada/src/engine"),
        ("/srv/$UNSET/x", "/srv//x"),  # unset variables expand to "" (os.ExpandEnv)
        ("/data/~", "/data/~"),  # only a leading ~ is the home directory
        ("~ada", "/home/ada/ada"),  # any leading ~ is home (Coder: Join(home, dir[1:]))
        ("~/", "/home/ada"),  # the ~ branch is cleaned, as filepath.Join does
        ("~/a/../b/", "/home/ada/b"),
        ("/price$", "/price$"),  # a lone $ stays
        ("$EMPTY/x", "/x"),
    ],
)
def test_expand_directory(raw: str, expanded: str) -> None:
    assert expand_directory(raw, ENV) == expanded


def test_root_home() -> None:
    assert expand_directory("~", {"HOME": "/"}) == "/"
    assert expand_directory("~/x", {"HOME": "/"}) == "/x"


def test_home_falls_back_to_passwd_when_home_is_unset() -> None:
    home = home_directory({})
    assert home.startswith("/")
    assert expand_directory("~", {}) == home


def test_expand_env_braces_and_names() -> None:
    assert expand_env("${PROJECT}_$PROJECT.x", ENV) == "engine_engine.x"
