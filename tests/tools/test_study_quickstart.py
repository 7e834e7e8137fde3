"""tools/study_quickstart.py end to end on a tiny schedule: three models trained through train_net, the
side-by-side table, the curves (error, accuracy, loss) and the layer responses written."""
import json


def test_study_quickstart_trains_three_models_and_writes_the_pictures(tmp_path, load_tool, capsys):
    study = load_tool("study_quickstart")
    out = tmp_path / "out"
    study.main(["--output", str(out), "--iters", "4", "--images", "16", "DATASETS.ROOT", str(tmp_path / "data"),
                "DATASETS.SYNTHETIC.NUM_TRAIN", "128", "DATASETS.SYNTHETIC.NUM_VAL", "32"])
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["plain-20", "ResNet-20", "ResResNet-20"]
    for label, row in summary.items():
        assert 0.0 <= row["train_error"] <= 100.0 and 0.0 <= row["test_error"] <= 100.0, row
        assert row["response_std_mean"] > 0.0
        assert f"{label:<14}{row['train_error']:>12.2f}{row['test_error']:>12.2f}" in printed
        assert json.loads((out / label / "run_info.json").read_text())["seed"] == 0
    responses = json.loads((out / "responses.json").read_text())
    assert set(responses) >= set(summary)
    for name in ("curves.png", "accuracy.png", "loss.png", "responses.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
