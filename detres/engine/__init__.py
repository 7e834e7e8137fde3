"""Training and evaluation machinery shared by classification and detection.

``from detres.engine import Trainer, Predictor, create_detector, default_argument_parser, default_setup``
works (and ``from detres.engine.launch import launch``); the submodules are imported on first use, so importing
e.g. ``detres.engine.checkpoint`` stays light.
"""
import importlib

_EXPORTS = {
    "Predictor": "detres.engine.predictor",
    "Trainer": "detres.engine.trainer",
    "create_detector": "detres.engine.predictor",
    "default_argument_parser": "detres.engine.defaults",
    "default_setup": "detres.engine.defaults",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'detres.engine' has no attribute {name!r}")
