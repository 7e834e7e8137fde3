"""Where weights come from: local paths, http(s) URLs and short schemes for well-known files.

Short schemes (``list_sources()`` gives every name):

* ``torchvision://resnet{18,34,50,101,152}``: torchvision's ImageNet weights (``IMAGENET1K_V1``, the
  original training recipe; "pytorch" style, RGB input in [0, 1] normalised with the ImageNet
  mean/std). ``torchvision://resnet{50,101,152}.v2``: the ``IMAGENET1K_V2`` recipe.
* ``msra://R-50``, ``msra://R-101``: MSRA's original Caffe ResNets as published with the Detectron2
  model zoo (Caffe2 blob layout, folded BN -> use ``norm="FrozenBN"``, "msra" style, BGR input
  minus [103.530, 116.280, 123.675], std 1).
* ``detectron2://<path>``: any file of the Detectron2 model zoo,
  ``https://dl.fbaipublicfiles.com/detectron2/<path>``, e.g.
  ``detectron2://COCO-Detection/faster_rcnn_R_50_C4_1x/137257644/model_final_721ade.pkl``.

Checksums: torchvision embeds the first 8 hex digits of each file's sha256 in its name
(``resnet50-0676ba61.pth``) and that prefix is always verified; the full sha256 is verified where it
is known (resnet18 and resnet50 V1: the digest recorded identically by several independent public
projects, with the same file size). The MSRA and Detectron2 files have no published sha256: they
are downloaded unverified and their digest is logged.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from detres.utils.download import download

__all__ = ["list_sources", "resolve", "source_url"]

_TORCHVISION = "https://download.pytorch.org/models/"
_FAIR = "https://dl.fbaipublicfiles.com/detectron2/"

# name -> (URL, full sha256 or None when only the file name's prefix is known)
_SOURCES: Dict[str, Tuple[str, Optional[str]]] = {
    "torchvision://resnet18": (
        _TORCHVISION + "resnet18-f37072fd.pth",
        "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
    ),
    "torchvision://resnet34": (_TORCHVISION + "resnet34-b627a593.pth", None),
    "torchvision://resnet50": (
        _TORCHVISION + "resnet50-0676ba61.pth",
        "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
    ),
    "torchvision://resnet101": (_TORCHVISION + "resnet101-63fe2227.pth", None),
    "torchvision://resnet152": (_TORCHVISION + "resnet152-394f9c45.pth", None),
    "torchvision://resnet50.v2": (_TORCHVISION + "resnet50-11ad3fa6.pth", None),
    "torchvision://resnet101.v2": (_TORCHVISION + "resnet101-cd907fc2.pth", None),
    "torchvision://resnet152.v2": (_TORCHVISION + "resnet152-f82ba261.pth", None),
    "msra://R-50": (_FAIR + "ImageNetPretrained/MSRA/R-50.pkl", None),
    "msra://R-101": (_FAIR + "ImageNetPretrained/MSRA/R-101.pkl", None),
}
_TORCHVISION_HASH_RE = re.compile(r"-([0-9a-f]{8,64})\.pth$")


def list_sources() -> List[str]:
    """All short names (``detectron2://<path>`` is accepted in addition)."""
    return sorted(_SOURCES)


def source_url(spec: str) -> Tuple[str, Optional[str]]:
    """``(url, expected sha256 or sha256 prefix or None)`` of a URL or short scheme."""
    if spec in _SOURCES:
        url, sha = _SOURCES[spec]
    elif spec.startswith("detectron2://"):
        url, sha = _FAIR + spec[len("detectron2://"):].lstrip("/"), None
    elif spec.startswith(("http://", "https://")):
        url, sha = spec, None
    else:
        scheme = spec.split("://", 1)[0]
        known = ", ".join(list_sources())
        raise ValueError(f"unknown weights source {spec!r} (scheme {scheme}://); known short names: {known}, "
                         f"detectron2://<model zoo path>, an http(s) URL or a local file path")
    if sha is None and url.startswith(_TORCHVISION):
        m = _TORCHVISION_HASH_RE.search(url)
        sha = m.group(1) if m else None  # torchvision's file-name convention: a sha256 prefix
    return url, sha


def resolve(spec: Union[str, Path], progress: bool = True) -> Path:
    """The local file for ``spec``: an existing path as is, else a URL / short scheme downloaded
    into (or found in) the cache. A path-like spec that does not exist is an error naming it."""
    text = str(spec)
    if "://" not in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path} (expected a file path, an http(s) URL or one "
                                    f"of {', '.join(list_sources())})")
        return path
    url, sha = source_url(text)
    return download(url, sha256=sha, progress=progress)
