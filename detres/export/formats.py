"""Write a module as TorchScript or ONNX, run the written files, and compare them with eager outputs.

Both formats come from a ``torch.jit.trace`` of the module on an example input: TorchScript saves the
trace; ONNX (opset 17) goes through PyTorch's TorchScript-based exporter, ``torch.onnx.export(dynamo=False)``,
for which torchvision registers ONNX forms of ``nms``, ``roi_align`` and ``roi_pool`` (and which needs
no ``onnxscript``). The exported modules keep sizes as tensors (see :mod:`detres.export.detector`), so
one trace is valid for other sizes; ``dynamic_axes`` names the ONNX axes that may change. Tracing and
that exporter are deprecated upstream (in favour of ``torch.export``) but present; their deprecation
notices and the tracer's warnings about frozen Python values are silenced here, because a written file
is checked by running it on inputs of another size instead (:func:`run_exported`,
:func:`max_abs_difference`).

Running ONNX files needs ``onnxruntime`` (``pip install detres[export]``); writing them needs only PyTorch.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple, Union

import torch
from torch import nn

__all__ = [
    "ONNX_OPSET",
    "export_onnx",
    "export_torchscript",
    "max_abs_difference",
    "onnxruntime_available",
    "run_exported",
]

ONNX_OPSET = 17  # RoiAlign with half_pixel coordinates (ROIAlignV2) needs opset >= 16
PathLike = Union[str, Path]
Inputs = Tuple[torch.Tensor, ...]


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*(deprecated|legacy TorchScript-based ONNX export).*")
        warnings.filterwarnings("ignore", message=r"To copy construct from a tensor")  # torchvision's clip under trace
        yield


def export_torchscript(module: nn.Module, example: Inputs, path: PathLike) -> Path:
    """Trace ``module`` (put in eval mode) on the ``example`` inputs and save it to ``path``
    (load with ``torch.jit.load``; a detector file needs ``import torchvision`` first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with _quiet_tracing(), torch.no_grad():
        torch.jit.trace(module, example, check_trace=False).save(str(path))
    return path


def export_onnx(
    module: nn.Module,
    example: Inputs,
    path: PathLike,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Path:
    """Trace ``module`` (put in eval mode) on the ``example`` inputs and write ONNX to ``path``.

    ``dynamic_axes``: for an input or output name, ``{axis: symbolic name}`` of the axes that may
    differ from the example's, e.g. ``{"images": {0: "batch", 2: "height", 3: "width"}}``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={name: dict(axes) for name, axes in dynamic_axes.items()},
        )
    return path


def onnxruntime_available() -> bool:
    """Whether ONNX files can be run here (``onnxruntime`` is importable)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def run_exported(path: PathLike, inputs: Inputs) -> List[torch.Tensor]:
    """Run a written ``.pt`` (TorchScript) or ``.onnx`` (onnxruntime, CPU) file on ``inputs``;
    returns its outputs in order, as CPU tensors."""
    path = Path(path)
    if path.suffix == ".onnx":
        return _run_onnx(path, inputs)
    import torchvision  # noqa: F401  (registers torchvision::nms and roi_align/roi_pool for the detector)

    with _quiet_tracing():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        outputs = module(*inputs)
    return [t.cpu() for t in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]


def _run_onnx(path: Path, inputs: Inputs) -> List[torch.Tensor]:
    if not onnxruntime_available():
        raise RuntimeError(f"running {path} needs onnxruntime: pip install onnxruntime (or detres[export])")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds: Dict[str, object] = {arg.name: x.detach().cpu().numpy() for arg, x in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(out) for out in session.run(None, feeds)]


def max_abs_difference(expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> float:
    """The largest ``|expected - actual|`` over corresponding outputs (0 for empty ones); ``inf`` when
    the number of outputs or any shape differs (e.g. another number of detections)."""
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual)):
        return float("inf")
    diffs = [(e.detach().cpu().double() - a.double()).abs().max().item() for e, a in zip(expected, actual) if e.numel()]
    return max(diffs, default=0.0)
