"""Command-line arguments and per-run set-up shared by the tools.

:func:`default_setup` writes the run's bookkeeping into ``OUTPUT_DIR`` (main process only):

* ``config.yaml``   the fully resolved config (``detres.config.load_config`` reads it back),
* ``run_info.json`` command line, working directory, detres version, git hash, seed, world size, time,
* ``env.txt``       software / hardware description,
* ``log.txt``       the log (see ``detres.utils.logger``).

The console gets a short summary of the run (config file, output folder, model, datasets, device,
seed); the full config and environment go to those files (and to the console with ``--verbose``).
:func:`removed_on_setup_failure` takes away an output folder that a run made and then failed to set
up (missing data or weights, a bad config value), so no half-made folder is left behind.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch

import detres
from detres.config import CfgNode
from detres.utils.file_io import atomic_write, make_dirs
from detres.utils import comm
from detres.utils.env import collect_env_info, draw_seed, git_hash, seed_all_rng
from detres.utils.logger import setup_logger

__all__ = ["default_argument_parser", "default_setup", "removed_on_setup_failure", "run_summary"]

RUN_INFO = "run_info.json"
RUN_FILES = ("config.yaml", RUN_INFO, "env.txt", "log.txt")


def default_argument_parser(description: str = "detres training and evaluation") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples:\n"
            "  tools/train_net.py --config configs/cifar10/resnet20.yaml\n"
            "  tools/train_net.py --config cfg.yaml --num-gpus 8 SOLVER.IMS_PER_BATCH 256\n"
            "  tools/train_net.py --config cfg.yaml --eval-only MODEL.WEIGHTS output/model_final.pth\n"
            "  torchrun --nproc-per-node 4 tools/train_net.py --config cfg.yaml\n"
            "Without GPUs (or with MODEL.DEVICE cpu), --num-gpus N starts N CPU processes using gloo."
        ),
    )
    parser.add_argument("--config-file", "--config", dest="config_file", default="", metavar="FILE",
                        help="YAML config (may use _BASE_ inheritance)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint of OUTPUT_DIR (start from scratch when there is none)")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate MODEL.WEIGHTS on DATASETS.TEST")
    parser.add_argument("--verbose", action="store_true",
                        help="also print the full config, the environment and the model on the console "
                             "(they always go to OUTPUT_DIR: config.yaml, env.txt, log.txt)")
    parser.add_argument("--num-gpus", "--num-processes", dest="num_gpus", type=int, default=1,
                        help="processes per machine: one per GPU, or CPU processes (gloo) without GPUs")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0, help="rank of this machine (0 .. num-machines - 1)")
    parser.add_argument("--dist-url", default="auto",
                        help="rendezvous URL of machine 0, e.g. tcp://10.0.0.1:29500 ('auto': a free local port)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.01")
    return parser


def _recorded_seed(output_dir: str) -> Optional[int]:
    path = os.path.join(output_dir, RUN_INFO)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return int(json.load(f)["seed"])


def default_setup(cfg: CfgNode, args: Optional[argparse.Namespace] = None,
                  argv: Optional[Sequence[str]] = None) -> CfgNode:
    """Resolve the seed, set up logging, write the run's bookkeeping into ``OUTPUT_DIR``, seed every
    RNG (``SEED + rank``) and freeze ``cfg``.

    A negative ``SEED`` is replaced by a drawn one (shared by all processes), or, with ``--resume``,
    by the seed recorded in ``OUTPUT_DIR/run_info.json`` so that the resumed data stream matches.
    """
    output_dir = cfg.OUTPUT_DIR
    rank = comm.get_rank()
    resume = bool(getattr(args, "resume", False))
    seed = int(cfg.SEED)
    if seed < 0:
        recorded = _recorded_seed(output_dir) if resume else None
        seed = comm.all_gather(draw_seed() if recorded is None else recorded)[0]
    cfg.defrost()
    cfg.SEED = seed
    cfg.freeze()

    if comm.is_main_process():
        make_dirs(output_dir)  # WriteError naming the folder when it cannot be made
    comm.synchronize()
    logger = setup_logger(output_dir, rank, verbose=bool(getattr(args, "verbose", False)))
    argv = list(sys.argv if argv is None else argv)
    logger.debug(f"Rank {rank} of {comm.get_world_size()}; command line: {shlex.join(argv)}")
    if comm.is_main_process():
        logger.info(run_summary(cfg, getattr(args, "config_file", None)))
        env = collect_env_info()
        logger.debug("Environment:\n" + env)
        logger.debug("Full config:\n" + cfg.dump())
        info = {
            "command": shlex.join(argv),
            "argv": argv,
            "cwd": os.getcwd(),
            "detres_version": detres.__version__,
            "git_hash": git_hash(),
            "seed": seed,
            "world_size": comm.get_world_size(),
            "args": vars(args) if args is not None else None,
            "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }
        files = {"config.yaml": cfg.dump(), RUN_INFO: json.dumps(info, indent=2) + "\n", "env.txt": env + "\n"}
        for name, text in files.items():
            atomic_write(os.path.join(output_dir, name), lambda f, t=text: f.write(t.encode()))
        logger.debug(f"Run info written to {output_dir}: {', '.join(files)}")

    seed_all_rng(seed + rank)
    torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    return cfg


def run_summary(cfg: CfgNode, config_file: Optional[str] = None) -> str:
    """A few lines saying what this run is: config file, output folder, model, datasets, device, seed."""
    from detres.modeling.meta_arch.build import resolve_device

    if cfg.MODEL.BACKBONE.NAME == "cifar_resnet":
        backbone = f"CIFAR ResNet-{cfg.MODEL.CIFAR_RESNETS.DEPTH}"
    else:
        backbone = f"ResNet-{cfg.MODEL.RESNETS.DEPTH} ({cfg.MODEL.RESNETS.NORM})"
    device = resolve_device(cfg.MODEL.DEVICE)
    if device.type == "cpu":
        device_text = f"cpu, {torch.get_num_threads()} threads"
    else:
        device_text = f"{device} ({torch.cuda.get_device_name(device)})" if torch.cuda.is_available() else str(device)
    world = comm.get_world_size()
    return "\n".join([
        f"detres {detres.__version__}: config {config_file or '(defaults)'}",
        f"  output    {os.path.abspath(cfg.OUTPUT_DIR)} ({', '.join(RUN_FILES)}: full config, environment, log)",
        f"  model     {cfg.MODEL.META_ARCHITECTURE} on {backbone}; weights: {cfg.MODEL.WEIGHTS or 'none (random init)'}",
        f"  datasets  train: {', '.join(cfg.DATASETS.TRAIN) or '-'}; test: {', '.join(cfg.DATASETS.TEST) or '-'}",
        f"  device    {device_text}" + (f"; {world} processes" if world > 1 else ""),
        f"  seed      {cfg.SEED}",
    ])


@contextmanager
def removed_on_setup_failure(output_dir: str) -> Iterator[None]:
    """Run a run's set-up (writing the run files, building the model, loading weights); if it fails and
    ``output_dir`` did not exist before, remove the folder it made, so that no half-made output folder
    is left behind. A folder that existed (a resumed run, earlier results) is kept, and the log says
    which set-up files this run wrote there. The exception propagates."""
    existed = os.path.isdir(output_dir)
    try:
        yield
    except BaseException:
        if comm.is_main_process() and os.path.isdir(output_dir):
            log = logging.getLogger("detres")
            if existed:
                written = [n for n in RUN_FILES if os.path.isfile(os.path.join(output_dir, n))]
                log.warning(f"Set-up failed; {output_dir} existed before this run and is kept "
                            f"(this run wrote its set-up files there: {', '.join(written)})")
            else:
                _close_file_handlers(log, output_dir)  # log.txt is open inside the folder
                shutil.rmtree(output_dir, ignore_errors=True)
                log.warning(f"Set-up failed; removed the output folder this run had made: {output_dir}")
        raise


def _close_file_handlers(log: logging.Logger, folder: str) -> None:
    folder = os.path.abspath(folder) + os.sep
    for handler in list(log.handlers):
        if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(folder):
            log.removeHandler(handler)
            handler.close()
