"""Download files into the detres cache, verified and written atomically.

* Cache root: ``$DETRES_CACHE`` or ``~/.cache/detres``. A URL ``https://host/a/b.pkl`` is cached at
  ``<root>/host/a/b.pkl``; a file already there is used without any network access (and checked
  against the expected hash when one is given), so a file can be placed there by hand when the
  machine is offline.
* The transfer is streamed into a temporary file next to the final path and moved into place with
  ``os.replace`` only after its length and sha256 check out: an interrupted or corrupt transfer
  never leaves a file at the final path.
* ``sha256`` may be a full 64-digit hex digest or a prefix of one (torchvision's file names embed
  the first 8 digits of their sha256, which is all that is published for most of them).
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional, Union

from detres.utils.file_io import atomic_write

__all__ = ["ChecksumError", "DownloadError", "cache_dir", "cached_path_for", "download", "sha256_file"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_PROGRESS_MIN_BYTES = 4 << 20  # show a progress bar above this size


class DownloadError(OSError):
    """A file could not be fetched; the message names the URL and where to place the file by hand."""


class ChecksumError(ValueError):
    """A downloaded or cached file does not have the expected sha256."""


def cache_dir() -> Path:
    """The cache root: ``$DETRES_CACHE`` if set, else ``~/.cache/detres``."""
    return Path(os.environ.get("DETRES_CACHE") or Path.home() / ".cache" / "detres").expanduser()


def cached_path_for(url: str, root: Optional[Union[str, Path]] = None) -> Path:
    """Where ``url`` is (or would be) cached: ``<root>/<host>/<path of the url>``."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    parts = [p for p in urllib.parse.unquote(parsed.path).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"URL {url!r} does not name a file")
    host = parsed.netloc.replace(":", "_")
    base = Path(root).expanduser() if root else cache_dir()
    return base.joinpath(host, *parts)


def sha256_file(path: Union[str, Path]) -> str:
    """Hex sha256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_hash(digest: str, expected: Optional[str], what: str) -> None:
    if expected and not digest.startswith(expected.lower()):
        kind = "sha256" if len(expected) == 64 else f"sha256 prefix ({len(expected)} hex digits)"
        raise ChecksumError(f"{what}: expected {kind} {expected.lower()}, got sha256 {digest}")


def download(
    url: str,
    sha256: Optional[str] = None,
    root: Optional[Union[str, Path]] = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return the local path of ``url``, downloading it into the cache first if needed.

    Args:
        url: http(s) URL of the file.
        sha256: expected sha256 hex digest, or a prefix of it; ``None`` skips verification (the
            computed digest is logged so that it can be pinned).
        root: cache root (default :func:`cache_dir`).
        progress: show a progress bar for files above 4 MiB.
        timeout: socket timeout in seconds.

    Raises:
        DownloadError: the server is unreachable, answers with an error, or the transfer is cut
            short; the message names the URL and the path where the file can be placed by hand.
        ChecksumError: the file's sha256 differs from ``sha256`` (a downloaded file is discarded).
    """
    target = cached_path_for(url, root)
    if target.is_file():
        _check_hash(sha256_file(target), sha256, f"cached file {target} (from {url}); delete it to download again")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fetched = {}

    def fetch_and_check(out) -> None:  # raising here leaves no file behind
        fetched["digest"] = _fetch(url, out, progress, timeout, target)
        _check_hash(fetched["digest"], sha256, f"download of {url} (the file was discarded)")

    atomic_write(str(target), fetch_and_check, suffix=".part")
    digest = fetched["digest"]
    if not sha256:
        logger.info("downloaded %s to %s (sha256 %s, not verified: no known hash)", url, target, digest)
    else:
        kind = "sha256" if len(sha256) == 64 else "its sha256 prefix"
        logger.info("downloaded %s to %s (sha256 %s, verified against %s)", url, target, digest, kind)
    return target


def _fetch(url: str, out, progress: bool, timeout: float, target: Path) -> str:
    """Stream ``url`` into the open file ``out``; return the sha256 of what was written."""
    manual = f"To use it offline, fetch the file elsewhere and place it at: {target}"
    opener = urllib.request.build_opener()  # fresh proxy settings from the environment
    request = urllib.request.Request(url, headers={"User-Agent": "detres"})
    h = hashlib.sha256()
    received = 0
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            bar = _progress_bar(total, url, progress)
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {url}: server answered HTTP {e.code} {e.reason}. {manual}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(
            f"cannot download {url}: {reason} (offline or server unreachable; {received} bytes received). {manual}"
        ) from e
    if total is not None and received != total:
        raise DownloadError(f"cannot download {url}: transfer interrupted after {received} of {total} bytes. {manual}")
    return h.hexdigest()


def _progress_bar(total: Optional[int], url: str, enabled: bool):
    if not enabled or (total is not None and total < _PROGRESS_MIN_BYTES):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=url.rsplit("/", 1)[-1])
