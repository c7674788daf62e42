"""A backup straight to S3 against the same backup to the local adapter, in one run.

    python -m bench.s3 [--size 300M] [--server nginx] [--no-tls] [--runs 2]

Each backup runs in a child process of its own, so the wall time and the peak RSS (from
``wait4``) are those of the backup alone. The S3 server runs on the same two cores; by default
it is nginx over https, storing every part on disk (bench/nginxs3.py), and the object it holds
is put back together and checked against the backup's SHA-1 after every run. Targets: S3 wall
time <= 1.25 x local, and peak RSS of the S3 backup <= (concurrency + 2) x part_size + 100 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import nginxs3
from bench.dataset import MB, build_dataset, parse_size

MIB = 1024 * 1024
BENCH_DIR = Path(__file__).resolve().parent
SERVER_UUID = "3f0b6a57-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
BUCKET = "wingsbak-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(proc: subprocess.Popen[bytes], port: int, failure: str) -> str:
    """The server's base URL once ``port`` accepts connections; ``failure`` if it never does."""
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(failure)


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


S3RVER_DIR = BENCH_DIR / ".data" / "s3rver"
S3RVER_KEY = "S3RVER"  # s3rver's fixed credentials


def start_s3rver(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """s3rver (npm), a Node S3 server that stores objects on disk: a faster stand-in for a
    real bucket than moto, whose Python request handling caps its ingest rate."""
    exe = S3RVER_DIR / "node_modules" / ".bin" / "s3rver"
    if not exe.exists():
        subprocess.run(
            ["npm", "install", "--silent", "--prefix", str(S3RVER_DIR), "s3rver@3.7.1"],
            check=True,
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            str(exe),
            "-d",
            str(data_dir),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-s",
            "--no-vhost-buckets",
            "--configure-bucket",
            BUCKET,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, wait_for_port(proc, port, "s3rver did not start")


def start_null_s3() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.nulls3", str(port)], cwd=BENCH_DIR.parent)
    return proc, wait_for_port(proc, port, "the null S3 server did not start")


def s3_key() -> str:
    return S3RVER_KEY if os.environ.get("WINGSBAK_BENCH_S3") == "s3rver" else "bench"


def s3_config(args: argparse.Namespace) -> Any:
    """The node's S3 settings for a child backup."""
    from wingsbak.storage.bucket import S3Config

    return S3Config(
        bucket=BUCKET,
        endpoint=args.endpoint,
        access_key_id=s3_key(),
        secret_access_key=s3_key(),
        path_style=True,
        part_size=args.part_size,
        concurrency=args.concurrency,
        payload_signing=args.payload_signing,
    )


def child(args: argparse.Namespace) -> None:
    """One backup, timed from the first byte read to the upload's completion."""
    from wingsbak.archive import archive_to_file
    from wingsbak.log import configure_logging

    configure_logging("warning", json=True)
    if args.child == "local":
        start, cpu = time.perf_counter(), time.process_time()
        result = archive_to_file(args.src, args.out, level=args.level)
    elif args.child == "floor":
        floor(args)
        return
    else:
        from wingsbak.storage.bucket import NodeBucket

        storage = NodeBucket(s3_config(args))
        completed = record_completed_parts(storage.client)
        start, cpu = time.perf_counter(), time.process_time()
        result = storage.upload_backup(str(args.src), SERVER_UUID, args.backup, level=args.level)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    report = {"wall": wall, "cpu": cpu, "size": result.size, "checksum": result.checksum}
    if args.child == "s3":
        report["parts"] = completed
    print(json.dumps(report))


def record_completed_parts(client: Any) -> list[int]:
    """The part numbers the upload's CompleteMultipartUpload names, once it is sent: the
    stand-in nginx does not read that list, so the bench checks it against what it stored."""
    parts: list[int] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        parts.extend(int(p["PartNumber"]) for p in params["MultipartUpload"]["Parts"])

    client.meta.events.register("before-parameter-build.s3.CompleteMultipartUpload", record)
    return parts


def floor(args: argparse.Namespace) -> None:
    """The server's own limit: as many bytes as the archive, from memory, no archiving."""
    from wingsbak.storage.bucket import NodeBucket

    storage = NodeBucket(s3_config(args))
    block = memoryview(os.urandom(16 * MIB))
    start, cpu = time.perf_counter(), time.process_time()
    with storage.open_sink(SERVER_UUID, args.backup) as sink:
        left = args.bytes
        while left:
            n = min(left, MIB)
            sink.write(block[(left % 15) * MIB :][:n])
            left -= n
        sink.complete()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({"wall": wall, "cpu": cpu, "size": args.bytes, "checksum": ""}))


def run_child(kind: str, common: list[str], extra: list[str]) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.s3", "--child", kind, *common, *extra],
        stdout=subprocess.PIPE,
        cwd=BENCH_DIR.parent,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} backup failed (exit {proc.returncode})")
    report = json.loads(out.decode().strip().splitlines()[-1])
    report["maxrss"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return report


def object_sha1(client: Any, key: str) -> str:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    h = hashlib.sha1()
    for chunk in iter(lambda: body.read(MIB), b""):
        h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=300 * MB)
    parser.add_argument("--part-size", type=int, default=5, help="MiB")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--payload-signing",
        choices=("auto", "always", "never"),
        default="auto",
        help="system.backups.s3.payload_signing (auto: sign over plain http only)",
    )
    parser.add_argument("--level", default="best_speed")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument(
        "--server",
        choices=("nginx", "nginx-null", "null", "moto", "s3rver"),
        default="nginx",
        help="the local S3 server: nginx (stores the parts; its object is checked), nginx-null "
        "(the same, discarding the parts), null (bench/nulls3.py, a Python server that "
        "discards), moto (server mode) or s3rver (npm, needs node); the last two take more "
        "of the shared cores than the backup itself",
    )
    parser.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="https with a self-signed certificate (nginx servers only; their default)",
    )
    parser.add_argument("--child", choices=("local", "s3", "floor"))
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--src", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--endpoint")
    parser.add_argument("--backup")
    args = parser.parse_args(argv)
    if args.child:
        args.part_size *= MIB
        child(args)
        return

    import boto3

    src = build_dataset(None, args.size)
    data_bytes = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    for p in src.rglob("*"):  # warm the page cache: both backups then read from memory
        if p.is_file():
            p.read_bytes()
    part_size = args.part_size * MIB
    tls = args.server.startswith("nginx") if args.tls is None else args.tls
    if tls and not args.server.startswith("nginx"):
        raise SystemExit("--tls needs --server nginx or nginx-null")
    (BENCH_DIR / ".data").mkdir(exist_ok=True)
    server_dir = tempfile.TemporaryDirectory(dir=BENCH_DIR / ".data")
    stored: nginxs3.NginxS3 | None = None
    if args.server == "s3rver":
        # Children inherit this and use s3rver's credentials.
        os.environ["WINGSBAK_BENCH_S3"] = "s3rver"
        proc, endpoint = start_s3rver(Path(server_dir.name))
        stop = lambda p=proc: (p.terminate(), p.wait(10))  # noqa: E731
    elif args.server == "null":
        proc, endpoint = start_null_s3()
        stop = lambda p=proc: (p.terminate(), p.wait(10))  # noqa: E731
    elif args.server.startswith("nginx"):
        store = args.server == "nginx"
        nginx = nginxs3.start(Path(server_dir.name), store=store, tls=tls)
        endpoint, stop = nginx.endpoint, nginx.stop
        stored = nginx if store else None
        if nginx.ca_bundle:
            os.environ["AWS_CA_BUNDLE"] = nginx.ca_bundle  # children inherit it
    else:
        proc, endpoint = start_moto()
        stop = lambda p=proc: (p.terminate(), p.wait(10))  # noqa: E731
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=s3_key(),
            aws_secret_access_key=s3_key(),
        )
        if args.server == "moto":
            client.create_bucket(Bucket=BUCKET)

        def check_object(run: dict[str, Any], key: str) -> None:
            """The server must hold the very bytes the backup reported (null ones keep none)."""
            if stored is not None:
                size, sha1, parts = nginxs3.stored_object(stored)
                if (size, sha1) != (run["size"], run["checksum"]):
                    raise SystemExit("the stored object does not match the backup's report")
                if run["parts"] != parts:
                    raise SystemExit(f"completed parts {run['parts']} but stored {parts}")
            elif args.server in ("moto", "s3rver"):
                if object_sha1(client, key) != run["checksum"]:
                    raise SystemExit("the uploaded object does not match its checksum")
                client.delete_object(Bucket=BUCKET, Key=key)  # moto holds it in memory

        common = [
            "--src",
            str(src),
            "--level",
            args.level,
            "--part-size",
            str(args.part_size),
            "--concurrency",
            str(args.concurrency),
            "--payload-signing",
            args.payload_signing,
        ]
        local_runs: list[dict[str, Any]] = []
        s3_runs: list[dict[str, Any]] = []
        floor_runs: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(dir=BENCH_DIR / ".data") as tmp:
            for i in range(args.runs):  # alternate, so that drift hits both alike
                out = Path(tmp) / f"local-{i}.tar.gz"
                local_runs.append(run_child("local", common, ["--out", str(out)]))
                out.unlink()
                Path(f"{out}.sha1").unlink()
                backup = f"00000000-0000-4000-8000-{i:012d}"
                s3_run = run_child("s3", common, ["--endpoint", endpoint, "--backup", backup])
                check_object(s3_run, f"{SERVER_UUID}/{backup}.tar.gz")
                # The archive is deterministic: both adapters must have written the same bytes.
                if s3_run["checksum"] != local_runs[-1]["checksum"]:
                    raise SystemExit("the S3 and local backups of the same tree differ")
                s3_runs.append(s3_run)
                backup = f"00000000-0000-4000-9000-{i:012d}"
                floor_args = ["--endpoint", endpoint, "--backup", backup]
                floor_args += ["--bytes", str(s3_run["size"])]
                floor_runs.append(run_child("floor", common, floor_args))
                if stored is not None and nginxs3.stored_object(stored)[0] != s3_run["size"]:
                    raise SystemExit("the floor upload was not stored whole")
                elif args.server in ("moto", "s3rver"):
                    client.delete_object(Bucket=BUCKET, Key=f"{SERVER_UUID}/{backup}.tar.gz")
    finally:
        stop()
        server_dir.cleanup()

    local = min(local_runs, key=lambda r: r["wall"])
    s3 = min(s3_runs, key=lambda r: r["wall"])
    bare = min(floor_runs, key=lambda r: r["wall"])
    ratio = s3["wall"] / local["wall"]
    rss_target = (args.concurrency + 2) * part_size + 100 * MIB
    print(f"data set: {src} ({data_bytes / MB:.0f} MB), level {args.level}, best of {args.runs}")
    from wingsbak.storage.bucket import S3Config, signs_payload

    signed = signs_payload(S3Config(endpoint=endpoint, payload_signing=args.payload_signing))
    signing = "signed (SHA-256 of each part)" if signed else "unsigned"
    print(f"S3 server: {args.server} at {endpoint}; parts {signing}")
    if args.server in ("null", "nginx-null"):
        print("  (not verified: this server keeps nothing; --server nginx checks the object)")
    print(f"archive: {s3['size'] / MB:.0f} MB, {math.ceil(s3['size'] / part_size)} parts")
    print(f"{'':18}{'wall s':>8}{'CPU s':>7}{'MB/s in':>9}{'peak RSS MiB':>14}")
    for name, r in (("local adapter", local), (f"s3 ({args.server})", s3)):
        rate = data_bytes / MB / r["wall"]
        line = f"{name:18}{r['wall']:8.2f}{r['cpu']:7.2f}{rate:9.0f}{r['maxrss'] / MIB:14.1f}"
        print(line)
    r = bare
    name = args.server + " floor"
    print(f"{name:18}{r['wall']:8.2f}{r['cpu']:7.2f}{'':>9}{r['maxrss'] / MIB:14.1f}")
    print(
        "  (floor: the same number of bytes uploaded from memory with no archiving, "
        "i.e. what the S3 server itself allows)"
    )
    verdict = "ok" if ratio <= 1.25 else "over target"
    print(f"s3 / local wall time: {ratio:.2f}x (target <= 1.25x: {verdict})")
    median = statistics.median(r["wall"] for r in s3_runs)
    median /= statistics.median(r["wall"] for r in local_runs)
    print(f"  (median of {args.runs} runs each: {median:.2f}x)")
    print(
        f"s3 / {args.server} floor: {s3['wall'] / bare['wall']:.2f}x "
        "(what archiving adds on top of the server's own limit)"
    )
    rss_ok = "ok" if s3["maxrss"] <= rss_target else "over target"
    print(
        f"s3 peak RSS: {s3['maxrss'] / MIB:.1f} MiB (target <= ({args.concurrency} + 2) x "
        f"{args.part_size} MiB + 100 MiB = {rss_target / MIB:.0f} MiB: {rss_ok})"
    )


if __name__ == "__main__":
    main()
