"""Classification data: dataset layouts and their errors, the synthetic set, transforms, and the
seeded / sharded / resumable training stream."""
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detres.config import get_cfg
from detres.data.build import build_test_loader, build_train_loader
from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.classification.datasets import (
    DatasetLayoutError,
    compute_mean_image,
    download_cifar10,
    load_cifar10,
    load_imagenet,
)
from detres.data.classification.loader import ClassificationDataset, KeyedTrainingSampler
from detres.data.classification.synthetic import SYNTHETIC_CLASSES, generate_synthetic
from detres.data.classification.transforms import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    PCALighting,
    RandomCrop,
    InferenceViews,
    build_train_transform,
)
from detres.data.samplers import TrainingSampler


# ---------------------------------------------------------------------------- fixtures
def _cifar_batch(rng, n):
    return {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}


def make_cifar(folder: Path, per_batch: int = 4, seed: int = 0) -> Path:
    """A CIFAR-10 python folder with ``per_batch`` images per batch (pickled like the original, protocol 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(rng, per_batch), protocol=2))
    return folder


def make_imagenet(root: Path, classes=("n01", "n02", "n03"), per_class=2, val_layout="folders") -> Path:
    """``root/train/<wnid>/*.png`` and a val split in class folders or flat with ``val_labels.txt``."""
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid if (split == "train" or val_layout == "folders") else root / split
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                image = np.full((40 + 4 * k, 50, 3), 60 * c + k, np.uint8)
                cv2.imwrite(str(folder / f"{split}_{wnid}_{k}.png"), image)
    if val_layout == "flat":
        lines = [f"val_{wnid}_{k}.png {wnid}" for wnid in classes for k in range(per_class)]
        (root / "val_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_cfg(**overrides):
    cfg = get_cfg()
    cfg.SEED = 7
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 60
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 20
    cfg.merge_from_dict(overrides)
    return cfg


# ---------------------------------------------------------------------------- CIFAR-10
def test_cifar10_records_match_the_pickled_pixels(tmp_path):
    folder = make_cifar(tmp_path / "cifar-10-batches-py")
    train, test = load_cifar10(str(folder), "train"), load_cifar10(str(folder), "test")
    assert len(train) == 20 and len(test) == 4
    batch = pickle.loads((folder / "data_batch_2").read_bytes())
    row, image = batch["data"][1], train[5]["image"]  # record 5 = batch 2, image 1
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert image[3, 7, 0] == row[3 * 32 + 7] and image[3, 7, 1] == row[1024 + 3 * 32 + 7]
    assert image[31, 31, 2] == row[3071] and train[5]["label"] == batch["labels"][1]


def test_cifar10_missing_batch_is_named(tmp_path):
    folder = make_cifar(tmp_path / "cifar-10-batches-py")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetLayoutError, match=r"cifar-10-batches-py.*data_batch_3"):
        load_cifar10(str(folder), "train")
    with pytest.raises(DatasetLayoutError, match="not found"):
        load_cifar10(str(tmp_path / "nowhere"), "test")


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    folder = make_cifar(tmp_path / "cifar-10-batches-py")
    (folder / "test_batch").write_bytes(b"cos\nsystem\n(S'echo hacked'\ntR.")
    with pytest.raises(DatasetLayoutError, match=r"test_batch.*os\.system"):
        load_cifar10(str(folder), "test")


def test_cifar10_download_from_a_local_server(tmp_path, monkeypatch):
    make_cifar(tmp_path / "src" / "cifar-10-batches-py", per_batch=2)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = buffer.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(archive)))
            self.end_headers()
            self.wfile.write(archive)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path / "cache"))
    url = f"http://127.0.0.1:{server.server_port}/cifar-10-python.tar.gz"
    try:
        with pytest.raises(ValueError, match="sha256"):
            download_cifar10(str(tmp_path / "bad"), url=url, sha256="0" * 64)
        folder = download_cifar10(str(tmp_path / "data"), url=url, sha256=hashlib.sha256(archive).hexdigest())
    finally:
        server.shutdown()
    assert len(load_cifar10(str(folder), "train")) == 10


# ---------------------------------------------------------------------------- ImageNet
@pytest.mark.parametrize("layout", ["folders", "flat"])
def test_imagenet_layouts(tmp_path, layout):
    root = make_imagenet(tmp_path / "imagenet", val_layout=layout)
    train, val = load_imagenet(str(root), "train"), load_imagenet(str(root), "val")
    assert len(train) == 6 and len(val) == 6
    for record in train + val:
        assert Path(record["file_name"]).name.split("_")[1] == ("n01", "n02", "n03")[record["label"]]


def test_imagenet_label_file_by_position_and_index(tmp_path):
    root = make_imagenet(tmp_path / "imagenet", val_layout="flat")
    # one label per line in sorted file order; labels as 0-based indices
    (root / "val_labels.txt").write_text("0\n0\n1\n1\n2\n2\n")
    assert [r["label"] for r in load_imagenet(str(root), "val")] == [0, 0, 1, 1, 2, 2]
    (root / "val_labels.txt").write_text("0\n0\n1\n1\n2\n")
    with pytest.raises(DatasetLayoutError, match=r"val_labels\.txt: 5 label lines but 6 images"):
        load_imagenet(str(root), "val")
    (root / "val_labels.txt").write_text("0\n0\n1\n1\n2\nn99\n")
    with pytest.raises(DatasetLayoutError, match=r"val_labels\.txt:6: label 'n99'"):
        load_imagenet(str(root), "val")


def test_imagenet_empty_class_folder_and_corrupt_image(tmp_path):
    root = make_imagenet(tmp_path / "imagenet")
    (root / "train" / "n04").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"train/n04: empty class folder"):
        load_imagenet(str(root), "train")
    (root / "train" / "n04").rmdir()
    bad = root / "val" / "n02" / "val_n02_0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    records = load_imagenet(str(root), "val")
    dataset = ClassificationDataset(records, InferenceViews("center", 32), "BGR", is_train=False)
    index = next(i for i, r in enumerate(records) if r["file_name"] == str(bad))
    with pytest.raises(DatasetLayoutError, match=r"val_n02_0\.png: cannot be decoded"):
        dataset[index]


def test_builtin_registration_and_metadata(tmp_path, monkeypatch):
    monkeypatch.delenv("DETRES_DATASETS", raising=False)
    make_cifar(tmp_path / "cifar-10-batches-py")
    make_imagenet(tmp_path / "imagenet")
    cfg = tiny_cfg(DATASETS={"ROOT": str(tmp_path)})
    from detres.data.builtin import register_builtin_datasets

    register_builtin_datasets(cfg)
    register_builtin_datasets(cfg)  # idempotent
    assert len(DatasetCatalog.get("cifar10_test")) == 4
    assert len(DatasetCatalog.get("imagenet_val")) == 6
    assert len(DatasetCatalog.get("synthetic_cls_val")) == 20
    for name, classes in [("cifar10_train", 10), ("imagenet_val", 3), ("synthetic_cls_train", 10)]:
        meta = MetadataCatalog.get(name)
        assert (meta.task, meta.evaluator_type, len(meta.thing_classes)) == ("classification", "classification", classes)
    assert MetadataCatalog.get("imagenet_val").thing_classes == ["n01", "n02", "n03"]


# ---------------------------------------------------------------------------- synthetic set
def test_synthetic_set_is_deterministic_balanced_and_seed_dependent():
    images, labels = generate_synthetic(40, 3, "train")
    more_images, _ = generate_synthetic(50, 3, "train")
    assert images.shape == (40, 32, 32, 3) and np.array_equal(images, more_images[:40])
    assert np.bincount(labels).tolist() == [4] * len(SYNTHETIC_CLASSES)
    assert not np.array_equal(images, generate_synthetic(40, 4, "train")[0])
    assert not np.array_equal(images, generate_synthetic(40, 3, "val")[0])
    # images are varied: not two identical ones, and not constant
    assert len({im.tobytes() for im in images}) == 40 and images.std() > 30


# ---------------------------------------------------------------------------- transforms
def test_pad_crop_and_flip_are_exact_functions_of_the_generator():
    image = torch.arange(3 * 32 * 32, dtype=torch.int32).reshape(3, 32, 32).to(torch.uint8)
    out = RandomCrop(32, pad=4)(image, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    top, left = rng.integers(0, 9), rng.integers(0, 9)
    padded = torch.zeros(3, 40, 40, dtype=torch.uint8)
    padded[:, 4:36, 4:36] = image
    assert torch.equal(out, padded[:, top : top + 32, left : left + 32])
    cfg = tiny_cfg()
    aug = build_train_transform(cfg)
    a, b = aug(image, np.random.default_rng(11)), aug(image, np.random.default_rng(11))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    flips = [aug(image, np.random.default_rng(s)) for s in range(40)]
    # roughly half the samples are mirrored: column order reversed relative to the source
    mirrored = sum(int(f[0, 16, 10].item() > f[0, 16, 20].item()) for f in flips)
    assert 8 <= mirrored <= 32


def test_pca_lighting_adds_the_eigen_shift():
    image = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    out = PCALighting(0.1)(image, np.random.default_rng(3))
    alpha = np.random.default_rng(3).normal(0.0, 0.1, size=3)
    shift = np.asarray(IMAGENET_EIGVEC) @ (alpha * np.asarray(IMAGENET_EIGVAL)) * 255
    assert out.dtype == torch.float32
    assert torch.allclose(out[:, 0, 0], torch.tensor(128 + shift, dtype=torch.float32), atol=1e-4)
    assert torch.equal(out, out[:, :1, :1].expand(3, 8, 8))


def test_imagenet_train_augmentation_shapes():
    cfg = tiny_cfg(INPUT={"CLS": {"AUGMENTATION": "imagenet", "CROP_SIZE": 224}})
    aug = build_train_transform(cfg)
    out = aug(torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8), np.random.default_rng(0))
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 255


def test_test_views_ten_crop_center_and_multi_scale():
    image = torch.arange(3 * 300 * 400, dtype=torch.int64).reshape(3, 300, 400).to(torch.float32)
    views = InferenceViews("ten_crop", 224, short_size=None)(image)
    assert views.shape == (10, 3, 224, 224)
    assert torch.equal(views[0], image[:, :224, :224]) and torch.equal(views[3], image[:, -224:, -224:])
    assert torch.equal(views[4], image[:, 38:262, 88:312])
    # the last five are the same crops of the mirrored image
    assert torch.equal(views[5], views[1].flip(-1)) and torch.equal(views[6], views[0].flip(-1))
    assert torch.equal(views[9], views[4].flip(-1))
    center = InferenceViews("center", 224, short_size=256)(image.to(torch.uint8))
    assert center.shape == (3, 224, 224)
    scales = InferenceViews("multi_scale", 224, multi_scale_sizes=(224, 480))(image)
    assert [tuple(v.shape) for v in scales] == [(3, 224, 298), (3, 480, 640)]
    with pytest.raises(ValueError, match="TEST.CLS_MODE"):
        InferenceViews("five_crop", 224)


# ---------------------------------------------------------------------------- loaders
def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(batch_a, batch_b):
    return all(torch.equal(a["image"], b["image"]) and a["label"] == b["label"] for a, b in zip(batch_a, batch_b))


def test_train_stream_is_seeded_and_resumes_exactly():
    cfg = tiny_cfg()
    run = _batches(build_train_loader(cfg), 10)  # 80 samples: crosses the 60-image epoch boundary
    assert len(run[0]) == 8 and run[0][0]["image"].shape == (3, 32, 32)
    assert all(_same(a, b) for a, b in zip(run, _batches(build_train_loader(cfg), 10)))
    resumed = _batches(build_train_loader(cfg, start_iter=6), 4)
    assert all(_same(a, b) for a, b in zip(run[6:], resumed))
    loader = build_train_loader(cfg)
    loader.set_start_iter(9)
    assert _same(run[9], next(iter(loader)))
    # epoch 0 covers every image exactly once
    loader.set_start_iter(0)
    first_epoch = [index for (index, _), _ in zip(loader.sampler, range(60))]
    assert sorted(first_epoch) == list(range(60))
    other_seed = _batches(build_train_loader(tiny_cfg(SEED=8)), 1)[0]
    assert not _same(run[0], other_seed)


def test_workers_do_not_change_the_stream():
    run = _batches(build_train_loader(tiny_cfg()), 3)
    with_workers = _batches(build_train_loader(tiny_cfg(DATALOADER={"NUM_WORKERS": 2})), 3)
    assert all(_same(a, b) for a, b in zip(run, with_workers))


def test_ranks_get_disjoint_shards_of_the_single_process_batch():
    size, total, seed = 50, 8, 3
    single = KeyedTrainingSampler(TrainingSampler(size, seed=seed, rank=0, world_size=1), total)
    stream = [k for k, _ in zip(single, range(total * 9))]
    for it in (0, 6, 8):  # iteration 6 crosses the epoch boundary (positions 48..55)
        expected = stream[it * total : (it + 1) * total]
        shards = []
        for rank in range(2):
            sampler = KeyedTrainingSampler(TrainingSampler(size, seed=seed, rank=rank, world_size=2), total // 2)
            sampler.set_start_iter(it)
            shards.append([k for k, _ in zip(sampler, range(total // 2))])
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == sorted(expected)


def test_mean_image_helper():
    records = [{"image": np.full((2, 3, 3), v, np.uint8), "label": 0} for v in (10, 20, 60)]
    records[0]["image"][0, 0] = (100, 0, 0)  # RGB
    mean = compute_mean_image(records, "RGB")
    assert mean.shape == (3, 2, 3) and mean.dtype == torch.float32
    assert mean[0, 0, 0].item() == pytest.approx(60.0) and mean[1, 0, 0].item() == pytest.approx(80 / 3)
    assert mean[2, 1, 2].item() == pytest.approx(30.0)
    assert torch.equal(compute_mean_image(records, "BGR"), mean.flip(0))
    records.append({"image": np.zeros((4, 4, 3), np.uint8), "label": 0})
    with pytest.raises(ValueError, match="equally sized"):
        compute_mean_image(records)
    cfg = tiny_cfg()
    loader = build_train_loader(cfg)
    images, _ = generate_synthetic(60, 0, "train")
    expected = torch.from_numpy(images.astype(np.float64).mean(0)).permute(2, 0, 1).flip(0).float()
    assert torch.allclose(loader.pixel_mean_image, expected, atol=1e-4)
    assert build_train_loader(tiny_cfg(INPUT={"CLS": {"PER_PIXEL_MEAN": False}})).pixel_mean_image is None


def test_test_loader_views_in_dataset_order():
    cfg = tiny_cfg(TEST={"CLS_MODE": "ten_crop", "IMS_PER_BATCH": 8})
    batches = list(build_test_loader(cfg, "synthetic_cls_val"))
    assert [len(b) for b in batches] == [8, 8, 4]
    images, labels = generate_synthetic(20, 0, "val")
    first = batches[0][3]
    assert first["image"].shape == (10, 3, 32, 32) and first["label"] == labels[3]
    # the centre of the padded image is the original, in BGR order
    assert torch.equal(first["image"][4], torch.from_numpy(images[3].copy()).permute(2, 0, 1).flip(0))
