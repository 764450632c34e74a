"""kernel_lib.training.download: initial weights by URL or model-zoo name, against a server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_lib.__main__ import main
from kernel_lib.training.download import OFFLINE_FIX, fetch_weights, is_remote, parse_spec

PAYLOAD = b"weights " * 4096  # 32 KiB
PIN = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving tmp_path/www (model.pkl); yields (base URL, paths asked for)."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "model.pkl").write_bytes(PAYLOAD)
    asked: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(www), **kw)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            asked.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", asked
    finally:
        httpd.shutdown()
        httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the block ends: nothing listens there


def test_a_pinned_download_is_checked_and_kept(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, asked = server
    got = fetch_weights(f"{base}/model.pkl#sha256={PIN}", tmp_path / "cache", progress=False)
    assert got.path == tmp_path / "cache" / "model.pkl" and got.path.read_bytes() == PAYLOAD
    assert (got.url, got.sha256) == (f"{base}/model.pkl", PIN)
    again = fetch_weights(f"{base}/model.pkl#sha256={PIN}", tmp_path / "cache", progress=False)
    assert again == got and asked == ["/model.pkl"]  # the cached file matched its pin: not fetched again
    unpinned = fetch_weights(f"{base}/model.pkl", tmp_path / "other", progress=False)
    assert unpinned.sha256 == PIN  # recorded, to pin next time
    assert not list((tmp_path / "cache").glob("*.part"))


def test_a_wrong_checksum_or_a_missing_file_stops_and_leaves_nothing(
    server: tuple[str, list[str]], tmp_path: Path
) -> None:
    base, _ = server
    with pytest.raises(ValueError, match="not the pinned 0000"):
        fetch_weights(f"{base}/model.pkl#sha256={'0' * 64}", tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match="answered 404"):
        fetch_weights(f"{base}/nope.pkl", tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_fails_at_once_saying_how_to_attach_the_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot download") as err:
        fetch_weights(f"http://127.0.0.1:{_closed_port()}/model.pkl", tmp_path, progress=False)
    assert OFFLINE_FIX in str(err.value)


def test_specs_zoo_names_and_fragments() -> None:
    url, pin = parse_spec("zoo:COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert url.endswith("/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl")
    assert pin == ""
    assert parse_spec(f"https://x.org/a.pkl#sha256={PIN.upper()}") == ("https://x.org/a.pkl", PIN)
    with pytest.raises(ValueError, match="sha256=<64 hex digits>"):
        parse_spec("https://x.org/a.pkl#md5=abc")
    with pytest.raises(ValueError, match="no checkpoint of that name"):
        parse_spec("zoo:COCO-InstanceSegmentation/no_such_model.yaml")
    with pytest.raises(ValueError, match="names no file"):
        parse_spec("https://x.org/")
    assert is_remote("zoo:a") and is_remote("https://a/b.pkl") and not is_remote("weights/http.pkl")


def test_train_without_network_stops_before_writing_anything(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["folds", "--truth", str(data_dir / "train.csv"), "--out", str(tmp_path / "folds.csv")]) == 0
    url = f"http://127.0.0.1:{_closed_port()}/model_final_f10217.pkl"
    args = ["train", "--data", str(data_dir), "--folds", str(tmp_path / "folds.csv"), "--fold", "0"]
    assert main([*args, "--out", str(tmp_path / "models"), "--init-weights", url, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot download" in err and "/kaggle/input/" in err and "Traceback" not in err
    assert not (tmp_path / "models").exists()
