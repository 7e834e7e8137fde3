"""tools/evaluate.py --task localization on hand-made CSV files: the printed table, the json, the
warning about extra guesses, and one-line errors naming the file (exit 1) or the arguments (exit 2)."""
import json

import pytest

HEADER = "ImageId,PredictionString\n"
SOLUTION = HEADER + (
    "val_1,n01 10 10 59 59\n"
    "val_2,n02 0 0 49 49 n02 100 100 149 149\n"
    "val_3,n03 0 0 9 9\n"
    "val_4,n01 0 0 9 9\n"
)
SUBMISSION = HEADER + (
    "val_1,n01 10 10 59 59\n"  # right at once
    "val_2,n01 0 0 49 49 n02 100.4 100 149 149\n"  # right second, on the second box
    "val_3," + "n04 0 0 9 9 " * 5 + "n03 0 0 9 9\n"  # right only sixth: ignored
)  # val_4 missing: wrong
GT_CLASS = HEADER + (
    "val_1,n01 10 10 59 59\n"
    "val_2,n02 0 0 49 24\n"  # inclusive IoU 50 * 25 / 2500 = 0.5 exactly: right
    "val_3,n03 0 0 9 3.999\n"  # IoU 0.4999: wrong
)


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, text in (("solution", SOLUTION), ("submission", SUBMISSION), ("gt", GT_CLASS)):
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text(text)
    return paths


def test_end_to_end(files, tmp_path, run_tool):
    out = tmp_path / "out" / "metrics.json"
    out.parent.mkdir()
    proc = run_tool("evaluate", "--task", "localization", "--solution", files["solution"], "--submission",
                    files["submission"], "--gt-class-submission", files["gt"], "--output", out,
                    env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert [line.split() for line in proc.stdout.splitlines()[1:]] == [
        ["top1_cls_error", "75.00"], ["top5_cls_error", "50.00"], ["gt_loc_error", "50.00"],
        ["top1_loc_error", "75.00"], ["top5_loc_error", "50.00"], ["(4", "images)"]]
    assert f"{files['submission']}: 1 images have more than 5 guesses; only the first 5 count" in proc.stderr
    assert json.loads(out.read_text()) == {"localization": {
        "top1_cls_error": 75.0, "top5_cls_error": 50.0, "gt_loc_error": 50.0, "top1_loc_error": 75.0,
        "top5_loc_error": 50.0, "num_images": 4}}


def test_without_gt_class_file(files, capsys, load_tool):
    tool = load_tool("evaluate")
    metrics = tool.run(tool.parse_args(["--task", "localization", "--solution", str(files["solution"]),
                                        "--submission", str(files["submission"])]))
    assert dict(metrics) == {"top1_cls_error": 75.0, "top5_cls_error": 50.0, "top1_loc_error": 75.0,
                             "top5_loc_error": 50.0, "num_images": 4}
    assert "gt_loc_error" not in capsys.readouterr().out


def test_malformed_file_exits_1_with_one_line(files, run_tool):
    files["submission"].write_text(HEADER + "val_1,n01 10 10 59 59\nval_2,n02 0 0 forty 49\n")
    proc = run_tool("evaluate", "--task", "localization", "--solution", files["solution"], "--submission",
                    files["submission"], env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"evaluate.py: error: {files['submission']}: line 3: non-numeric box coordinates '0 0 forty 49'"]


@pytest.mark.parametrize("which,text,message", [
    ("submission", HEADER + "val_9,n01 0 0 1 1\n",
     r"submission\.csv: line 2: ImageId 'val_9' is not in the ground truth"),
    ("gt", HEADER + "val_1,n01 0 0 1 1\nval_1,n01 0 0 1 1\n", r"gt\.csv: line 3: ImageId 'val_1' again"),
    ("solution", "val_1,n01 0 0 1 1\n", r"solution\.csv: line 1: expected the header"),
    ("solution", None, r"solution file not found: .*solution\.csv"),
])
def test_errors_name_the_file(files, load_tool, which, text, message):
    if text is None:
        files[which].unlink()
    else:
        files[which].write_text(text)
    with pytest.raises(SystemExit, match=f"^evaluate.py: error: .*{message}"):
        load_tool("evaluate").main(["--task", "localization", "--solution", str(files["solution"]), "--submission",
                                    str(files["submission"]), "--gt-class-submission", str(files["gt"])])


@pytest.mark.parametrize("argv,message", [
    (["--task", "localization", "--solution", "s.csv"], "--task localization needs --solution and --submission"),
    (["--task", "localization", "--solution", "s.csv", "--submission", "x.csv", "--results", "r.json"],
     "--results is not for --task localization"),
    (["--solution", "s.csv", "--submission", "x.csv"], "--solution needs --task localization"),
    (["--results", "r.json"], "one of the arguments --dataset-json --voc-root --config is required"),
    (["--dataset-json", "gt.json"], "the following arguments are required: --results"),
])
def test_argument_errors(load_tool, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        load_tool("evaluate").parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
