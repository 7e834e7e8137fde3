"""tools/plot_curves.py parses metrics.json of several runs and draws one PNG."""
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def plot_curves(load_tool):
    return load_tool("plot_curves")


def fake_run(path: Path, final_train: float, final_test: float) -> Path:
    """A metrics.json like the trainer's: training scalars every 20 iterations, evaluation every 100."""
    path.mkdir()
    lines = []
    for it in range(19, 400, 20):
        frac = (it + 1) / 400
        record = {"iteration": it, "cls_error": 0.9 - (0.9 - final_train) * frac, "loss_cls": 2.0 - frac,
                  "total_loss": 2.0 - frac, "lr": 0.1}
        if (it + 1) % 100 == 0:
            record["cifar10_test/top1_error"] = 90.0 - (90.0 - final_test) * frac
            record["cifar10_test/top5_error"] = 10.0
        lines.append(json.dumps(record))
    lines.append(json.dumps({"iteration": 399, "cifar10_test/top1_error": final_test}))  # a second write at the end
    (path / "metrics.json").write_text("\n".join(lines) + "\n")
    return path


def test_series_are_parsed_and_png_written(tmp_path, plot_curves):
    plain = fake_run(tmp_path / "plain20", 0.12, 15.0)
    res = fake_run(tmp_path / "resnet20", 0.05, 8.75)
    out = tmp_path / "fig" / "curves.png"
    data = plot_curves.plot_runs([str(plain), str(res)], ["plain-20", "ResNet-20"], str(out))
    train_its, train_err = data["ResNet-20"]["train"]
    test_its, test_err = data["ResNet-20"]["test"]
    assert train_its == list(range(19, 400, 20)) and train_err[0] == pytest.approx(100 * (0.9 - 0.85 / 20))
    assert train_err[-1] == pytest.approx(5.0)  # cls_error fraction -> percent
    assert test_its == [99, 199, 299, 399] and test_err[-1] == pytest.approx(8.75)  # already percent
    assert data["plain-20"]["test"][1][-1] == pytest.approx(15.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    import matplotlib.image

    assert matplotlib.image.imread(out).shape[:2] == (540, 840)  # 7 x 4.5 inches at 120 dpi


def test_cli_writes_png_and_reports_a_missing_run(tmp_path, plot_curves, capsys):
    run = fake_run(tmp_path / "a", 0.1, 10.0)
    out = tmp_path / "cli.png"
    plot_curves.main(["--runs", str(run), "--output", str(out)])
    assert out.stat().st_size > 10_000 and "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        plot_curves.main(["--runs", str(tmp_path / "nope"), "--output", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "nope" in err and "metrics.json" in err


def test_epoch_axis_and_figure_6_line_styles(tmp_path, plot_curves):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = fake_run(tmp_path / "r", 0.1, 10.0)
    captured = {}
    save = plt.Figure.savefig

    def keep(fig, *args, **kwargs):  # the figure as it is saved
        captured["lines"] = [(tuple(line.get_xdata()), line.get_linestyle(), line.get_linewidth(), line.get_label())
                             for line in fig.axes[0].get_lines()]
        captured["xlabel"] = fig.axes[0].get_xlabel()
        return save(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        plot_curves.main(["--runs", str(run), "--labels", "ResNet-20", "--iters-per-epoch", "100",
                          "--output", str(tmp_path / "e.png")])
    finally:
        plt.Figure.savefig = save
    (train_x, train_style, train_width, train_label), (test_x, test_style, test_width, _) = captured["lines"]
    assert captured["xlabel"] == "epochs" and train_label == "ResNet-20 (train)"
    assert test_x == (1.0, 2.0, 3.0, 4.0) and train_x[0] == pytest.approx(0.2)  # iteration 19 -> 20 / 100 epochs
    assert (train_style, train_width, test_style, test_width) == ("--", 1.0, "-", 2.0)  # thin training, bold test


def test_accuracy_and_loss_pictures(tmp_path, plot_curves):
    run = fake_run(tmp_path / "r", 0.05, 8.75)
    accuracy = plot_curves.plot_runs([str(run)], ["ResNet-20"], str(tmp_path / "acc.png"), metric="accuracy")
    assert accuracy["ResNet-20"]["train"][1][-1] == pytest.approx(95.0)  # 100 - 5 % training error
    assert accuracy["ResNet-20"]["test"][1][-1] == pytest.approx(91.25)
    loss = plot_curves.plot_runs([str(run)], ["ResNet-20"], str(tmp_path / "loss.png"), metric="loss")
    its, values = loss["ResNet-20"]["train"]
    assert its[0] == 19 and values[0] == pytest.approx(2.0 - 20 / 400) and values[-1] == pytest.approx(1.0)
    assert loss["ResNet-20"]["test"] == ([], [])
    assert (tmp_path / "loss.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_curves.plot_runs([str(run)], ["r"], str(tmp_path / "x.png"), metric="f1")
