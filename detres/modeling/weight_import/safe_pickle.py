"""Read ``.pkl`` checkpoints without executing code: a restricted unpickler.

Model-zoo ``.pkl`` files (MSRA/Caffe2 blobs, Detectron2) are plain pickles of dicts of numpy
arrays. Unpickling runs whatever callables a file names, so only these are admitted:

* numpy arrays and dtypes: ``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct`` and ``scalar`` from
  ``numpy.core.multiarray`` (numpy 1.x and Python 2 files) or ``numpy._core.multiarray`` (numpy 2);
* plain containers: dict, list, tuple (no lookup needed), ``set``, ``frozenset``,
  ``collections.OrderedDict``;
* ``_codecs.encode(text, "latin1")``, which Python 3 protocol-2 pickles use for ``bytes``.

Anything else (``os.system``, ``builtins.eval``, arbitrary classes) raises
:class:`UnsafePickleError`. Files are read with ``encoding="latin1"`` so that Python 2 ``str``
(byte strings: dict keys, numpy buffers) decode losslessly.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Tuple, Union

import numpy as np

__all__ = ["UnsafePickleError", "safe_load_pickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle references something other than numpy data or plain containers."""


def _numpy_multiarray():
    core = getattr(np, "_core", None)  # numpy >= 2
    return core.multiarray if core is not None else np.core.multiarray


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to the text codecs pickle uses for ``bytes``."""
    if codecs.lookup(encoding).name not in ("iso8859-1", "utf-8", "ascii"):
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r} is not admitted")
    return codecs.encode(text, encoding, errors)


def _allowed() -> Dict[Tuple[str, str], Callable]:
    multiarray = _numpy_multiarray()
    table: Dict[Tuple[str, str], Callable] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = multiarray._reconstruct
        table[(module, "scalar")] = multiarray.scalar
    return table


_ALLOWED = _allowed()


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__.set``) -> Python 3 names, as the default unpickler does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"the pickle references {module}.{name}, which is neither a numpy array/dtype nor a plain "
                f"container; refusing to execute it"
            ) from None


def safe_load_pickle(path: Union[str, Path]) -> Any:
    """Unpickle ``path`` admitting only numpy data and plain containers (``encoding="latin1"``).

    Raises:
        UnsafePickleError: the file references any other callable (the message names it and the file).
        pickle.UnpicklingError: the file is not a valid pickle.
    """
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except UnsafePickleError as e:
            raise UnsafePickleError(
                f"{path}: {e}. Only numpy arrays and plain containers are loaded from .pkl files."
            ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise pickle.UnpicklingError(
                f"{path}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})"
            ) from e
