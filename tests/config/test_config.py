"""The config system: _BASE_ inheritance, overrides, and errors that name the key."""
from pathlib import Path

import pytest

from detres.config import ConfigError, get_cfg, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_base_inheritance_and_override_order(tmp_path):
    base = write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\nMODEL:\n  RESNETS:\n    DEPTH: 18\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 20\n")
    cfg = load_config(str(child), ["MODEL.RESNETS.DEPTH", "34"])
    assert cfg.SOLVER.BASE_LR == 0.5  # from the base
    assert cfg.SOLVER.MAX_ITER == 20  # child wins over base
    assert cfg.MODEL.RESNETS.DEPTH == 34  # command line wins over files
    assert base.exists()


def test_unknown_key_in_file_names_key_file_and_suggestion(tmp_path):
    bad = write(tmp_path / "bad.yaml", "MODEL:\n  RESNET:\n    DEPTH: 18\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    msg = str(err.value)
    assert "bad.yaml" in msg and "MODEL.RESNET" in msg and "MODEL.RESNETS" in msg


def test_unknown_key_on_command_line_suggests_closest():
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_list(["SOLVER.BASE_LRR", "0.1"])
    assert "SOLVER.BASE_LRR" in str(err.value) and "SOLVER.BASE_LR" in str(err.value)
    assert "command line" in str(err.value)


def test_type_mismatch_names_key_expected_and_given():
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_list(["MODEL.RESNETS.DEPTH", "deep"])
    msg = str(err.value)
    assert "MODEL.RESNETS.DEPTH" in msg and "expects int" in msg and "got str" in msg


def test_coercions_that_are_safe():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", "1", "INPUT.MIN_SIZE_TRAIN", "(480, 512)", "MODEL.RESNETS.PLAIN", "True"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (480, 512)
    assert cfg.MODEL.RESNETS.PLAIN is True
    cfg.merge_from_list(["INPUT.MIN_SIZE_TRAIN", "800"])  # a scalar where a tuple is expected
    assert cfg.INPUT.MIN_SIZE_TRAIN == (800,)
    with pytest.raises(ConfigError):
        cfg.merge_from_list(["MODEL.RESNETS.DEPTH", "50.5"])  # float into int is not silently truncated
    with pytest.raises(ConfigError):
        cfg.merge_from_list(["SOLVER.MAX_ITER"])  # odd number of items


def test_missing_file_and_group_assignment(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="group of keys"):
        get_cfg().merge_from_list(["MODEL.RESNETS", "1"])


def test_every_shipped_config_loads():
    configs = sorted((REPO_ROOT / "configs").rglob("*.yaml"))
    assert configs, "no configs shipped"
    for path in configs:
        load_config(str(path))  # raises ConfigError naming the file on any bad key
