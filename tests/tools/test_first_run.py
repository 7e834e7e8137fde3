"""What a new user sees from tools/train_net.py: a short console summary (the full config and
environment go to the output folder, or to the console with --verbose), and no half-made output
folder after a run that fails before training starts."""
import logging

import pytest

from tests.engine.test_train_net import TINY


@pytest.fixture
def train_net(load_tool):
    yield load_tool("train_net")
    for handler in list(logging.getLogger("detres").handlers):
        logging.getLogger("detres").removeHandler(handler)
        handler.close()


def test_console_shows_a_summary_and_the_folder_keeps_the_rest(tmp_path, train_net, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    train_net.cli(["--config", str(cfg), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                   "DATALOADER.NUM_WORKERS", "0"])
    console = capsys.readouterr().out
    summary = console[:console.index("Starting training")]
    for expected in (f"config {cfg}", f"output    {out}", "ImageClassifier on CIFAR ResNet-8",
                     "train: synthetic_cls_train; test: -", "device    cpu", "seed      3", "M parameters"):
        assert expected in summary, (expected, summary)
    assert len(summary.splitlines()) < 20, summary  # 227 to 356 lines of dump before
    assert "SOLVER:" not in console and "torch debug build" not in console and "Sequential(" not in console
    log = (out / "log.txt").read_text()
    assert "Full config:" in log and "torch debug build" in log and "Model structure:" in log
    assert "BASE_LR: 0.05" in (out / "config.yaml").read_text() and "torch" in (out / "env.txt").read_text()

    verbose = tmp_path / "verbose"
    train_net.cli(["--config", str(cfg), "--verbose", "OUTPUT_DIR", str(verbose), "SOLVER.MAX_ITER", "1",
                   "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0"])
    console = capsys.readouterr().out
    assert "Full config:" in console and "BASE_LR: 0.05" in console and "torch debug build" in console


@pytest.mark.parametrize("failure", ["missing data", "missing weights", "bad value"])
def test_a_failed_set_up_leaves_no_half_made_folder(tmp_path, train_net, capsys, failure):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "runs" / "new"
    opts = {
        "missing data": ["DATASETS.TRAIN", "('coco_2017_train',)", "DATASETS.ROOT", str(tmp_path / "none")],
        "missing weights": ["MODEL.WEIGHTS", str(tmp_path / "nowhere.pth")],
        "bad value": ["SOLVER.LR_SCHEDULER", "poly"],  # found while the trainer is built
    }[failure]
    with pytest.raises(SystemExit) as exit_info:
        train_net.cli(["--config", str(cfg), "OUTPUT_DIR", str(out), *opts])
    captured = capsys.readouterr()
    assert exit_info.value.code in (1, 2) and len(captured.err.strip().splitlines()) == 1, captured.err
    assert not out.exists()
    assert f"removed the output folder this run had made: {out}" in captured.out

    # a folder that existed before (earlier results) is kept, and the log says what this run wrote there
    out.mkdir(parents=True)
    (out / "results.txt").write_text("earlier work")
    with pytest.raises(SystemExit):
        train_net.cli(["--config", str(cfg), "OUTPUT_DIR", str(out), *opts])
    captured = capsys.readouterr()
    assert (out / "results.txt").read_text() == "earlier work"
    assert f"{out} existed before this run and is kept" in captured.out
