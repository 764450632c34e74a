"""A bounded stand-in for Kaggle's API, for running the real `kaggle` CLI in tests.

The CLI (kaggle 2.x) sends every call as ``POST {endpoint}/api/v1/<Service>/<Method>``
with a JSON body, where ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` makes the endpoint
``http://localhost`` (port 80). File uploads go to the ``createUrl`` that
``StartBlobUpload`` returns, as a ``PUT`` of the raw bytes.

The stub listens on 127.0.0.1:80 when it can bind there; otherwise (port taken or no
privilege) it listens on a free port and the CLI reaches it as its HTTP proxy, which sees
the same requests with absolute URLs. It records every request, answers the few calls
that kernel push and status, dataset create/version and code submissions make, and
stops itself after ``max_requests`` requests or ``deadline_s`` seconds.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

API = "/api/v1/"
USER = "stub-user"


@dataclass
class Recorded:
    """One request the stub received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def call(self) -> str:
        """``Service/Method`` for API calls (e.g. ``kernels.KernelsApiService/SaveKernel``), else the path."""
        return self.path[len(API) :] if self.path.startswith(API) else self.path

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StubKaggle:
    """Context manager: ``with StubKaggle() as stub: run(cli, env=stub.env(tmp))``.

    Attributes:
        existing: dataset refs (``owner/slug``) that GetDatasetStatus reports as ready;
            any other dataset is answered 404 (not found).
        kernel_statuses: what successive GetKernelSessionStatus calls answer (the last
            one repeats), KernelWorkerStatus names: QUEUED, RUNNING, COMPLETE, ERROR, ...
        failure_message: sent with every kernel status (as Kaggle does for ERROR).
        max_requests: the stub answers 503 and shuts down after this many requests.
        deadline_s: the stub shuts down after this many seconds whatever happens.
    """

    existing: set[str] = field(default_factory=set)
    kernel_statuses: list[str] = field(default_factory=lambda: ["COMPLETE"])
    failure_message: str = ""
    max_requests: int = 40
    deadline_s: float = 120.0
    requests: list[Recorded] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    proxy: bool = False
    port: int = 80

    def __enter__(self) -> StubKaggle:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self) -> None:
                path = urlsplit(self.path).path
                record = Recorded(self.command, path, dict(self.headers.items()), self._body())
                with stub._lock:
                    stub.requests.append(record)
                    count = len(stub.requests)
                if count > stub.max_requests:
                    self._send(503, {"code": 503, "message": "stub: request limit reached"})
                    threading.Thread(target=stub._server.shutdown, daemon=True).start()
                    return
                status, payload = stub._route(record)
                self._send(status, payload)

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = do_GET = _answer

        self._lock = threading.Lock()
        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", 80), Handler)
        except OSError:
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.proxy = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.deadline_s, self._server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ----------------------------------------------------------------- routes

    def _route(self, record: Recorded) -> tuple[int, dict[str, Any]]:
        call = record.call
        if record.method == "PUT" and record.path.startswith("/upload/"):
            self.uploads[record.path.rsplit("/", 1)[1]] = record.body
            return 200, {}
        if call == "kernels.KernelsApiService/SaveKernel":
            slug = record.json().get("slug", "")
            return 200, {"ref": f"/code/{slug}", "url": f"http://localhost/code/{slug}", "versionNumber": 1}
        if call == "kernels.KernelsApiService/GetKernelSessionStatus":
            asked = sum(r.call == call for r in self.requests)
            status = self.kernel_statuses[min(asked, len(self.kernel_statuses)) - 1]
            return 200, {"status": status, "failureMessage": self.failure_message}
        if call == "competitions.CompetitionApiService/CreateCodeSubmission":
            return 200, {"message": "Your submission was successfully saved", "ref": 4242}
        if call == "datasets.DatasetApiService/GetDatasetStatus":
            body = record.json()
            ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
            if ref in self.existing:
                return 200, {"status": "ready"}
            return 404, {"code": 404, "message": f"stub: dataset {ref} not found"}
        if call == "blobs.BlobApiService/StartBlobUpload":
            token = f"blob{sum(r.call == call for r in self.requests)}"
            return 200, {"token": token, "createUrl": f"http://localhost/upload/{token}"}
        if call in ("datasets.DatasetApiService/CreateDataset", "datasets.DatasetApiService/CreateDatasetVersion"):
            body = record.json()
            owner = body.get("ownerSlug", USER)
            slug = body.get("slug") or body.get("datasetSlug", "")
            return 200, {"ref": f"{owner}/{slug}", "url": f"http://localhost/datasets/{owner}/{slug}", "status": "ok"}
        return 404, {"code": 404, "message": f"stub: no route for {record.method} {record.path}"}

    # ----------------------------------------------------------------- client side

    def env(self, home: Path) -> dict[str, str]:
        """Environment for a `kaggle` subprocess: this stub, dummy credentials, a private
        HOME/config dir/TMPDIR under ``home``, no other proxy and no real credentials."""
        (home / ".kaggle").mkdir(parents=True, exist_ok=True)
        (home / "tmp").mkdir(exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("KAGGLE_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        env.update(
            KAGGLE_API_ENVIRONMENT="LOCALHOST",
            KAGGLE_USERNAME=USER,
            KAGGLE_KEY="0123456789abcdef0123456789abcdef",
            KAGGLE_CONFIG_DIR=str(home / ".kaggle"),
            HOME=str(home),
            TMPDIR=str(home / "tmp"),
        )
        if self.proxy:
            env["HTTP_PROXY"] = env["http_proxy"] = f"http://127.0.0.1:{self.port}"
        else:
            env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"
        return env

    def calls(self, name: str) -> list[Recorded]:
        """The recorded API calls whose ``Service/Method`` ends with ``name``."""
        return [r for r in self.requests if r.call.endswith(name)]
