"""The mock provider drops a request whose client hung up, as vLLM does: a SIGKILLed run
worker's requests must not stay "in flight" and look like a breach of max_parallel_requests."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

from dd_assets.testing.mock_openai import MockOpenAI


def test_a_request_whose_client_hung_up_is_no_longer_in_flight() -> None:
    with MockOpenAI(latency_s=5.0) as mock:
        host, port = mock.url.split("//")[1].split("/")[0].split(":")
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            deadline = time.monotonic() + 3
            while mock.current == 0:
                assert time.monotonic() < deadline, "the request never arrived"
                time.sleep(0.01)
        deadline = time.monotonic() + 2  # well before the 5 s answer
        while mock.current:
            assert time.monotonic() < deadline, "a request without a client stayed in flight"
            time.sleep(0.01)
        assert mock.peak_concurrency == 1


def test_a_held_mock_answers_only_once_released() -> None:
    """`hold` is what makes the scale-out test's runs overlap whatever the machine's load: a
    request must wait for as long as it is set, and be answered once it is cleared."""
    with MockOpenAI() as mock:
        mock.hold = True
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        got: list[int] = []

        def ask() -> None:
            req = urllib.request.Request(
                f"{mock.url}/chat/completions",
                data=body.encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                got.append(resp.status)

        t = threading.Thread(target=ask)
        t.start()
        time.sleep(0.5)
        assert mock.current == 1 and not got, "a held request was answered"
        mock.hold = False
        t.join(5)
        assert got == [200] and mock.current == 0
