"""detres.utils.download against a local HTTP server on 127.0.0.1 (no internet needed)."""
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from detres.utils import download as dl
from detres.utils.download import ChecksumError, DownloadError, cache_dir, cached_path_for, download

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "/cut/..." files stop half way: the connection closes before Content-Length bytes arrive.
        self.wfile.write(body[: len(body) // 2] if self.path.startswith("/cut/") else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """A threaded HTTP server on a free port; shut down after the test, or after 600 s at the latest
    (a net against hangs, not a time limit on the test)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(600.0, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def _leftovers(directory):
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_download_success_then_cache_hit(server, tmp_path):
    httpd, base = server
    httpd.files["/models/w-1.pth"] = PAYLOAD
    url = base + "/models/w-1.pth"
    path = download(url, sha256=SHA, root=tmp_path, progress=False)
    host = f"127.0.0.1_{httpd.server_address[1]}"
    assert path == cached_path_for(url, tmp_path) == tmp_path / host / "models" / "w-1.pth"
    assert path.read_bytes() == PAYLOAD
    assert httpd.requests == ["/models/w-1.pth"]
    again = download(url, sha256=SHA, root=tmp_path, progress=False)
    assert again == path and httpd.requests == ["/models/w-1.pth"]  # no second request
    assert _leftovers(path.parent) == ["w-1.pth"]


def test_sha256_prefix_is_verified(server, tmp_path):
    httpd, base = server
    httpd.files["/resnet-x.pth"] = PAYLOAD
    assert download(base + "/resnet-x.pth", sha256=SHA[:8], root=tmp_path, progress=False).is_file()
    bad_prefix = ("0" if SHA[0] != "0" else "1") + SHA[1:8]
    with pytest.raises(ChecksumError, match=f"sha256 prefix .*{bad_prefix}"):
        download(base + "/resnet-x.pth", sha256=bad_prefix, root=tmp_path / "other", progress=False)


def test_checksum_mismatch_discards_file(server, tmp_path):
    httpd, base = server
    httpd.files["/w.pkl"] = PAYLOAD
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumError) as info:
        download(base + "/w.pkl", sha256=wrong, root=tmp_path, progress=False)
    msg = str(info.value)
    assert wrong in msg and SHA in msg and base + "/w.pkl" in msg and "discarded" in msg
    target = cached_path_for(base + "/w.pkl", tmp_path)
    assert not target.exists() and _leftovers(target.parent) == []


def test_cached_file_with_wrong_hash_is_reported(tmp_path):
    url = "https://example.invalid/models/resnet-abcdef12.pth"
    target = cached_path_for(url, tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"placed by hand, wrong file")
    with pytest.raises(ChecksumError, match=str(target)):
        download(url, sha256="abcdef12", root=tmp_path, progress=False)


def test_http_404_names_url_and_manual_path(server, tmp_path):
    _, base = server
    url = base + "/missing/R-50.pkl"
    with pytest.raises(DownloadError) as info:
        download(url, root=tmp_path, progress=False)
    msg = str(info.value)
    assert url in msg and "404" in msg and str(cached_path_for(url, tmp_path)) in msg
    assert _leftovers(tmp_path) == []


def test_connection_refused_names_url_and_manual_path(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/R-101.pkl"
    with pytest.raises(DownloadError) as info:
        download(url, root=tmp_path, progress=False, timeout=5)
    msg = str(info.value)
    assert url in msg and "refused" in msg.lower() and str(cached_path_for(url, tmp_path)) in msg
    assert _leftovers(tmp_path) == []


def test_interrupted_transfer_leaves_no_file(server, tmp_path):
    httpd, base = server
    httpd.files["/cut/big.pth"] = PAYLOAD
    url = base + "/cut/big.pth"
    with pytest.raises(DownloadError, match="big.pth") as info:
        download(url, root=tmp_path, progress=False)
    assert str(cached_path_for(url, tmp_path)) in str(info.value)
    assert not cached_path_for(url, tmp_path).exists()
    assert _leftovers(tmp_path) == []  # the partial .part file was removed


def test_abort_mid_transfer_leaves_no_file(server, tmp_path, monkeypatch):
    """Ctrl-C while writing: the temp file goes, nothing appears at the final path."""
    httpd, base = server
    httpd.files["/w.pth"] = PAYLOAD

    class _AbortingBar:
        def update(self, n):
            raise KeyboardInterrupt

        def close(self):
            pass

    monkeypatch.setattr(dl, "_progress_bar", lambda total, url, enabled: _AbortingBar())
    with pytest.raises(KeyboardInterrupt):
        download(base + "/w.pth", root=tmp_path)
    assert _leftovers(tmp_path) == []


def test_progress_bar_for_large_files(server, tmp_path, capsys):
    httpd, base = server
    big = PAYLOAD * 5  # 5 MiB: above the 4 MiB threshold
    httpd.files["/big.pkl"] = big
    download(base + "/big.pkl", root=tmp_path, progress=True)
    assert "big.pkl" in capsys.readouterr().err
    download(base + "/big.pkl", root=tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert cached_path_for("https://h.org/a/b.pkl?dl=1") == tmp_path / "c" / "h.org" / "a" / "b.pkl"
    monkeypatch.delenv("DETRES_CACHE")
    assert str(cache_dir()).endswith(".cache/detres")
    with pytest.raises(ValueError, match="http"):
        cached_path_for("ftp://h.org/a.pkl")
    with pytest.raises(ValueError, match="does not name a file"):
        cached_path_for("https://h.org/../")


def test_load_weights_from_url_uses_cache(server, tmp_path, monkeypatch):
    """``load_weights(module, url)``: downloaded once into $DETRES_CACHE, converted, loaded."""
    import torch

    from detres.modeling.backbone import create_backbone
    from detres.modeling.weight_import import load_weights

    httpd, base = server
    torch.manual_seed(0)
    source = create_backbone("cifar_resnet20", out_features=["linear"])
    buf = tmp_path / "src.pth"
    torch.save({"model": source.state_dict(), "iteration": 10}, buf)
    httpd.files["/ckpt/model_final.pth"] = buf.read_bytes()
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path / "cache"))
    for _ in range(2):
        target = create_backbone("cifar_resnet20", out_features=["linear"])
        report = load_weights(target, base + "/ckpt/model_final.pth", strict=True)
        assert report.ok and report.path.startswith(str(tmp_path / "cache"))
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert httpd.requests == ["/ckpt/model_final.pth"]
