"""ImageClassifier / create_model / create_transform: losses, view averaging, the per-pixel mean
buffer, tensor-in logits equal to torchvision's, preprocessing, checkpoints between the two models,
configs, and that a small ResNet actually learns the generated data."""
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import detres
from detres.config import get_cfg, load_config
from detres.data.build import build_test_loader, build_train_loader
from detres.data.classification.transforms import build_test_transform
from detres.modeling.backbone.build import backbone_cfg
from detres.modeling.meta_arch.build import build_model
from detres.modeling.meta_arch.classifier import ImageClassifier, ResNetClassifier
from detres.modeling.weight_import import load_weights
from detres.utils.events import EventStorage

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
TORCHVISION_MEAN, TORCHVISION_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # in [0, 255] units
# Paper, Table 6: parameters of the CIFAR-10 ResNets (option A shortcuts add none).
PAPER_CIFAR_PARAMS = {20: 0.27e6, 32: 0.46e6, 44: 0.66e6, 56: 0.85e6, 110: 1.7e6}


def cifar_cfg(depth=8, **overrides):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "cifar_resnet"
    cfg.MODEL.CIFAR_RESNETS.DEPTH = depth
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 10
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_dict(overrides)
    return cfg


def model_cfg(name, pixel_mean=None, pixel_std=None, input_format="BGR", crop_size=224, test_short_size=256,
              **options):
    """The trainer's config of the ImageNet model ``name``: backbone ``options``, input convention, centre test view."""
    cfg = backbone_cfg(name, **options)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PIXEL_MEAN = pixel_mean or cfg.MODEL.PIXEL_MEAN
    cfg.MODEL.PIXEL_STD = pixel_std or cfg.MODEL.PIXEL_STD
    cfg.INPUT.FORMAT = input_format
    cfg.INPUT.CLS.merge_from_dict({"AUGMENTATION": "imagenet", "PER_PIXEL_MEAN": False, "CROP_SIZE": crop_size,
                                   "TEST_SHORT_SIZE": test_short_size})
    cfg.TEST.CLS_MODE = "center"
    return cfg


def images(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8) for _ in range(n)]


def calibrated(model):
    """Random-init classifiers give degenerate scores (untrained BN statistics, a tiny classifier):
    estimate the BN statistics on random images and widen the classifier so that the softmax scores
    are neither uniform nor saturated (logits with a std of about 1.5)."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one pass gives the batch's statistics
    model.train()
    with torch.no_grad():
        model.backbone(model.normalize(torch.stack(images(16, seed=99))))
        model.backbone.linear.weight.normal_(0, 0.3)
    return model.eval()


def test_training_returns_cross_entropy_and_puts_batch_error():
    torch.manual_seed(0)
    model = build_model(cifar_cfg(INPUT={"CLS": {"PER_PIXEL_MEAN": False}})).train()
    batch = [{"image": im, "label": i % 10} for i, im in enumerate(images(6))]
    with EventStorage() as storage:
        losses = model(batch)
    assert set(losses) == {"loss_cls"} and losses["loss_cls"].requires_grad
    x = torch.stack([b["image"] for b in batch]).float() - torch.tensor([103.530, 116.280, 123.675]).view(3, 1, 1)
    logits = model.backbone(x)["linear"]  # train-mode BN uses batch statistics: same logits
    labels = torch.arange(6) % 10
    assert losses["loss_cls"].item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    error = storage.latest()["cls_error"][0]
    assert error == pytest.approx((logits.argmax(1) != labels).float().mean().item())
    model([{"image": images(1)[0], "label": 0}] * 2)  # no storage active: no error
    with pytest.raises(ValueError, match="same size"):
        model([{"image": images(1)[0], "label": 0}, {"image": images(1, size=24)[0], "label": 1}])


def test_eval_averages_softmax_over_ten_crops_and_scales():
    torch.manual_seed(1)
    model = calibrated(build_model(cifar_cfg(INPUT={"CLS": {"PER_PIXEL_MEAN": False}}))).eval()
    views = torch.stack(images(10, seed=2))
    scales = [images(1, size=s, seed=s)[0] for s in (24, 32, 48)]
    single = images(1, seed=3)[0]
    with torch.no_grad():
        out = model([{"image": views}, {"image": scales}, {"image": single}])
        per_view = [model([{"image": v}])[0] for v in views]
        per_scale = [model([{"image": s}])[0] for s in scales]
        alone = model([{"image": single}])[0]
    assert out.shape == (3, 10)
    assert torch.allclose(out.sum(1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out[0], torch.stack(per_view).mean(0), atol=1e-6)
    assert torch.allclose(out[1], torch.stack(per_scale).mean(0), atol=1e-6)
    assert torch.allclose(out[2], alone, atol=1e-6)
    assert (out[0] - per_view[0]).abs().max() > 1e-3  # views really differ


def test_per_pixel_mean_is_a_checkpointed_buffer():
    torch.manual_seed(2)
    model = calibrated(build_model(cifar_cfg())).eval()
    assert torch.equal(model.pixel_mean_image[:, 5, 7], torch.tensor([103.530, 116.280, 123.675]))
    mean = torch.rand(3, 32, 32) * 255
    x = images(2)
    with torch.no_grad():
        before = model([{"image": im} for im in x])
        model.set_pixel_mean_image(mean)
        after = model([{"image": im} for im in x])
        expected = F.softmax(model.backbone(torch.stack(x).float() - mean)["linear"], 1)
    assert not torch.allclose(before, after) and torch.allclose(after, expected, atol=1e-6)
    state = model.state_dict()
    assert torch.equal(state["pixel_mean_image"], mean) and "pixel_mean" not in state
    clone = build_model(cifar_cfg()).eval()
    clone.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(clone([{"image": im} for im in x]), after, atol=1e-6)
        # a view of another size uses the resized mean image
        assert clone([{"image": images(1, size=40)[0]}]).shape == (1, 10)
    with pytest.raises(ValueError, match="does not match"):
        model.set_pixel_mean_image(torch.zeros(3, 24, 24))
    plain_mean = build_model(cifar_cfg(INPUT={"CLS": {"PER_PIXEL_MEAN": False}}))
    assert "pixel_mean_image" not in plain_mean.state_dict()
    with pytest.raises(RuntimeError, match="PER_PIXEL_MEAN"):
        plain_mean.set_pixel_mean_image(mean)


def test_linear_output_is_added_to_out_features():
    model = build_model(cifar_cfg(MODEL={"CIFAR_RESNETS": {"OUT_FEATURES": ["res4"]}}))
    assert "linear" in model.backbone.out_features and model.num_classes == 10


def test_create_model_maps_tensors_to_logits():
    torch.manual_seed(0)
    for name, classes, size in [("cifar_resnet20", 10, 32), ("cifar_plain20", 10, 32), ("resnet18", 7, 64)]:
        model = detres.create_model(name, num_classes=classes)
        assert type(model) is ResNetClassifier and not model.training
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            logits = model(x)
            assert logits.shape == (2, classes)
            assert torch.equal(logits, model.backbone(x)["linear"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(detres.create_model("cifar_resnet20", 10)) == count(detres.create_model("cifar_plain20", 10))
    b = detres.create_model("cifar_resnet20", 10, shortcut="B", pixel_mean=[1.0, 2.0, 3.0], per_pixel_mean=False)
    assert b.backbone.res3[0].shortcut is not None and b.pixel_mean.flatten().tolist() == [1.0, 2.0, 3.0]
    assert b.pixel_mean_image is None
    with pytest.raises(TypeError, match="unknown option"):
        detres.create_model("resnet18", 10, colour="red")


def torchvision_state_dict(name, path):
    """A randomly initialised torchvision ``name`` with non-trivial BN statistics, saved to ``path``."""
    import torchvision

    torch.manual_seed(3)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    for m in reference.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    torch.save(reference.state_dict(), path)
    return reference


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_create_model_with_torchvision_weights_gives_torchvision_logits(name, tmp_path):
    """A torchvision state dict (recognised by its names) brings torchvision's conventions: pytorch
    style, RGB, torchvision's mean/std -- the logits are torchvision's on the same tensor."""
    reference = torchvision_state_dict(name, tmp_path / f"{name}.pth")
    model = detres.create_model(name, weights=str(tmp_path / f"{name}.pth"))
    assert model.input_format == "RGB"
    assert model.pixel_mean.flatten().tolist() == pytest.approx(TORCHVISION_MEAN)
    assert model.pixel_std.flatten().tolist() == pytest.approx(TORCHVISION_STD)
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours, theirs = model(x), reference(x)
    assert ours.shape == (2, 1000) and theirs.std() > 0.1  # not a degenerate network
    # Relative to the logits' scale (~100): BN folded into the convs (MODEL.FOLD_NORM) sums in another order.
    assert (ours - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()
    # the dict-in trainer model holds the same network: its softmax over the same images
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    wrapped = ImageClassifier(model_cfg(name, style="pytorch", pixel_mean=TORCHVISION_MEAN, pixel_std=TORCHVISION_STD,
                                        input_format="RGB")).eval()
    assert load_weights(wrapped, str(tmp_path / f"{name}.pth")).ok
    with torch.no_grad():
        expected = torch.softmax(reference((images.float() / 255 - torch.tensor(TORCHVISION_MEAN).view(3, 1, 1) / 255)
                                           / (torch.tensor(TORCHVISION_STD).view(3, 1, 1) / 255)), 1)
        assert torch.allclose(wrapped([{"image": im} for im in images]), expected, atol=1e-5)


def test_transform_normalises_with_the_model_conventions(tmp_path):
    """One known pixel through the transform of an RGB/torchvision-mean model and a BGR/Caffe-mean model,
    from every kind of input."""
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[1, 2] = (255, 0, 128)
    torchvision_like = detres.create_model("resnet18", 10, input_format="RGB", pixel_mean=TORCHVISION_MEAN,
                                           pixel_std=TORCHVISION_STD)
    x = detres.create_transform(torchvision_like)(rgb)
    assert x.shape == (3, 4, 6) and x.dtype == torch.float32
    # (255 - 123.675) / 58.395, (0 - 116.28) / 57.12, (128 - 103.53) / 57.375
    assert x[:, 1, 2].tolist() == pytest.approx([2.248909, -2.035714, 0.426492], abs=1e-5)
    assert x[:, 0, 0].tolist() == pytest.approx([-2.117904, -2.035714, -1.804444], abs=1e-5)

    caffe = detres.create_model("resnet18", 10)  # MSRA weights' convention: BGR, mean subtracted, std 1
    transform = detres.create_transform(caffe)
    assert transform(rgb)[:, 1, 2].tolist() == pytest.approx([128 - 103.53, 0 - 116.28, 255 - 123.675])
    cv2.imwrite(str(tmp_path / "image.png"), rgb[:, :, ::-1])
    same = [
        transform(str(tmp_path / "image.png")),
        transform(Image.fromarray(rgb)),
        transform(torch.from_numpy(rgb).permute(2, 0, 1)),
        detres.create_transform(caffe, image_format="BGR")(rgb[:, :, ::-1].copy()),
    ]
    assert all(torch.equal(s, transform(rgb)) for s in same)
    with pytest.raises(TypeError, match="uint8"):
        transform(rgb.astype(np.float32))


def test_transform_resizes_and_crops_like_the_test_loader():
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(6))
    model = detres.create_model("resnet18", 10, input_format="RGB", pixel_mean=TORCHVISION_MEAN,
                                pixel_std=TORCHVISION_STD)
    x = detres.create_transform(model, resize=40, crop_size=32)(image)
    view = build_test_transform(model_cfg("resnet18", crop_size=32, test_short_size=40))(image)  # the loader's view
    assert x.shape == view.shape == (3, 32, 32)
    assert torch.allclose(x, model.normalize(view[None])[0], atol=1e-6)


def test_checkpoints_move_between_the_trainer_model_and_create_model(tmp_path):
    """A trained ImageClassifier's checkpoint (per-pixel mean image included) loads into create_model's
    tensor-in model and back: the same names, the same scores."""
    torch.manual_seed(7)
    trained = calibrated(build_model(cifar_cfg())).eval()
    trained.set_pixel_mean_image(torch.rand(3, 32, 32) * 255)
    torch.save({"model": trained.state_dict(), "class_names": [str(i) for i in range(10)]}, tmp_path / "cls.pth")
    model = detres.create_model("cifar_resnet8", 10, weights=str(tmp_path / "cls.pth"))
    assert torch.equal(model.pixel_mean_image, trained.pixel_mean_image)
    bgr = images(3, seed=8)  # the trainer's input format: BGR
    transform = detres.create_transform(model, image_format="BGR")
    with torch.no_grad():
        expected = trained([{"image": im} for im in bgr])
        probs = torch.softmax(model(torch.stack([transform(im) for im in bgr])), 1)
    assert torch.allclose(probs, expected, atol=1e-6) and expected.max() - expected.min() > 0.1

    torch.save(model.state_dict(), tmp_path / "tensor_in.pth")
    back = build_model(cifar_cfg()).eval()
    report = load_weights(back, str(tmp_path / "tensor_in.pth"))
    assert report.ok and report.renamed == 0 and report.loaded == len(back.state_dict())
    with torch.no_grad():
        assert torch.allclose(back([{"image": im} for im in bgr]), expected, atol=1e-6)


@pytest.mark.parametrize("depth", sorted(PAPER_CIFAR_PARAMS))
def test_cifar_parameter_counts_match_the_paper(depth):
    model = detres.create_model(f"cifar_resnet{depth}", num_classes=10)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - PAPER_CIFAR_PARAMS[depth]) / PAPER_CIFAR_PARAMS[depth] < 0.03


def test_every_classification_config_loads_and_builds():
    files = sorted((CONFIG_DIR / "classification").glob("*.yaml")) + [CONFIG_DIR / "quickstart_cls.yaml"]
    assert len(files) >= 20
    for path in files:
        cfg = load_config(str(path))
        assert cfg.MODEL.META_ARCHITECTURE == "ImageClassifier", path
        cifar = cfg.MODEL.BACKBONE.NAME == "cifar_resnet"
        if (cfg.MODEL.CIFAR_RESNETS.DEPTH <= 56) if cifar else (cfg.MODEL.RESNETS.DEPTH <= 34):  # keep it fast
            cfg.MODEL.DEVICE = "cpu"
            assert isinstance(build_model(cfg), ImageClassifier), path
    r110 = load_config(str(CONFIG_DIR / "classification" / "cifar_resnet110.yaml"))
    assert r110.SOLVER.WARMUP_METHOD == "until_train_error"
    assert r110.SOLVER.WARMUP_FACTOR * r110.SOLVER.BASE_LR == pytest.approx(0.01)
    r50 = load_config(str(CONFIG_DIR / "classification" / "imagenet_resnet50.yaml"))
    assert (r50.SOLVER.LR_SCHEDULER, r50.SOLVER.IMS_PER_BATCH, r50.INPUT.CLS.TRAIN_SHORT_RANGE) == ("plateau", 256, (256, 480))


def test_a_small_resnet_learns_the_generated_data():
    """Standalone loop (no engine): loss falls and accuracy rises on the synthetic set."""
    cfg = cifar_cfg(
        depth=8,
        SEED=0,
        DATASETS={"SYNTHETIC": {"NUM_TRAIN": 1000, "NUM_VAL": 200}},
        DATALOADER={"NUM_WORKERS": 0},
        SOLVER={"IMS_PER_BATCH": 32},
        TEST={"IMS_PER_BATCH": 100},
    )
    torch.manual_seed(0)
    loader = build_train_loader(cfg)
    model = build_model(cfg)
    model.set_pixel_mean_image(loader.pixel_mean_image)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    model.train()
    start, losses, errors = time.perf_counter(), [], []
    with EventStorage() as storage:
        for _, batch in zip(range(120), loader):
            loss = model(batch)["loss_cls"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            errors.append(storage.latest()["cls_error"][0])
            storage.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in build_test_loader(cfg, "synthetic_cls_val"):
            scores = model(batch)
            correct += int((scores.argmax(1) == torch.tensor([b["label"] for b in batch])).sum())
            total += len(batch)
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    print(f"loss {first:.3f} -> {last:.3f}, train error {sum(errors[:15]) / 15:.2f} -> {sum(errors[-15:]) / 15:.2f}, "
          f"val accuracy {correct / total:.3f}, {time.perf_counter() - start:.1f} s")
    assert last < 0.6 * first
    assert sum(errors[-15:]) < sum(errors[:15]) - 3  # mean error falls by > 0.2
    assert correct / total > 0.3  # chance is 0.1; about 0.5 when measured
