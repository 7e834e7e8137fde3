#!/usr/bin/env python
"""Train or evaluate any detres model (classification or detection) from a config.

    python tools/train_net.py --config X.yaml [KEY VALUE ...]
    python tools/train_net.py --config X.yaml --resume                 # continue OUTPUT_DIR's last checkpoint
    python tools/train_net.py --config X.yaml --eval-only MODEL.WEIGHTS path/or/url
    python tools/train_net.py --config X.yaml --num-gpus 8             # one process per GPU (NCCL)
    python tools/train_net.py --config X.yaml --num-gpus 2 MODEL.DEVICE cpu   # 2 CPU processes (gloo)
    torchrun --nproc-per-node 4 tools/train_net.py --config X.yaml     # env:// rendezvous

The task (loaders, evaluator) follows from the datasets' metadata and the model from
MODEL.META_ARCHITECTURE. A config error (unknown key, wrong type) prints one line and exits with 2;
missing data (checked first, before the model is built) or undownloadable weights print one line
saying what to do and exit with 1; a run that fails before training starts removes the output folder
it made. The console shows a short summary of the run; --verbose adds the full config, environment
and model (always in OUTPUT_DIR: config.yaml, env.txt, log.txt).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detres.config import ConfigError, load_config  # noqa: E402
from detres.data.build import DatasetError, check_datasets  # noqa: E402
from detres.data.classification.datasets import DatasetLayoutError  # noqa: E402
from detres.engine.blockwise import blockwise_phases, train_blockwise  # noqa: E402
from detres.engine.checkpoint import Checkpointer  # noqa: E402
from detres.engine.defaults import default_argument_parser, default_setup, removed_on_setup_failure  # noqa: E402
from detres.engine.launch import WorkerFailedError, default_backend, launch  # noqa: E402
from detres.engine.trainer import Trainer  # noqa: E402
from detres.evaluation.classes import check_test_datasets  # noqa: E402
from detres.modeling.meta_arch.build import resolve_device  # noqa: E402
from detres.utils import comm  # noqa: E402
from detres.utils.download import DownloadError  # noqa: E402
from detres.utils.file_io import WriteError, atomic_write  # noqa: E402

logger = logging.getLogger("detres.train_net")


def load_for_evaluation(cfg, args):
    """The model of ``--eval-only`` with its weights, and the class names they record."""
    model = Trainer.build_model(cfg)
    checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, save_to_disk=False)
    if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
        raise ConfigError("--eval-only needs MODEL.WEIGHTS (or --resume with a checkpoint in OUTPUT_DIR)")
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume,
                                require_class_layers=not cfg.TEST.ALLOW_CLASS_MISMATCH)
    return model, checkpointer.class_names


def evaluate(cfg, model, class_names):
    results = Trainer.test(cfg, model, class_names=class_names)
    if comm.is_main_process():
        path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
        atomic_write(path, lambda f: f.write((json.dumps(results, indent=2) + "\n").encode()))
        logger.info(f"Evaluation results written to {path}:\n{json.dumps(results, indent=2)}")
    return results


def main(args):
    try:
        cfg = load_config(args.config_file, args.opts)
        # set-up: inputs checked, model built, weights loaded; a failure here leaves no half-made folder
        with removed_on_setup_failure(cfg.OUTPUT_DIR):
            cfg = default_setup(cfg, args)
            check_datasets(cfg, train=not args.eval_only)  # missing data fails before any model or download
            check_test_datasets(cfg)  # a class-count mismatch fails now, not after training
            if args.eval_only:
                model, class_names = load_for_evaluation(cfg, args)
            elif cfg.SOLVER.BLOCKWISE.ENABLED:
                blockwise_phases(cfg)  # a bad phase schedule fails now
            else:
                trainer = Trainer(cfg)
                trainer.resume_or_load(resume=args.resume)
        if args.eval_only:
            return evaluate(cfg, model, class_names)
        if cfg.SOLVER.BLOCKWISE.ENABLED:  # phases of ordinary runs in OUTPUT_DIR/phase<k>
            return train_blockwise(cfg, resume=args.resume)
        return trainer.train()
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FileNotFoundError, DatasetLayoutError, DatasetError, DownloadError, WriteError) as e:  # missing input, unwritable output
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def cli(argv=None) -> None:
    args = default_argument_parser(__doc__).parse_args(argv)
    try:  # validate in the launching process: errors print once, before any process is spawned
        cfg = load_config(args.config_file, args.opts)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    use_gpu = resolve_device(cfg.MODEL.DEVICE).type == "cuda"
    try:
        launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args,), backend=default_backend(use_gpu))
    except WorkerFailedError as e:  # a spawned process failed; it printed its own error
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code if e.exit_code in (1, 2) else 1)  # 2: a config error, as in one process


if __name__ == "__main__":
    cli()
