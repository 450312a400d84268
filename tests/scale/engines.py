"""Throw-away engines for the scale tier, each in a temp folder on free ports, stopped by the caller:

- PostgreSQL: Debian's server binaries (`initdb`, `pg_ctl`; `make test` installs the package when they are
  missing), a cluster of its own with a `tollgate` login that needs a password (scram-sha-256 on 127.0.0.1), run
  as the `postgres` user when the suite runs as root (PostgreSQL refuses root).
- An S3-compatible store: moto's server (`moto_server`, the dev dependency `moto[server]`) with one bucket."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tollgate.procs import free_port

PG_USER, PG_PASSWORD = "tollgate", "scale-tier-only"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def pg_binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    assert found, f"PostgreSQL's {name} is missing: `make test` installs Debian's postgresql package (make engines)"
    return found


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass(frozen=True)
class Postgres:
    url: str  # postgresql://tollgate@127.0.0.1:PORT (the password is PG_PASSWORD, given as PGPASSWORD)
    port: int
    folder: Path


@contextmanager
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster in a temp folder on a free port, stopped and removed after the block."""
    folder = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
    folder.chmod(0o755)  # the postgres user reads its data folder and socket from here
    data, pwfile = folder / "data", folder / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    initdb = [pg_binary("initdb"), "-D", str(data), "-U", PG_USER, "--pwfile", str(pwfile)]
    initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-instructions"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True, text=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = pg_binary("pg_ctl")
    start = [pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "postgres.log"), "-w", "-t", "60", "start"]
    started = subprocess.run(_as_postgres(start), capture_output=True, text=True)
    try:
        log = (folder / "postgres.log").read_text() if (folder / "postgres.log").exists() else ""
        assert started.returncode == 0, f"pg_ctl start failed: {started.stderr}\n{log[-2000:]}"
        yield Postgres(f"postgresql://{PG_USER}@127.0.0.1:{port}", port, folder)
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class S3:
    endpoint: str
    bucket: str


@contextmanager
def s3(bucket: str = "tollgate-scale") -> Iterator[S3]:
    """moto's S3-compatible server on a free port with `bucket`, stopped after the block."""
    import boto3

    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **S3_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "moto_server exited"
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto_server did not answer in 60 s"
                time.sleep(0.2)
        boto3.client("s3", endpoint_url=endpoint, **_creds()).create_bucket(Bucket=bucket)
        yield S3(endpoint, bucket)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def s3_keys(store: S3) -> list[str]:
    """Every object key in the bucket."""
    import boto3

    client = boto3.client("s3", endpoint_url=store.endpoint, **_creds())
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys
