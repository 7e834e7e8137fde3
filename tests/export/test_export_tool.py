"""``tools/export_model.py``: writes the files, runs them at two sizes and prints the differences to eager."""
import re

import pytest

from detres.export import onnxruntime_available
from tests.conftest import REPO_ROOT

NARROW_CFG = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
              "MODEL.RESNETS.RES2_OUT_CHANNELS", "16", "MODEL.ROI_HEADS.NUM_CLASSES", "3"]


def _differences(line: str) -> list:
    return [float(x) for x in re.findall(r"(\d\.\d\de[-+]\d\d) at \d+x\d+", line)]


def test_backbone_files_written_and_checked_at_two_sizes(load_tool, tmp_path, capsys):
    load_tool("export_model").main(["--backbone", "resnet18", "--output", str(tmp_path), "--size", "64", "96",
                                    "--features", "res3", "res4", "--", "stem_out_channels", "16",
                                    "res2_out_channels", "16"])
    lines = capsys.readouterr().out.splitlines()
    assert (tmp_path / "resnet18.pt").is_file() and (tmp_path / "resnet18.onnx").is_file()
    assert lines[0].startswith(f"wrote {tmp_path / 'resnet18.pt'} (torchscript)")
    assert "at 64x96" in lines[0] and "at 48x120" in lines[0]
    assert len(_differences(lines[0])) == 2 and max(_differences(lines[0])) <= 1e-4
    if onnxruntime_available():
        assert len(_differences(lines[1])) == 2 and max(_differences(lines[1])) <= 1e-4
    else:
        assert "not run: onnxruntime is not installed" in lines[1]


def test_detector_from_a_config(load_tool, tmp_path, capsys):
    load_tool("export_model").main(["--config", str(REPO_ROOT / "configs/detection/Base-RCNN-C4.yaml"),
                                    "--output", str(tmp_path), "--format", "torchscript", "--size", "128", "160",
                                    "--", *NARROW_CFG])
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"wrote {tmp_path / 'Base-RCNN-C4.pt'} (torchscript)")
    assert re.search(r"at 128x160 \(\d+ detections\); .* at 96x200 \(\d+ detections\)", line), line
    assert max(_differences(line)) <= 1e-3


@pytest.mark.parametrize("args, message", [
    (["--backbone", "resnext50"], "unknown backbone 'resnext50'"),
    (["--config", str(REPO_ROOT / "configs/classification/imagenet_resnet18.yaml")],
     "a detector needs MODEL.META_ARCHITECTURE FasterRCNN"),
    (["--config", "quickstart", "TEST.MULTI_SCALE.ENABLED", "False", "TEST.FLIP", "True"],
     "turn off TEST.FLIP to export it without them"),
    (["--model", "resnet18", "depth_of_field", "3"], "unknown option 'depth_of_field'"),
])
def test_errors_are_one_line(load_tool, tmp_path, args, message):
    with pytest.raises(SystemExit) as exit_info:
        load_tool("export_model").main([*args[:2], "--output", str(tmp_path), "--", *args[2:]])
    text = str(exit_info.value.code)
    assert text.startswith("export_model.py: error: ") and message in text and "\n" not in text
