"""`compliance-worker status` over real HTTP, against a local server that answers with the shapes the worker's
GET /products/{id} serves (the end-to-end check against a running worker belongs with that endpoint)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from tests.integration.conftest import free_port
from tests.unit.commands.test_status import ANSWER, NOT_FOUND, answer
from worker.commands.status import render

SCRIPT = Path(sys.executable).with_name("compliance-worker")
BUSY = {"product_id": "BUSY", "error": "not available", "reason": "recovering"}
# raw request path -> (status, content type, body)
ROUTES: dict[str, tuple[int, str, bytes]] = {
    "/products/P-1": (200, "application/json", orjson.dumps(ANSWER)),
    "/products/P%2F2": (200, "application/json", orjson.dumps(answer(product_id="P/2", override=None))),
    "/products/P-404": (404, "application/json", orjson.dumps(NOT_FOUND)),
    "/products/BUSY": (503, "application/json", orjson.dumps(BUSY)),
    "/products/SLOW": (200, "application/json", orjson.dumps(answer(product_id="SLOW"))),
}


@dataclass
class Server:
    url: str
    port: int
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, raw path, Accept)
    release: threading.Event = field(default_factory=threading.Event)  # lets /products/SLOW answer at once


@pytest.fixture
def server() -> Iterator[Server]:
    seen = Server("", 0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.requests.append(("GET", self.path, self.headers.get("Accept")))
            if self.path == "/products/SLOW":
                # A slow worker: it answers after 3 s, or once the test is done. A client that waited longer than
                # its --timeout would get this answer and exit 0.
                seen.release.wait(3)
            status, content_type, body = ROUTES.get(self.path, (404, "text/plain", b"404: Not Found"))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    seen.port = httpd.server_address[1]
    seen.url = f"http://127.0.0.1:{seen.port}"
    try:
        yield seen
    finally:
        seen.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def status(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KAFKA_", "WORKER_"))}
    return subprocess.run(
        [str(SCRIPT), "status", *args], env={**env, **settings}, capture_output=True, text=True, timeout=60,
        check=False,
    )


def test_an_answer_is_shown_for_a_person(server: Server) -> None:
    result = status("P-1", "--url", server.url)
    assert (result.returncode, result.stdout, result.stderr) == (0, render(ANSWER) + "\n", "")
    assert server.requests == [("GET", "/products/P-1", "application/json")]


def test_the_default_address_is_worker_web_port_on_this_host_and_the_id_is_encoded(server: Server) -> None:
    result = status("P/2", WORKER_WEB_PORT=str(server.port))
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == "P/2: block"
    assert "  override:      none" in result.stdout.splitlines()
    assert server.requests == [("GET", "/products/P%2F2", "application/json")]


def test_json_is_the_answer_as_served(server: Server) -> None:
    result = status("P-1", "--url", server.url + "/", "--json")
    assert (result.returncode, orjson.loads(result.stdout), result.stderr) == (0, ANSWER, "")


def test_an_unknown_product_is_exit_3(server: Server) -> None:
    result = status("P-404", "--url", server.url)
    assert (result.returncode, result.stdout, result.stderr) == (
        3, f"P-404: unknown product (no worker has decided it; {server.url}/products/P-404)\n", "",
    )


def test_a_worker_that_cannot_answer_now_says_why_with_exit_1(server: Server) -> None:
    result = status("BUSY", "--url", server.url)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"compliance-worker status: BUSY: the worker cannot answer now: recovering (the worker owning its "
               f"partition is still restoring its state) ({server.url}/products/BUSY); try again\n",
    )


def test_a_server_without_the_endpoint_is_not_an_unknown_product(server: Server) -> None:
    result = status("NOPE", "--url", server.url + "/elsewhere")
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr == (
        f"compliance-worker status: {server.url}/elsewhere/products/NOPE answered 404 without a product answer "
        "(404: Not Found): does this worker serve /products/{id}?\n"
    )


def test_nothing_listening_is_one_line_naming_the_url_and_exit_1() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = status("P-1", "--url", url)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"compliance-worker status: cannot reach the worker at {url}/products/P-1: connection refused (is a "
               "worker running there? its port is WORKER_WEB_PORT; or give --url)\n",
    )


def test_a_worker_that_does_not_answer_in_time_is_exit_1(server: Server) -> None:
    result = status("SLOW", "--url", server.url, "--timeout", "0.5")
    server.release.set()
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"compliance-worker status: cannot reach the worker at {server.url}/products/SLOW: no answer within 0.5s\n",
    )
