"""A local S3-compatible server for tests: moto's server mode (`moto[server]` from PyPI, the dev
extra) on 127.0.0.1 and a free port, with the environment a run worker needs to reach it
(credentials only in the environment, as in production). moto keeps objects in memory and
answers conditional PUTs (If-None-Match, If-Match) as S3 does, except that it checks the
condition and then stores the object without a lock between the two, so two PUTs with the same
If-Match can both succeed (a lost update S3 never allows: seen once in
tests/store/test_object_store.py under load). So the server here runs moto's application behind
one lock: each request is answered whole before the next, which is S3's atomicity for one key."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dd_assets.testing.workflows import BIN, free_port


@dataclass
class S3Server:
    endpoint: str
    log: Path

    def env(self) -> dict[str, str]:
        """What a process needs to use `s3://` roots on this server (obstore reads these)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def create_bucket(self, name: str | None = None) -> str:
        """A new empty bucket (a fresh one per test keeps tests apart on one server)."""
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=10):
            pass
        return name

    def pending_uploads(self, bucket: str) -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        import xml.etree.ElementTree as ET

        with urllib.request.urlopen(f"{self.endpoint}/{bucket}?uploads", timeout=10) as resp:
            tree = ET.fromstring(resp.read())
        ns = {"s": tree.tag.split("}")[0].strip("{")}
        return [k.text or "" for k in tree.findall("s:Upload/s:Key", ns)]

    def keys(self, bucket: str) -> list[str]:
        """Every key in the bucket (moto's own listing, not the store's)."""
        import xml.etree.ElementTree as ET

        out: list[str] = []
        token = ""
        while True:
            url = f"{self.endpoint}/{bucket}?list-type=2" + (
                f"&continuation-token={urllib.request.quote(token)}" if token else ""
            )
            with urllib.request.urlopen(url, timeout=10) as resp:
                tree = ET.fromstring(resp.read())
            ns = {"s": tree.tag.split("}")[0].strip("{")}
            out += [k.text or "" for k in tree.findall("s:Contents/s:Key", ns)]
            nxt = tree.find("s:NextContinuationToken", ns)
            if nxt is None or not nxt.text:
                return out
            token = nxt.text


@contextlib.contextmanager
def running_s3(tmp: Path) -> Iterator[S3Server]:
    port = free_port()
    log = tmp / "moto.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "python"), "-m", "dd_assets.testing.s3", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "moto_server did not start in 60 s"
                time.sleep(0.1)
        yield S3Server(endpoint, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def serve(port: int) -> None:
    """moto's S3 server (as `moto_server` starts it), one request at a time."""
    import threading

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def one_at_a_time(environ: dict, start_response: Any) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    run_simple(
        "127.0.0.1",
        port,
        one_at_a_time,
        threaded=True,  # connections wait on the lock, not on each other's keep-alive
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    import sys

    serve(int(sys.argv[1]))
