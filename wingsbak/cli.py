"""Command line: ``wingsbak serve``, ``wingsbak archive``, ``wingsbak restore``,
``wingsbak verify``, ``wingsbak ls`` and ``wingsbak cat``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

# Nothing heavy is imported before main() runs: a SIGHUP (``systemctl reload``) arriving while
# the interpreter still imports would end the daemon (see Hangups).
from wingsbak import __version__

if TYPE_CHECKING:
    from wingsbak.config import Config

EXIT_ERROR = 1
EXIT_USAGE = 2


class Hangups:
    """SIGHUPs noted from main()'s first instruction until the daemon handles them itself.

    SIGHUP's default action ends the process, and systemd counts that as a clean exit that
    needs no restart: a ``systemctl reload`` right after a start left the node's URL down.
    ``serve`` applies a noted reload once it is up; any other command gets the signal's
    default action back (and a noted SIGHUP again)."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: Any = None
        self._installed = False

    def install(self) -> None:
        try:
            self._previous = signal.signal(signal.SIGHUP, self._note)
        except ValueError:  # main() called off the main thread: signals are not its own
            return
        self._installed = True

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def take(self) -> int:
        """The SIGHUPs noted since the last call."""
        count, self.count = self.count, 0
        return count

    def release(self) -> None:
        """Back to what SIGHUP did before, delivering one that was noted meanwhile."""
        if not self._installed:
            return
        self._installed = False
        signal.signal(signal.SIGHUP, self._previous)
        if self.take():
            os.kill(os.getpid(), signal.SIGHUP)


class ProgressBar:
    """One self-rewriting line on stderr, shown only when stderr is a terminal."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty()
        self.start = time.monotonic()

    def __call__(self, p: object) -> None:
        if not self.enabled:
            return
        done = getattr(p, "bytes_read", 0)
        total = getattr(p, "bytes_total", 0)
        files = getattr(p, "files", 0)
        rate = done / max(time.monotonic() - self.start, 1e-6) / 1e6
        if total:
            pct = min(100.0, 100.0 * done / total)
            bar = "#" * int(pct / 4)
            text = f"{self.label} [{bar:<25}] {pct:5.1f}% {done / 1e6:,.0f}/{total / 1e6:,.0f} MB"
        else:
            text = f"{self.label} {done / 1e6:,.0f} MB"
        sys.stderr.write(f"\r{text} {files} files {rate:,.0f} MB/s\x1b[K")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _own_output_lines(src: Path, output: Path) -> list[str]:
    """Ignore lines for the archive being written, its temporary file and its sidecar, when
    they are inside ``src``: the archive must not contain itself (GNU tar skips it too)."""
    try:
        rel = output.absolute().resolve().relative_to(src.resolve())
    except ValueError:
        return []
    parent = "/".join(_escape_glob(p) for p in rel.parent.parts)
    base = f"/{parent}/" if parent else "/"
    name = _escape_glob(rel.name)
    return [
        f"{base}{name}",
        f"{base}{name}.sha1",
        f"{base}{name}.sha256",
        f"{base}.{name}.*.part",
        f"{base}{name}.index",
        f"{base}.{name}.index.*.part",
    ]


def _escape_glob(part: str) -> str:
    return "".join("\\" + c if c in "*?[]\\!# " else c for c in part)


def _cmd_archive(args: argparse.Namespace) -> int:
    from wingsbak.archive import IgnoreRules, archive_to_file
    from wingsbak.archive.rules import PteroignoreTooLarge, read_pteroignore

    src = Path(args.src)
    if not src.is_dir():
        raise SystemExit(f"wingsbak: {src} is not a directory")
    # The operator named it: a symlink is followed here, as `tar -C LINK .` does (the engine
    # refuses a symlinked root, which on a node is a server's doing).
    src = src.resolve()
    out_dir = Path(args.output).absolute().parent
    if not out_dir.is_dir():
        raise SystemExit(f"wingsbak: the output directory {out_dir} does not exist")
    request_lines: list[str] = list(args.ignore or [])
    if args.ignore_file:
        request_lines.extend(Path(args.ignore_file).read_text(encoding="utf-8").splitlines())
    request_lines.extend(_own_output_lines(src, Path(args.output)))
    try:
        pteroignore = read_pteroignore(src)
    except PteroignoreTooLarge as exc:
        raise SystemExit(f"wingsbak: {src}/{exc}") from None
    rules = IgnoreRules.from_text(pteroignore, "\n".join(request_lines))
    bar = ProgressBar("archive") if sys.stderr.isatty() else None
    started = time.monotonic()
    try:
        result = archive_to_file(
            src,
            args.output,
            rules,
            level=args.level,
            checksum=args.checksum,
            write_limit=args.write_limit,
            progress=bar,
            allow_unreadable=args.allow_skipped,
            index=args.index,
        )
    finally:
        if bar is not None:
            bar.finish()
    print(
        json.dumps(
            {
                "path": str(Path(args.output).absolute()),
                "size": result.size,
                "checksum": result.checksum,
                "checksum_type": result.checksum_type,
                "files": result.files,
                "skipped": result.unreadable,
                "seconds": round(time.monotonic() - started, 3),
            }
        )
    )
    return 0


def node_stores(cfg: Any) -> list[Any]:
    """The stores the configuration names, as the daemon builds them, without their
    start-up checks (a command, not the daemon: nothing waits for them)."""
    from wingsbak.panel import PanelClient
    from wingsbak.storage.backupdir import BackupDirectory
    from wingsbak.storage.restic import ResticStore
    from wingsbak.storage.select import Stores

    panel = PanelClient(cfg.remote, cfg.token_id, cfg.token)
    stores = Stores.from_config(cfg, BackupDirectory(cfg.backup_dir), panel)
    restic = stores.find(ResticStore)
    if restic is not None:
        restic.checked.set()
    return stores.all


def _open_backup(target: str, config_path: str | None) -> Any:
    """The view of BACKUP: the path of an archive file, or a backup uuid looked up in the
    configured stores (as ``verify`` finds one)."""
    from wingsbak.browse import catalog
    from wingsbak.browse.tarview import open_local_archive

    if Path(target).is_file():
        return open_local_archive(Path(target))
    from wingsbak.verify.command import _UUID

    if not _UUID.match(target):
        raise SystemExit(f"wingsbak: {target} is neither a file nor a backup uuid")
    from wingsbak.daemon import resolve_config

    found = catalog.Catalog(node_stores(resolve_config(config_path)))
    folder = found.find(target)
    if folder is None:
        raise SystemExit(f"wingsbak: no backup {target} on this node's stores")
    return found.view(folder)


def _backup_path(path: str) -> str:
    from wingsbak.browse.model import clean_path

    clean = clean_path(path.lstrip("/"))
    if clean is None:
        raise SystemExit(f"wingsbak: {path}: not a path inside the backup")
    return clean


def _cmd_ls(args: argparse.Namespace) -> int:
    from wingsbak.browse.model import NotFound
    from wingsbak.wings.browse import go_mode

    view = _open_backup(args.backup, args.config)
    path = _backup_path(args.path)
    try:
        entry = view.stat(path)
        entries = view.listdir(path) if entry.kind == "dir" else [entry]
    except NotFound:
        raise SystemExit(f"wingsbak: {args.path}: not in the backup") from None
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime))
        link = f" -> {e.linkname}" if e.kind == "symlink" else ""
        name = e.path + ("/" if e.kind == "dir" else "")
        print(f"{go_mode(e.kind, e.mode)} {e.size:>12} {when} {name}{link}")
    return 0


def _cmd_cat(args: argparse.Namespace) -> int:
    from wingsbak.browse.model import NotFound

    view = _open_backup(args.backup, args.config)
    try:
        with view.open(_backup_path(args.path)) as src:
            while data := src.read(1024 * 1024):
                sys.stdout.buffer.write(data)
    except NotFound:
        raise SystemExit(f"wingsbak: {args.path}: not in the backup") from None
    except IsADirectoryError:
        raise SystemExit(f"wingsbak: {args.path}: not a file (a folder or a link)") from None
    sys.stdout.buffer.flush()
    return 0


def _pending_temps(config_path: str | None) -> Any:
    """This run's record of its temporaries, beside the daemon's in the backup directory, so
    that the next start of either removes what a kill of this one left; None (said on
    stderr) where that directory cannot be written."""
    from wingsbak.browse.restore import PendingTemps, recover_left
    from wingsbak.daemon import resolve_config

    directory = resolve_config(config_path).backup_dir
    try:
        recover_left(directory)
        return PendingTemps.of_this_process(directory)
    except OSError as exc:
        print(
            f"wingsbak: {directory}: {exc.strerror}; a kill of this run would leave its "
            "temporaries (.wingsbak-part-*) where it writes",
            file=sys.stderr,
        )
        return None


def _restore_only(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from wingsbak.archive.extract import open_server_root
    from wingsbak.browse.model import NotFound
    from wingsbak.browse.restore import restore_path

    if args.truncate:
        raise SystemExit("wingsbak: --only restores single paths; --truncate does not apply")
    view = _open_backup(args.archive, args.config)
    os.close(open_server_root(args.dest))  # created when missing, refused when a symlink
    pending = _pending_temps(args.config)
    restored = []
    try:
        for only in args.only:
            path = _backup_path(only)
            if not path:
                raise SystemExit("wingsbak: --only needs a path inside the backup")
            try:
                done = restore_path(
                    view, path, args.dest, path.split("/"), owner=None, pending=pending
                )
            except NotFound:
                raise SystemExit(f"wingsbak: {only}: not in the backup") from None
            restored.append({"path": path, **asdict(done)})
    finally:
        if pending is not None:
            pending.forget()
    print(json.dumps({"dest": str(Path(args.dest).absolute()), "restored": restored}))
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from wingsbak.archive.extract import restore_archive_file

    if args.only:
        return _restore_only(args)

    bar = ProgressBar("restore") if sys.stderr.isatty() else None
    started = time.monotonic()
    try:
        result = restore_archive_file(args.archive, args.dest, truncate=args.truncate, progress=bar)
    finally:
        if bar is not None:
            bar.finish()
    out: dict[str, object] = {"dest": str(Path(args.dest).absolute())}
    out.update(asdict(result))
    out["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(out))
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from wingsbak.verify.command import run_verify

    def config() -> Config:
        from wingsbak.daemon import resolve_config  # only when the stores are needed

        return resolve_config(args.config)

    return run_verify(args.backup, config=config, read_limit=args.read_limit)


def _cmd_serve(args: argparse.Namespace, hangups: Hangups) -> int:
    from wingsbak.daemon import serve

    return serve(args.config, hangups=hangups)


def build_parser() -> argparse.ArgumentParser:
    from wingsbak.archive.codecs import GZIP
    from wingsbak.formats import BEST_SPEED, CHECKSUM_TYPES, COMPRESSION_LEVELS

    parser = argparse.ArgumentParser(
        prog="wingsbak", description="Backup engine for game-server nodes (Wings-compatible)."
    )
    parser.add_argument("--version", action="version", version=f"wingsbak {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node daemon")
    serve.add_argument(
        "--config",
        default=None,
        help="YAML configuration (default: $WINGSBAK_CONFIG, then the first of "
        "/etc/wingsbak/config.yml, /etc/pterodactyl/config.yml and /etc/pelican/config.yml, "
        "then an embedded configuration under ./wingsbak-data)",
    )
    serve.set_defaults(func=_cmd_serve)

    arch = sub.add_parser("archive", help=f"write a {GZIP.suffix} of a directory, as a backup does")
    arch.add_argument("src", help="directory to archive (its .pteroignore applies)")
    arch.add_argument("-o", "--output", required=True, help=f"archive to write (OUT{GZIP.suffix})")
    arch.add_argument("--ignore", action="append", metavar="PATTERN", help="an ignore line")
    arch.add_argument("--ignore-file", metavar="FILE", help="a file of ignore lines")
    arch.add_argument("--level", choices=COMPRESSION_LEVELS, default=BEST_SPEED)
    arch.add_argument("--write-limit", type=float, default=0, metavar="MIBPS")
    arch.add_argument("--checksum", choices=CHECKSUM_TYPES, default="sha1")
    arch.add_argument(
        "--allow-skipped",
        action="store_true",
        help="leave out entries that cannot be read (default: fail), as allow_skipped does",
    )
    arch.add_argument(
        "--index", action="store_true", help="write the archive's index beside it (OUT.index)"
    )
    arch.set_defaults(func=_cmd_archive)

    rest = sub.add_parser("restore", help="extract a backup archive into a directory, safely")
    rest.add_argument("archive")
    rest.add_argument("dest")
    rest.add_argument(
        "--truncate",
        action="store_true",
        help="replace DEST's contents (swapped in only once the whole archive is verified)",
    )
    rest.add_argument(
        "--only",
        nargs="+",
        metavar="PATH",
        help="restore only these paths of the backup (a file, a link or a folder), each to "
        "the same path under DEST, replacing it; ARCHIVE may then be a backup uuid",
    )
    rest.add_argument("--config", default=None, help="as for serve (for a backup uuid)")
    rest.set_defaults(func=_cmd_restore)

    for name, what in (("ls", "list a folder of a backup"), ("cat", "write a file of a backup")):
        cmd = sub.add_parser(name, help=what)
        cmd.add_argument(
            "backup", help=f"a backup uuid (looked up in the configured stores) or a {GZIP.suffix}"
        )
        if name == "ls":
            cmd.add_argument("path", nargs="?", default="", help="a folder in it (default: /)")
        else:
            cmd.add_argument("path", help="a file in it")
        cmd.add_argument("--config", default=None, help="as for serve")
        cmd.set_defaults(func=_cmd_ls if name == "ls" else _cmd_cat)

    ver = sub.add_parser(
        "verify",
        help="check stored backups whole: gzip CRCs, tar structure, recorded checksum",
        description="Exit status: 0 all sound, 1 a corrupt backup, 2 bad arguments or no "
        "such backup, 3 some could not be checked.",
    )
    ver.add_argument(
        "backup",
        nargs="?",
        help=f"a backup uuid (looked up in the configured stores) or the path of a {GZIP.suffix}; "
        "none: every backup of the node",
    )
    ver.add_argument("--config", default=None, help="as for serve")
    ver.add_argument("--read-limit", type=float, default=0, metavar="MIBPS")
    ver.set_defaults(func=_cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    hangups = Hangups()
    hangups.install()
    from wingsbak.log import configure_logging

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version, a usage error
        hangups.release()
        raise
    if args.command != "serve":
        hangups.release()
    configure_logging(os.environ.get("WINGSBAK_LOG_LEVEL", "info"))
    try:
        if args.func is _cmd_serve:
            return _cmd_serve(args, hangups)
        return int(args.func(args))
    except KeyboardInterrupt:
        print("wingsbak: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # one line for the operator, no traceback
        message = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        filename = getattr(exc, "filename", None)
        if filename:
            message = f"{filename}: {message}"
        print(f"wingsbak: {message}", file=sys.stderr)
        return EXIT_ERROR
