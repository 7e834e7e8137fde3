"""Parameter and FLOP counting (fvcore), and the paper's complexity numbers to compare against.

FLOP convention: like Table 1 of He et al. 2015, a FLOP here is one **multiply-add** of a
convolution or fully-connected layer (fvcore's ``FlopCountAnalysis`` counts one multiply-add as
one flop). BatchNorm (foldable into the preceding conv at inference), ReLU, pooling and the
shortcut additions are elementwise and not counted by the paper, so ``count_flops`` drops them
by default (``conv_fc_only=False`` keeps fvcore's full default set). The paper's CIFAR parameter
counts are compared with all trainable ``nn.Parameter`` elements (conv, BN affine, fc) of the
option-A, 10-class models.

Layer responses (paper, Fig. 7): :func:`layer_responses` gives the standard deviation of each 3x3
layer's response -- the output of its norm, before the shortcut addition and the nonlinearity --
over a set of inputs, read by forward hooks (the model is not changed).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import addmm_flop_jit, bmm_flop_jit, conv_flop_jit, linear_flop_jit, matmul_flop_jit
from torch import nn

__all__ = [
    "PAPER_CIFAR_MPARAMS",
    "PAPER_IMAGENET_GFLOPS",
    "analyze_backbone",
    "analyze_config",
    "analyze_module",
    "count_flops",
    "count_parameters",
    "format_paper_table",
    "layer_responses",
    "paper_table",
    "response_layers",
]

# Table 1 (ImageNet, 224x224, multiply-adds) and Table 6 (CIFAR-10 parameters) of the paper.
PAPER_IMAGENET_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
PAPER_CIFAR_MPARAMS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}
# fvcore op handles whose counts are multiply-adds of conv / fully-connected layers.
_CONV_FC_HANDLES = {
    "aten::_convolution": conv_flop_jit,
    "aten::addmm": addmm_flop_jit,
    "aten::linear": linear_flop_jit,
    "aten::matmul": matmul_flop_jit,
    "aten::mm": matmul_flop_jit,
    "aten::bmm": bmm_flop_jit,
}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of ``nn.Parameter`` elements (buffers such as frozen BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(
    model: nn.Module, inputs: Union[torch.Tensor, Tuple[Any, ...]], conv_fc_only: bool = True
) -> FlopCountAnalysis:
    """An fvcore ``FlopCountAnalysis`` of ``model(*inputs)`` (``.total()``, ``.by_operator()``,
    ``.by_module()``); with ``conv_fc_only`` only conv and fc multiply-adds are counted."""
    analysis = FlopCountAnalysis(model, inputs)
    if conv_fc_only:
        analysis.clear_op_handles().set_op_handle(**_CONV_FC_HANDLES)
    return analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


class _ImageListAdapter(nn.Module):
    """Feeds a ``(N, 3, H, W)`` batch to a meta-architecture as ``List[dict]`` and flattens its
    eval output (a tensor, or per-image dicts of tensors) into a tuple that tracing accepts."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        h, w = images.shape[-2:]
        out = self.model([{"image": im, "height": int(h), "width": int(w)} for im in images])
        if isinstance(out, torch.Tensor):
            return (out,)
        return tuple(r[k] for r in out for k in sorted(r) if isinstance(r[k], torch.Tensor))


def analyze_module(model: nn.Module, input_size: int, takes_image_list: bool = False) -> Dict[str, Any]:
    """Parameters and conv+fc GFLOPs of ``model`` on one ``input_size`` x ``input_size`` image
    (values in [0, 255]; the model is put in eval mode). ``takes_image_list``: the model is a
    meta-architecture taking ``List[dict]`` inputs."""
    model = model.eval()
    images = torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)) * 255
    traced = _ImageListAdapter(model) if takes_image_list else model
    prefix = "model." if takes_image_list else ""
    with torch.no_grad():
        flops = count_flops(traced, (images,))
        by_module = flops.by_module()
        total = flops.total()
    children = {name: by_module.get(prefix + name, 0) for name, _ in model.named_children()}
    return {
        "input_size": input_size,
        "params": count_parameters(model),
        "trainable_params": count_parameters(model, trainable_only=True),
        "gflops": total / 1e9,
        "gflops_by_operator": {k: v / 1e9 for k, v in sorted(flops.by_operator().items())},
        "gflops_by_module": {k: v / 1e9 for k, v in children.items() if v},
    }


def _analysis_backbone(name: str, num_classes: Optional[int] = None, **overrides: Any) -> nn.Module:
    from detres.modeling.backbone.build import backbone_cfg, build_backbone, parse_backbone_name

    is_cifar = parse_backbone_name(name)[0]
    cfg = backbone_cfg(name, out_features=["linear"], **overrides)
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = num_classes or (10 if is_cifar else 1000)
    return build_backbone(cfg)


def analyze_backbone(
    name: str, input_size: Optional[int] = None, num_classes: Optional[int] = None, **overrides: Any
) -> Dict[str, Any]:
    """``analyze_module`` of the classification backbone ``name`` (e.g. ``"resnet50"``) with its
    ``linear`` head (1000 classes, or 10 for ``cifar_*``); ``input_size`` defaults to 224 / 32.
    ``overrides`` are :func:`detres.create_backbone` options (``style="pytorch"``, ...)."""
    is_cifar = name.startswith("cifar_")
    model = _analysis_backbone(name, num_classes, **overrides)
    return {"model": name, **analyze_module(model, input_size or (32 if is_cifar else 224))}


def analyze_config(cfg, input_size: Optional[int] = None) -> Dict[str, Any]:
    """Analyse the model a config describes: ``build_model(cfg)`` (on CPU) when its
    ``MODEL.META_ARCHITECTURE`` is registered, else ``build_backbone(cfg)``. ``input_size``
    defaults to 32 for the CIFAR backbone and 224 otherwise. A detector's per-region cost depends
    on how many proposals survive on the (random) analysis image, so its GFLOPs are indicative."""
    import detres.modeling.meta_arch  # noqa: F401  (registers the meta-architectures)
    from detres.modeling.backbone import build_backbone
    from detres.modeling.meta_arch.build import META_ARCH_REGISTRY, build_model

    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "cpu"
    size = input_size or (32 if cfg.MODEL.BACKBONE.NAME == "cifar_resnet" else 224)
    if cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY:
        result = analyze_module(build_model(cfg), size, takes_image_list=True)
        return {"model": cfg.MODEL.META_ARCHITECTURE, **result}
    return {"model": f"backbone {cfg.MODEL.BACKBONE.NAME}", **analyze_module(build_backbone(cfg), size)}


def paper_table(
    input_size: int = 224,
    imagenet_depths: Sequence[int] = tuple(PAPER_IMAGENET_GFLOPS),
    cifar_depths: Sequence[int] = tuple(PAPER_CIFAR_MPARAMS),
) -> List[Dict[str, Any]]:
    """The paper's complexity numbers next to detres's: ImageNet GFLOPs (msra style, option B,
    ``input_size``) and CIFAR-10 parameters in millions (option A). Rows: ``model``, ``metric``,
    ``paper``, ``measured``, ``rel_error`` ((measured - paper) / paper)."""
    rows = []
    for depth in imagenet_depths:
        model = _analysis_backbone(f"resnet{depth}", style="msra").eval()
        with torch.no_grad():
            flops = count_flops(model, (torch.zeros(1, 3, input_size, input_size),)).total()
        rows.append(_row(f"resnet{depth}", f"GFLOPs@{input_size}", PAPER_IMAGENET_GFLOPS[depth], flops / 1e9))
    for depth in cifar_depths:
        params = count_parameters(_analysis_backbone(f"cifar_resnet{depth}", shortcut="A"))
        rows.append(_row(f"cifar_resnet{depth}", "M params", PAPER_CIFAR_MPARAMS[depth], params / 1e6))
    return rows


def _row(model: str, metric: str, paper: float, measured: float) -> Dict[str, Any]:
    return {"model": model, "metric": metric, "paper": paper, "measured": measured, "rel_error": measured / paper - 1}


def format_paper_table(rows: Sequence[Dict[str, Any]]) -> str:
    """``paper_table`` rows as an aligned text table."""
    lines = [f"{'model':<18}{'metric':<14}{'paper':>8}{'measured':>11}{'rel.err':>9}"]
    for r in rows:
        lines.append(
            f"{r['model']:<18}{r['metric']:<14}{r['paper']:>8.2f}{r['measured']:>11.3f}{r['rel_error']:>+9.2%}"
        )
    return "\n".join(lines)


def response_layers(model: nn.Module, kernel_size: int = 3) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every conv+norm pair (a module with children ``conv``, an ``nn.Conv2d`` of
    ``kernel_size`` x ``kernel_size``, and ``norm``, whose output is the norm's output) in registration
    order, i.e. the network's layer order for the ResNets: ``stem.conv1``, ``res2.0.conv1``, ... The
    pair is hooked, not its norm: a norm folded into its convolution (``MODEL.FOLD_NORM``) never runs."""
    layers = []
    for name, module in model.named_modules():
        conv, norm = getattr(module, "conv", None), getattr(module, "norm", None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.Module) and conv.kernel_size == (kernel_size,) * 2:
            layers.append((name, module))
    return layers


def layer_responses(model: nn.Module, inputs: Iterable[Any], kernel_size: int = 3) -> List[Tuple[str, float]]:
    """``[(layer name, std)]`` in layer order: the standard deviation of each ``kernel_size`` conv
    layer's response (its norm's output: after BN, before the addition and ReLU) over every element
    -- images, channels, positions -- of the responses to all ``inputs`` (population std, in float64).

    The model is run in eval mode under ``no_grad`` as ``model(x)`` for each ``x`` of ``inputs`` (for
    a meta-architecture: its ``List[dict]`` batches); its training mode is restored afterwards.
    """
    layers = response_layers(model, kernel_size)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no {kernel_size}x{kernel_size} conv+norm layers")
    sums = {name: torch.zeros(3, dtype=torch.float64) for name, _ in layers}  # count, sum, sum of squares

    def hook_for(name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            out = output.detach().double()
            sums[name] += torch.tensor([out.numel(), out.sum().item(), out.square().sum().item()], dtype=torch.float64)

        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    result = []
    for name, (count, total, squares) in ((n, s.tolist()) for n, s in sums.items()):
        if count == 0:
            raise ValueError(f"layer {name} never ran (no inputs, or a stage that is absent)")
        mean = total / count
        result.append((name, max(squares / count - mean * mean, 0.0) ** 0.5))
    return result
