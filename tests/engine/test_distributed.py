"""Two CPU processes (gloo, spawned by ``launch``) with the same total batch reach the weights of one."""
import json
import logging

import torch

from detres.engine.launch import launch

from tests.engine.toy import ddp_main, toy_cfg


def run(out_dir, num_processes):
    cfg = toy_cfg(out_dir, MAX_ITER=6, IMS_PER_BATCH=16, CHECKPOINT_PERIOD=1000, WEIGHT_DECAY=1e-3, MOMENTUM=0.9)
    cfg.MODEL.META_ARCHITECTURE = "EngineToyMLPNoDropout"  # deterministic model, BN-free
    cfg.TEST.EVAL_PERIOD = 3
    launch(ddp_main, num_processes, dist_url="auto", args=(cfg.dump(), "PlainToyTrainer"), backend="gloo")
    logging.getLogger("detres").handlers.clear()
    lines = [json.loads(x) for x in (out_dir / "metrics.json").read_text().splitlines()]
    info = json.loads((out_dir / "run_info.json").read_text())
    return torch.load(out_dir / "model_final.pth", weights_only=True), lines, info


def test_two_gloo_processes_match_one_process_with_same_total_batch(tmp_path):
    one, one_lines, one_info = run(tmp_path / "one", 1)
    two, two_lines, two_info = run(tmp_path / "two", 2)
    assert (one_info["world_size"], two_info["world_size"]) == (1, 2)
    assert one["iteration"] == two["iteration"] == 6
    assert len(two["rng_states"]) == 2  # every process's RNG state is in the checkpoint
    for name, w in one["model"].items():
        assert torch.allclose(w, two["model"][name], rtol=1e-5, atol=1e-6), name
    # the evaluation gathered both shards: same error on the same 128 images
    evals = [[x["engine_toy_val/top1_error"] for x in lines if "engine_toy_val/top1_error" in x]
             for lines in (one_lines, two_lines)]
    assert evals[0] == evals[1] and len(evals[0]) == 2
    assert [x["engine_toy_val/num_images"] for x in two_lines if "engine_toy_val/num_images" in x] == [128.0, 128.0]
    # the logged losses are averaged over the processes: the total-batch loss
    losses = [[x["loss_cls"] for x in lines if "loss_cls" in x] for lines in (one_lines, two_lines)]
    assert torch.allclose(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-6)
