"""Weight import: safe unpickling, format conversion (torchvision / MSRA blobs / Detectron2 / detres),
name alignment, reporting, and the golden MSRA and Detectron2 checkpoints."""
import io
import logging
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from detres.modeling.backbone import create_backbone
from detres.modeling.weight_import import (
    UnsafePickleError,
    align_names,
    list_sources,
    load_state_dict_any,
    load_weights,
    read_checkpoint,
    resolve,
    safe_load_pickle,
)
from detres.modeling.weight_import.sources import source_url
from detres.utils.download import cached_path_for

NARROW = dict(stem_out_channels=16, res2_out_channels=64, width_per_group=16, norm="FrozenBN")  # golden widths
STAGES = ["res2", "res3", "res4", "res5"]


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- restricted unpickler
class _Py2Pickler(pickle._Pickler):
    """Writes pickles the way Python 2 + numpy 1.x did: ``bytes`` as Python 2 ``str`` (BINSTRING
    opcodes, which Python 3 reads back as text with encoding="latin1") and ``numpy.core`` names."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def _py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def test_rejects_code_execution(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for i, payload in enumerate([
        pickle.dumps({"blobs": {"conv1_w": Evil()}}, protocol=4),
        f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),  # protocol 0, names os.system literally
        b"c_codecs\nencode\n(Vx\nVzlib_codec\ntR.",  # the bytes helper with a non-text codec
    ]):
        path = tmp_path / f"evil{i}.pkl"
        path.write_bytes(payload)
        with pytest.raises(UnsafePickleError) as info:
            safe_load_pickle(path)
        assert str(path) in str(info.value)
        assert ("system" in str(info.value)) if i < 2 else ("zlib_codec" in str(info.value))
        with pytest.raises(UnsafePickleError):  # the loader front door refuses too
            read_checkpoint(path)
    assert not marker.exists()


def test_python2_protocol2_pickle_with_byte_string_keys(tmp_path):
    w = np.linspace(-3, 3, 2 * 3 * 7 * 7, dtype=np.float32).reshape(2, 3, 7, 7)  # raw bytes above 0x7f
    s = np.array([1.5, -2.0], np.float32)
    blobs = {b"conv1_w": w, b"res_conv1_bn_s": s, b"res_conv1_bn_b": s * 0, b"conv1_w_momentum": w * 0}
    data = _py2_pickle({b"blobs": blobs})
    assert b"numpy.core.multiarray\n_reconstruct" in data and pickle.SHORT_BINSTRING + b"\x07conv1_w" in data
    path = tmp_path / "py2.pkl"
    path.write_bytes(data)
    loaded = safe_load_pickle(path)
    assert set(loaded["blobs"]) == {"conv1_w", "res_conv1_bn_s", "res_conv1_bn_b", "conv1_w_momentum"}
    np.testing.assert_array_equal(loaded["blobs"]["conv1_w"], w)
    fmt, state = read_checkpoint(path)
    assert fmt == "msra"
    assert sorted(state) == sorted(f"stem.conv1.{k}" for k in (
        "conv.weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var"))
    torch.testing.assert_close(state["stem.conv1.conv.weight"], torch.from_numpy(w), rtol=0, atol=0)
    assert torch.all(state["stem.conv1.norm.running_var"] == torch.tensor(1 - 1e-5, dtype=torch.float32))


def test_python3_protocol2_pickle_with_bytes_keys(tmp_path):
    """Python 3 writes ``bytes`` at protocol 2 through ``_codecs.encode``; keys come back as bytes."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "py3p2.pkl"
    path.write_bytes(pickle.dumps({b"model": {b"roi_heads.box_predictor.cls_score.weight": w}}, protocol=2))
    fmt, state = read_checkpoint(path)
    assert fmt == "detres" and list(state) == ["roi_heads.box_predictor.cls_score.weight"]
    torch.testing.assert_close(state["roi_heads.box_predictor.cls_score.weight"], torch.from_numpy(w))


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("just text\n")
    with pytest.raises(pickle.UnpicklingError, match="notes.pth"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no_such.pth"):
        resolve(tmp_path / "no_such.pth")


# ----------------------------------------------------------------------------- sources
def test_short_schemes():
    url, sha = source_url("torchvision://resnet50")
    assert url == "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert sha.startswith("0676ba61") and len(sha) == 64
    url, sha = source_url("torchvision://resnet101")
    assert url == "https://download.pytorch.org/models/resnet101-63fe2227.pth" and sha == "63fe2227"  # prefix only
    assert source_url("torchvision://resnet50.v2")[1] == "11ad3fa6"
    msra = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-101.pkl"
    assert source_url("msra://R-101") == (msra, None)
    zoo = "COCO-Detection/faster_rcnn_R_50_C4_1x/137257644/model_final_721ade.pkl"
    assert source_url("detectron2://" + zoo)[0] == "https://dl.fbaipublicfiles.com/detectron2/" + zoo
    names = {f"torchvision://resnet{d}" for d in (18, 34, 50, 101, 152)} | {"msra://R-50", "msra://R-101"}
    assert names <= set(list_sources())
    with pytest.raises(ValueError, match="msra://R-50"):
        source_url("msra://R-152")


def test_manually_placed_file_is_used_offline(shared_dir, tmp_path, monkeypatch):
    """A short scheme resolves to the cache path; a file placed there is loaded without network."""
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path))
    target = cached_path_for(source_url("msra://R-50")[0])
    assert target == tmp_path / "dl.fbaipublicfiles.com" / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-50.pkl"
    target.parent.mkdir(parents=True)
    shutil.copy(shared_dir / "golden" / "msra_r50_w16" / "R-50-w16.pkl", target)
    backbone = create_backbone("resnet50", out_features=["res2"], **NARROW)
    report = load_weights(backbone, "msra://R-50")
    assert report.path == str(target) and report.format == "msra" and report.loaded == 5 + 3 * 5 * 3 + 5
    assert not report.missing and report.unexpected  # res3..res5 and linear are not in this backbone


# ----------------------------------------------------------------------------- name alignment
def test_align_names():
    ckpt = ["backbone.res2.0.conv1.conv.weight", "roi_heads.res5.0.conv1.conv.weight", "linear.weight",
            "head.conv.weight", "a.head.conv.weight", "res3.0.conv1.conv.weight"]
    module = ["res2.0.conv1.conv.weight", "res5.0.conv1.conv.weight", "outer.linear.weight", "conv.weight",
              "res3.0.conv1.conv.weight", "backbone.res3.0.conv1.conv.weight"]
    mapping, ambiguous = align_names(ckpt, module)
    assert mapping == {
        "res2.0.conv1.conv.weight": "backbone.res2.0.conv1.conv.weight",  # prefix stripped
        "res5.0.conv1.conv.weight": "roi_heads.res5.0.conv1.conv.weight",  # a C4 detector's res5
        "outer.linear.weight": "linear.weight",  # nested module: dotted suffix
        "res3.0.conv1.conv.weight": "res3.0.conv1.conv.weight",  # exact names first, used once
    }
    assert ambiguous == ["a.head.conv.weight", "head.conv.weight"]  # both end in .conv.weight


# ----------------------------------------------------------------------------- torchvision
def _randomised_torchvision(name: str) -> nn.Module:
    model = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_state_dict_gives_same_logits(name, tmp_path):
    torch.manual_seed(0)
    reference = _randomised_torchvision(name)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = create_backbone(name, out_features=["linear"], style="pytorch").eval()
    report = load_weights(model, path, strict=True)
    assert report.format == "torchvision" and report.ok and report.loaded == len(model.state_dict())
    x = torch.randn(2, 3, 128, 128) if name == "resnet18" else torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (model(x)["linear"] - reference(x)).abs().max().item()
    assert diff <= 1e-4


def test_style_mismatch_is_warned(shared_dir, caplog):
    backbone = create_backbone("resnet50", out_features=["res3"], style="pytorch", **NARROW)
    with caplog.at_level(logging.WARNING, logger="detres"):
        load_weights(backbone, shared_dir / "golden" / "msra_r50_w16" / "R-50-w16.pkl")
    assert "msra style" in caplog.text and "res3.0 is pytorch style" in caplog.text


# ----------------------------------------------------------------------------- MSRA blobs (golden)
def test_msra_golden_outputs(shared_dir):
    folder = shared_dir / "golden" / "msra_r50_w16"
    expected = np.load(folder / "expected.npz")
    model = create_backbone("resnet50", out_features=STAGES + ["linear"], **NARROW).eval()
    assert model.linear.out_features == 1000
    report = load_weights(model, folder / "R-50-w16.pkl", strict=True)
    # 161 blobs; each of the 53 folded norms also gets running_mean / running_var
    assert report.format == "msra" and report.loaded == 161 + 2 * 53
    with torch.no_grad():
        out = model(torch.from_numpy(expected["input"]))
    for name in STAGES:
        assert rel_err(out[name], expected[name]) < 5e-5, name
    assert rel_err(out["linear"], expected["logits"]) < 5e-5


# ----------------------------------------------------------------------------- Detectron2 (golden)
D2_NAMES = {
    "backbone.stem.conv1.weight": "backbone.stem.conv1.conv.weight",
    "backbone.res2.0.shortcut.weight": "backbone.res2.0.shortcut.conv.weight",
    "backbone.res4.5.conv3.norm.running_var": "backbone.res4.5.conv3.norm.running_var",
    "roi_heads.res5.0.conv2.weight": "roi_heads.res5.0.conv2.conv.weight",
    "proposal_generator.rpn_head.anchor_deltas.weight": "proposal_generator.rpn_head.anchor_deltas.weight",
    "roi_heads.box_predictor.cls_score.bias": "roi_heads.box_predictor.cls_score.bias",
}


@pytest.fixture(scope="module")
def d2_golden(shared_dir):
    folder = shared_dir / "golden" / "detectron2_r50_c4_w16"
    return folder, safe_load_pickle(folder / "model_final.pkl")["model"]


def test_detectron2_names(d2_golden, tmp_path):
    folder, raw = d2_golden
    state = load_state_dict_any(folder / "model_final.pkl")
    assert len(state) == len(raw) == 275
    for d2_name, name in D2_NAMES.items():
        torch.testing.assert_close(state[name], torch.from_numpy(raw[d2_name]), rtol=0, atol=0)
    # the same weights in a Detectron2 training checkpoint (.pth, torch.save) convert the same way
    pth = tmp_path / "model_0000999.pth"
    torch.save({"model": {k: torch.from_numpy(v) for k, v in raw.items()}, "iteration": 999}, pth)
    fmt, from_pth = read_checkpoint(pth)
    assert fmt == "detectron2" and from_pth.keys() == state.keys()
    assert all(torch.equal(from_pth[k], state[k]) for k in state)


def test_detectron2_into_backbone_matches_res4(d2_golden):
    folder, _ = d2_golden
    outputs = np.load(folder / "outputs.npz")
    backbone = create_backbone("resnet50", out_features=["res4"], **NARROW).eval()
    report = load_weights(backbone, folder / "model_final.pkl")
    assert report.loaded == len(backbone.state_dict()) and not report.missing and not report.shape_mismatch
    assert len(report.unexpected) == 60
    assert "60 unexpected" in str(report) and "roi_heads.res5.* (50 tensors)" in str(report)
    image = torch.from_numpy(outputs["input_0"]).float() - torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    with torch.no_grad():
        res4 = backbone(image[None])["res4"][0]
    assert rel_err(res4, outputs["res4_0"]) < 1e-4
    # a full backbone takes res5 from the detector's per-region head
    full = create_backbone("resnet50", out_features=["res5"], **NARROW)
    report = load_weights(full, folder / "model_final.pkl")
    assert report.loaded == len(full.state_dict()) and report.renamed == report.loaded and len(report.unexpected) == 10


def _golden_c4_model():
    from detres.config import get_cfg
    from detres.modeling.meta_arch.build import build_model

    cfg = get_cfg()
    cfg.merge_from_dict({"MODEL": {
        "META_ARCHITECTURE": "FasterRCNN", "DEVICE": "cpu",
        "RESNETS": {"DEPTH": 50, "STEM_OUT_CHANNELS": 16, "RES2_OUT_CHANNELS": 64, "WIDTH_PER_GROUP": 16,
                    "NORM": "FrozenBN", "OUT_FEATURES": ["res4"]},
    }})
    return build_model(cfg)


def test_detectron2_into_detection_model(d2_golden, shared_dir):
    folder, raw = d2_golden
    model = _golden_c4_model()
    report = load_weights(model, folder / "model_final.pkl", strict=True)
    assert report.ok and report.loaded == 275 and report.renamed == 0
    own = model.state_dict()
    for d2_name, name in D2_NAMES.items():
        torch.testing.assert_close(own[name], torch.from_numpy(raw[d2_name]), rtol=0, atol=0)
    # ImageNet weights fill backbone.* and the per-region roi_heads.res5.*; the heads stay initialised
    report = load_weights(model, shared_dir / "golden" / "msra_r50_w16" / "R-50-w16.pkl")
    assert sorted(report.unexpected) == ["linear.bias", "linear.weight"]
    assert sorted({k.rsplit(".", 2)[0] for k in report.missing}) == [
        "proposal_generator.rpn_head", "roi_heads.box_predictor"]
    assert report.loaded == 161 + 2 * 53 - 2


# ----------------------------------------------------------------------------- detres checkpoints, reports
def test_detres_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    source = create_backbone("cifar_resnet20", out_features=["linear"])
    with torch.no_grad():
        for buf in source.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    path = tmp_path / "model_0000100.pth"
    torch.save({"model": source.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "iteration": 100}, path)
    target = create_backbone("cifar_resnet20", out_features=["linear"])
    report = load_weights(target, path, strict=True)
    assert report.format == "detres" and report.ok
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    legacy = tmp_path / "legacy.pth"  # torch's pre-zip serialization
    torch.save(source.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert load_weights(create_backbone("cifar_resnet20", out_features=["linear"]), legacy, strict=True).ok


def test_mismatches_are_reported_and_strict_refuses(shared_dir):
    pkl = shared_dir / "golden" / "msra_r50_w16" / "R-50-w16.pkl"
    model = create_backbone("resnet50", out_features=["res3"], **dict(NARROW, width_per_group=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        load_weights(model, pkl, strict=True)
    assert "res2.0.conv1.conv.weight: checkpoint (16, 16, 1, 1) vs module (8, 16, 1, 1)" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    report = load_weights(model, pkl)
    assert ("res2.0.conv1.conv.weight", (16, 16, 1, 1), (8, 16, 1, 1)) in report.shape_mismatch
    assert "stem.conv1.conv.weight" not in {n for n, _, _ in report.shape_mismatch}
    conv1_w = torch.from_numpy(safe_load_pickle(pkl)["blobs"]["conv1_w"])
    assert torch.equal(model.state_dict()["stem.conv1.conv.weight"], conv1_w)  # what fits is loaded
    assert any(k.startswith("res4.") for k in report.unexpected) and "linear.weight" in report.unexpected
    text = str(report)
    assert not report.ok and "res4.* (" in text and "77 shape mismatch" in text and "res3.* (44 more tensors)" in text


def _tiny_detector(num_classes: int) -> nn.Module:
    from detres.config import load_config
    from detres.modeling.meta_arch.build import build_model

    cfg = load_config("configs/detection/Base-RCNN-C4.yaml", [
        "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 16, "MODEL.ROI_HEADS.NUM_CLASSES", num_classes])
    return build_model(cfg)


def test_class_layers_for_another_number_of_classes_are_one_warning_with_the_fix(tmp_path, caplog):
    from detres.config import ConfigError

    torch.manual_seed(0)
    path = tmp_path / "model_final.pth"
    torch.save({"model": _tiny_detector(5).state_dict(), "class_names": list("abcde"), "iteration": 3}, path)
    target = _tiny_detector(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ConfigError) as info:  # evaluation: random class layers make the numbers meaningless
        load_weights(target, path, require_class_layers=True)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and str(path) in message
    assert "5 classes (+ background)" in message and "MODEL.ROI_HEADS.NUM_CLASSES is 2" in message
    assert "set MODEL.ROI_HEADS.NUM_CLASSES 5" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded

    with caplog.at_level(logging.DEBUG, logger="detres"):
        report = load_weights(target, path)
    assert report.class_names == list("abcde") and not report.ok and report.only_class_layers_differ
    assert [(m.checkpoint_classes, m.module_classes) for m in report.class_mismatch] == [(5, 2)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"weights {path} have 5 classes (+ background) in roi_heads.box_predictor.cls_score, "
        "roi_heads.box_predictor.bbox_pred but MODEL.ROI_HEADS.NUM_CLASSES is 2: those layers are left as "
        "initialised; set MODEL.ROI_HEADS.NUM_CLASSES 5 to use them"]
    details = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(details) == 1 and "4 shape mismatch" in details[0]  # the full report, for log.txt only
    assert torch.equal(target.state_dict()["backbone.stem.conv1.conv.weight"],
                       torch.load(path, weights_only=True)["model"]["backbone.stem.conv1.conv.weight"])


def test_classifier_layer_mismatch_names_its_key(tmp_path, caplog):
    target = create_backbone("cifar_resnet20", out_features=["linear"])  # 10 classes
    state = target.state_dict()
    state["linear.weight"], state["linear.bias"] = torch.zeros(100, state["linear.weight"].shape[1]), torch.zeros(100)
    path = tmp_path / "cifar100.pth"
    torch.save({"model": state}, path)
    with caplog.at_level(logging.WARNING, logger="detres"):
        report = load_weights(target, path)
    assert report.class_names is None and report.loaded == len(state) - 2
    assert [r.getMessage() for r in caplog.records] == [
        f"weights {path} have 100 classes in linear but MODEL.CLASSIFIER.NUM_CLASSES is 10: those layers are left "
        "as initialised; set MODEL.CLASSIFIER.NUM_CLASSES 100 to use them"]
