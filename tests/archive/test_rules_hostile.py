"""Hostile and odd ignore lines: bounded matching time, no failed backup, git's line reading.

``git check-ignore`` is the oracle wherever git gives a line a meaning.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from wingsbak.archive import IgnoreRules
from wingsbak.archive import rules as rules_mod
from wingsbak.archive.rules import read_pteroignore

HANG_BOUND = 30.0  # seconds: only a hang (catastrophic backtracking) gets near it


def finishes(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result, run in a thread; TimeoutError if it has not finished in time."""
    out: list[Any] = []
    th = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    th.start()
    th.join(HANG_BOUND)
    if th.is_alive():
        raise TimeoutError(f"matching did not finish within {HANG_BOUND} s")
    return out[0]


def git_check_ignore(tmp_path: Path, exclude: bytes, paths: list[bytes]) -> set[bytes]:
    """The paths (files, created under a fresh repository) that git says are ignored."""
    repo = tmp_path / "oracle"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".git" / "info" / "exclude").write_bytes(exclude)
    for p in paths:
        full = repo / os.fsdecode(p)
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(b"x")
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "-z", "--stdin"],
        cwd=repo,
        input=b"\0".join(paths) + b"\0",
        capture_output=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return {p for p in proc.stdout.split(b"\0") if p}


def ours_from_file(tmp_path: Path, exclude: bytes, paths: list[bytes]) -> set[bytes]:
    """The paths our rules exclude, reading ``exclude`` as a ``.pteroignore``."""
    srv = tmp_path / "srv"
    srv.mkdir()
    (srv / ".pteroignore").write_bytes(exclude)
    rules = IgnoreRules.for_server(srv)
    return {p for p in paths if rules.excludes(os.fsdecode(p))}


HOSTILE = [
    "*a*a*a*a*a*a*a*ab",
    "**/*a*a*a*a*a*a*a*a*a*a*ab/**",
    "a/**/**/**/**/**/**/**/**/**/b",
    "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*ab/",
]


@pytest.mark.parametrize("line", HOSTILE)
def test_hostile_line_against_long_names_finishes(line: str) -> None:
    rules = IgnoreRules([line])
    names = ["a" * 4000, "a/" * 2000 + "c", ("a" * 250 + "/") * 16 + "a" * 250]

    def run() -> list[bool]:
        return [rules.excludes(n, is_dir=d) for n in names for d in (False, True)]

    assert finishes(run) == [False] * 6


def test_hostile_line_still_matches_what_it_should(tmp_path: Path) -> None:
    if rules_mod._re2 is None:
        pytest.skip("without google-re2 such a line is skipped")
    line = "*a*a*a*a*a*a*a*ab"
    paths = [b"a" * 200 + b"b", b"a" * 200, b"x/" + b"a" * 50 + b"b"]
    expected = git_check_ignore(tmp_path, (line + "\n").encode(), paths)
    rules = IgnoreRules([line])
    assert finishes(lambda: {p for p in paths if rules.excludes(p.decode())}) == expected


def test_without_re2_a_backtracking_line_is_skipped_not_hung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rules_mod, "_re2", None)
    warned: list[str] = []
    monkeypatch.setattr(rules_mod, "_warn", lambda line, reason: warned.append(line))
    rules = IgnoreRules(["*a*a*a*a*a*a*a*ab", "*.log", "**/x*y"])
    assert warned == ["*a*a*a*a*a*a*a*ab"]
    assert finishes(lambda: rules.excludes("a" * 4000)) is False
    assert rules.excludes("d/e.log")
    assert rules.excludes("d/xay")
    assert not rules.excludes("d/e.txt")


ODD_LINES = [
    (b"foo\\\n", [b"foo", b"foo\\"]),  # trailing backslash: git never matches it
    (b"a\\  \n", [b"a ", b"a"]),  # escaped space, then an unescaped one (dropped)
    (b"a\\ \t\n", [b"a \t", b"a "]),  # escaped space, then a tab (kept)
    (b"x\t\n", [b"x\t", b"x"]),  # a trailing tab is part of the name
    (b"\xef\xbb\xbfsecret.txt\n", [b"secret.txt"]),  # a UTF-8 BOM is not part of the rule
    (b"a\rb\n", [b"a\rb", b"a", b"b"]),  # a lone CR does not end a line
    (b"a\x0cb\n", [b"a\x0cb", b"a", b"b"]),  # nor a form feed
    (b"a\xc2\x85b\n", [b"a\xc2\x85b", b"a", b"b"]),  # nor U+0085
    (b"a\xe2\x80\xa8b\n", [b"a\xe2\x80\xa8b", b"a", b"b"]),  # nor U+2028
    (b"foo.log\r\r\n", [b"foo.log", b"foo.log\r"]),  # one CR of CRLF is dropped, not all
    (b"foo.log\r\nbar\r\n", [b"foo.log", b"bar"]),
    (b"?\n", [b"\xc3\xa9", b"e"]),  # "?" is one byte, as in git
    (b"??\n", [b"\xc3\xa9"]),
    (b"\xff*\n", [b"\xffx", b"x"]),  # a pattern that is not UTF-8
    (b"*\n", [b"a\nb"]),  # a name with a newline
    (b"logs\\\n*.log\n", [b"x.log", b"logs"]),  # one bad line does not spoil the others
]


@pytest.mark.parametrize(("exclude", "paths"), ODD_LINES)
def test_odd_lines_read_as_git_reads_them(
    tmp_path: Path, exclude: bytes, paths: list[bytes]
) -> None:
    expected = git_check_ignore(tmp_path, exclude, paths)
    assert ours_from_file(tmp_path, exclude, paths) == expected


def test_a_line_git_ignores_is_skipped_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    warned: list[str] = []
    monkeypatch.setattr(rules_mod, "_warn", lambda line, reason: warned.append(line))
    rules = IgnoreRules.from_text("logs\\\n*.tmp\n")
    assert warned == ["logs\\"]
    assert rules.excludes("x.tmp")
    assert not rules.excludes("logs")


def test_a_line_pathspec_cannot_translate_does_not_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # POSIX classes: pathspec has no translation for them; the line is skipped (warned),
    # never failing the backup, and the other lines still apply.
    monkeypatch.setattr(rules_mod, "_warn", lambda line, reason: None)
    rules = IgnoreRules.from_text("[[:alpha:]]\n*.tmp\n")
    assert rules.excludes("x.tmp")


def test_bom_and_non_utf8_bytes_of_pteroignore_are_kept_as_bytes(tmp_path: Path) -> None:
    (tmp_path / ".pteroignore").write_bytes(b"\xef\xbb\xbfsecret\n\xff\n")
    text = read_pteroignore(tmp_path)
    assert text.split("\n")[0] == "secret"
    assert text.split("\n")[1].encode("utf-8", "surrogateescape") == b"\xff"
