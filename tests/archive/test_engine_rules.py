"""Ignore rules against git itself: the archive holds exactly what git would not ignore."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import archive_bytes, gnu_tar_names
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wingsbak.archive import IgnoreRules
from wingsbak.archive import rules as rules_mod
from wingsbak.archive.rules import MAX_PTEROIGNORE_BYTES, PteroignoreTooLarge

NAMES = ["a", "b", "ab", "a.log", "b.txt", "#c", "!d", "e f", "dir", "x"]
SEGMENTS = [
    "a",
    "b",
    "ab",
    "dir",
    "x",
    "*",
    "**",
    "a*",
    "*.log",
    "?",
    "[ab]",
    "#c",
    "!d",
    "\\#c",
    "\\!d",
    "e f",
    "e\\ f",
    "x ",
    "[!a]*",
    "*b",
    "a.*",
    "*.txt",
]

Tree = dict[str, "Tree | str"]

trees: st.SearchStrategy[Tree] = st.recursive(
    st.sampled_from(["file", "file", "file", "link"]),
    lambda children: st.dictionaries(st.sampled_from(NAMES), children, max_size=4),
    max_leaves=16,
).filter(lambda t: isinstance(t, dict))


@st.composite
def pattern_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["pattern"] * 8 + ["comment", "blank"]))
    if kind == "comment":
        return "# " + draw(st.sampled_from(NAMES))
    if kind == "blank":
        return ""
    segments = draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3))
    line = "/".join(segments)
    if draw(st.booleans()):
        line = "/" + line
    if draw(st.integers(0, 3)) == 0:
        line += "/"
    if draw(st.integers(0, 3)) == 0:
        line = "!" + line
    return line


def build_tree(root: Path, tree: Tree) -> None:
    for name, node in tree.items():
        path = root / name
        if isinstance(node, dict):
            path.mkdir()
            build_tree(path, node)
        elif node == "link":
            path.symlink_to("a")
        else:
            path.write_bytes(name.encode() + b"\n")


def all_dirs(root: Path) -> list[str]:
    """Real directories under ``root`` (os.walk also lists symlinks to directories)."""
    found = []
    for d, dirs, _ in os.walk(root):
        for n in dirs:
            path = os.path.join(d, n)
            if not os.path.islink(path):
                found.append(os.path.relpath(path, root))
    return sorted(found)


def git(git_dir: Path, work: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", f"--work-tree={work}", *args],
        input=stdin,
        check=True,
        capture_output=True,
    ).stdout


def git_not_ignored_files(git_dir: Path, work: Path) -> set[bytes]:
    out = git(git_dir, work, "ls-files", "-z", "--others", "--exclude-standard")
    return {p for p in out.split(b"\0") if p}


CHECK_IGNORE = ["check-ignore", "--no-index", "-z", "--stdin"]


def git_ignored(git_dir: Path, work: Path, paths: list[str]) -> set[bytes]:
    """Paths ``git check-ignore`` says are ignored (it also honours excluded parents)."""
    if not paths:
        return set()
    proc = subprocess.run(
        ["git", f"--git-dir={git_dir}", f"--work-tree={work}", *CHECK_IGNORE],
        input=b"\0".join(p.encode() for p in paths) + b"\0",
        capture_output=True,
        cwd=work,
    )
    assert proc.returncode in (0, 1), proc.stderr  # 1: nothing is ignored
    return {p for p in proc.stdout.split(b"\0") if p}


@pytest.fixture(scope="module")
def git_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gd = tmp_path_factory.mktemp("oracle") / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(gd)], check=True)
    subprocess.run(["git", f"--git-dir={gd}", "config", "core.bare", "false"], check=True)
    (gd / "info").mkdir(exist_ok=True)
    return gd


def assert_matches_git(git_dir: Path, tree: Tree, lines: list[str]) -> None:
    (git_dir / "info" / "exclude").write_text("".join(line + "\n" for line in lines))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_tree(root, tree)
        data, result = archive_bytes(root, IgnoreRules(lines))
        names = gnu_tar_names(data)
        archived_dirs = {n.rstrip(b"/") for n in names if n.endswith(b"/")}
        archived_other = {n for n in names if not n.endswith(b"/")}
        assert archived_other == git_not_ignored_files(git_dir, root), (tree, lines)

        dirs = all_dirs(root)
        ignored_dirs = git_ignored(git_dir, root, dirs)
        assert archived_dirs == {d.encode() for d in dirs} - ignored_dirs, (tree, lines)
        assert result.skipped == 0
        assert result.files == len(names)


@settings(
    max_examples=int(os.environ.get("ENGINE_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(tree=trees, lines=st.lists(pattern_lines(), min_size=1, max_size=6))
def test_ignore_rules_agree_with_git(git_dir: Path, tree: Tree, lines: list[str]) -> None:
    assert_matches_git(git_dir, tree, lines)


class _SetOutOfMemory:
    """google-re2 whose sets answer as RE2 does when its automaton runs out of memory:
    no index at all; or that cannot compile a set (too large for its budget)."""

    def __init__(self, real: Any, how: str) -> None:
        self._real, self._how = real, how

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    @property
    def Set(self) -> Any:
        real, how = self._real, self._how

        class FailingSet:
            def __init__(self, inner: Any) -> None:
                self._inner = inner

            @classmethod
            def FullMatchSet(cls, options: Any = None) -> Any:
                return cls(real.Set.FullMatchSet(options))

            def Add(self, pattern: bytes) -> int:
                return self._inner.Add(pattern)

            def Compile(self) -> None:
                if how == "too-large":
                    raise real.error("failed to compile Set")
                self._inner.Compile()

            def Match(self, text: bytes) -> None:
                return None

        return FailingSet


ENGINES = ["re2", "re2-out-of-memory", "re2-too-large", "re"]


@pytest.mark.parametrize("engine", ENGINES)
@settings(
    max_examples=int(os.environ.get("ENGINE_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(tree=trees, lines=st.lists(pattern_lines(), min_size=1, max_size=12))
def test_many_lines_in_small_sets_agree_with_git(
    git_dir: Path, engine: str, tree: Tree, lines: list[str]
) -> None:
    """Sets of 2 lines: the last match wins across sets, across the kinds of lines (names,
    paths, suffixes, prefixes) and directory groups, with every matching engine."""
    real = rules_mod._re2
    if engine != "re" and real is None:
        pytest.skip("google-re2 is not installed")
    if engine == "re":
        # Without re2 such lines are skipped on purpose (see test_rules_hostile.py).
        star_runs = rules_mod._STAR_RUN.findall
        assume(all(len(star_runs(line)) <= rules_mod.MAX_STAR_RUNS_WITHOUT_RE2 for line in lines))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rules_mod, "GLOB_CHUNK", 2)
        if engine == "re":
            mp.setattr(rules_mod, "_re2", None)
        elif engine != "re2":
            mp.setattr(rules_mod, "_re2", _SetOutOfMemory(real, engine.removeprefix("re2-")))
        assert_matches_git(git_dir, tree, lines)


FIXED_TREE: Tree = {
    "a": "file",
    "a.log": "file",
    "#c": "file",
    "!d": "file",
    "dir": {"a": "file", "a.log": "file", "x": {"a": "file", "b.txt": "file"}, "ab": {}},
    "x": {"dir": {"a": "file", "b": "file"}, "a.log": "file"},
    "b": {"a": {"a": {"b.txt": "file"}}},
    "ab": "link",
}


@pytest.mark.parametrize(
    "lines",
    [
        ["*.log", "!dir/a.log"],  # negation
        ["/a"],  # anchored: only the top-level a
        ["a"],  # unanchored: every a, files and directories
        ["**/x"],
        ["dir/**"],  # everything inside dir, but not dir itself...
        ["dir/**", "!dir/a"],  # ...so dir is entered and a file in it can come back
        ["dir/ ", "x/\\ "],  # unescaped trailing spaces are dropped, escaped ones kept
        ["b/**/b.txt"],
        ["dir/"],  # a directory and everything under it
        ["dir/", "!dir/a"],  # ...and nothing under it can come back
        ["dir/*", "!dir/a"],  # the children are excluded, so one can come back
        ["x/", "!x/dir/"],
        ["\\#c", "\\!d"],  # escapes
        ["#c", "!d"],  # a comment, and a negation that re-includes nothing
        ["dir", "!dir/x"],
        ["ab/"],  # a symlink is not a directory
        ["*", "!*/"],  # everything but directories
        ["*/", "!x/", "x/*"],
    ],
)
def test_ignore_rules_fixed_cases(git_dir: Path, lines: list[str]) -> None:
    assert_matches_git(git_dir, FIXED_TREE, lines)


def names_of(root: Path, rules: IgnoreRules) -> set[str]:
    data, _ = archive_bytes(root, rules)
    return {n.decode() for n in gnu_tar_names(data)}


def test_request_lines_override_pteroignore(tmp_path: Path) -> None:
    (tmp_path / ".pteroignore").write_text("*.log\ncache/\n")
    for name in ("keep.log", "drop.log", "world.dat"):
        (tmp_path / name).write_text(name)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "c").write_text("c")
    names = names_of(tmp_path, IgnoreRules.for_server(tmp_path, "!keep.log\nworld.dat\n"))
    assert names == {".pteroignore", "keep.log"}
    # Without the request, .pteroignore alone applies.
    assert names_of(tmp_path, IgnoreRules.for_server(tmp_path)) == {".pteroignore", "world.dat"}


def test_pteroignore_of_exactly_the_limit_applies(tmp_path: Path) -> None:
    text = "*.log\n"
    text += "#" * (MAX_PTEROIGNORE_BYTES - len(text) - 1) + "\n"
    assert len(text.encode()) == MAX_PTEROIGNORE_BYTES
    (tmp_path / ".pteroignore").write_text(text)
    (tmp_path / "a.log").write_text("x")
    (tmp_path / "b").write_text("x")
    assert names_of(tmp_path, IgnoreRules.for_server(tmp_path)) == {".pteroignore", "b"}


def test_pteroignore_over_32_kib_applies(tmp_path: Path) -> None:
    # Once dropped whole (the old 32 KiB cap), putting everything it excludes in the backup.
    lines = [f"world/region/r.{i}.{i}.mca" for i in range(4000)] + ["*.log"]
    text = "\n".join(lines) + "\n"
    assert 32 * 1024 < len(text) < MAX_PTEROIGNORE_BYTES
    (tmp_path / ".pteroignore").write_text(text)
    (tmp_path / "world" / "region").mkdir(parents=True)
    (tmp_path / "world" / "region" / "r.7.7.mca").write_text("x")
    (tmp_path / "world" / "region" / "r.7.8.mca").write_text("x")
    (tmp_path / "a.log").write_text("x")
    names = names_of(tmp_path, IgnoreRules.for_server(tmp_path))
    assert names == {".pteroignore", "world/", "world/region/", "world/region/r.7.8.mca"}


def test_pteroignore_over_the_limit_fails_naming_it(tmp_path: Path) -> None:
    text = "*\n" + "#" * MAX_PTEROIGNORE_BYTES + "\n"
    (tmp_path / ".pteroignore").write_text(text)
    (tmp_path / "a.log").write_text("x")
    with pytest.raises(PteroignoreTooLarge, match=r"\.pteroignore is larger than 1048576 bytes"):
        IgnoreRules.for_server(tmp_path)


def test_pteroignore_symlink_to_a_secret_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("*\n")
    root = tmp_path / "root"
    root.mkdir()
    (root / ".pteroignore").symlink_to(secret)
    (root / "world.dat").write_text("x")
    rules = IgnoreRules.for_server(root)
    assert rules.empty
    data, result = archive_bytes(root, rules)
    names = {n.decode() for n in gnu_tar_names(data)}
    assert names == {".pteroignore", "world.dat"}  # the link itself, stored as a link
    assert result.skipped == 0


def test_pteroignore_fifo_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".pteroignore")
    (tmp_path / "world.dat").write_text("x")
    outcome: dict[str, object] = {}

    def run() -> None:
        rules = IgnoreRules.for_server(tmp_path)
        outcome["rules_empty"] = rules.empty
        outcome["result"] = archive_bytes(tmp_path, rules)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)  # a guard against a hang, not a speed requirement
    if worker.is_alive():
        # Unblock the reader (if any) so the thread can end, then fail.
        fd = os.open(tmp_path / ".pteroignore", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        pytest.fail("reading a FIFO .pteroignore blocked")
    assert outcome["rules_empty"] is True
    data, result = outcome["result"]  # type: ignore[misc]
    assert {n.decode() for n in gnu_tar_names(data)} == {"world.dat"}
    assert result.skipped == 1  # the FIFO itself is not archived
