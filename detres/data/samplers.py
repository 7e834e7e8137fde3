"""Index samplers shared by the classification and detection loaders.

``TrainingSampler`` is an infinite, seeded, distributed-aware stream of dataset indices: epoch ``e`` of
the global stream is a permutation drawn from ``(seed, e)``; process ``r`` of ``w`` takes positions
``r, r + w, r + 2w, ...`` of the concatenated epochs, so the processes together see every image once
per epoch and the stream depends only on ``(seed, rank, world_size)``. ``start`` skips that many of
this process's indices: a run resumed at iteration ``i`` with ``b`` images per process passes
``start=i * b`` and continues exactly where it stopped.

``GroupedBatchSampler`` batches a ``TrainingSampler``'s stream so that a batch never mixes groups
(detection's aspect-ratio grouping). ``InferenceSampler`` splits ``range(size)`` into contiguous, ordered, disjoint shards, one per process.
"""
from __future__ import annotations

import itertools
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from torch.utils.data import Sampler

__all__ = ["GroupedBatchSampler", "InferenceSampler", "TrainingSampler", "trivial_batch_collator"]


def _dist_info(rank: Optional[int], world_size: Optional[int]):
    if rank is None or world_size is None:
        from detres.utils import comm

        rank = comm.get_rank() if rank is None else rank
        world_size = comm.get_world_size() if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    return rank, world_size


class TrainingSampler(Sampler[int]):
    def __init__(self, size: int, shuffle: bool = True, seed: int = 0, start: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        if size <= 0:
            raise ValueError(f"TrainingSampler needs a non-empty dataset, got size {size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.size, self.shuffle, self.seed, self.start = size, shuffle, int(seed), start
        self.rank, self.world_size = _dist_info(rank, world_size)

    def _global_stream(self, first_epoch: int) -> Iterator[int]:
        for epoch in itertools.count(first_epoch):
            if self.shuffle:
                yield from np.random.default_rng([self.seed, epoch]).permutation(self.size).tolist()
            else:
                yield from range(self.size)

    def __iter__(self) -> Iterator[int]:
        first = self.start * self.world_size + self.rank  # global position of this process's next index
        epoch, offset = divmod(first, self.size)
        stream = itertools.islice(self._global_stream(epoch), offset, None)
        return itertools.islice(stream, 0, None, self.world_size)

    def iter_with_positions(self) -> Iterator[Tuple[int, int]]:
        """``(index, global stream position)`` pairs; the position is a stable key of the sample
        (e.g. to seed its augmentation) that depends neither on the process count nor on resuming."""
        first = self.start * self.world_size + self.rank
        return ((index, first + k * self.world_size) for k, index in enumerate(self))


class InferenceSampler(Sampler[int]):
    def __init__(self, size: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> None:
        self.rank, self.world_size = _dist_info(rank, world_size)
        shard = (size + self.world_size - 1) // self.world_size
        self.indices = range(min(self.rank * shard, size), min((self.rank + 1) * shard, size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class GroupedBatchSampler:
    """Batches of ``(index, global stream position)`` pairs of a ``TrainingSampler`` whose indices share
    a group id (e.g. landscape vs portrait images).

    A group's indices wait in a bucket until it holds ``batch_size``, so a batch never mixes groups.
    Batches depend on the whole stream before them, so ``set_start_iter(i)`` replays the (cheap,
    index-only) stream from its beginning and skips ``i`` batches: a resumed run continues with the
    same batches as the uninterrupted one.
    """

    def __init__(self, sampler: TrainingSampler, group_ids, batch_size: int, start_iter: int = 0) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if sampler.start != 0:
            raise ValueError("GroupedBatchSampler replays the stream from its start: give it a sampler with start=0")
        self.sampler, self.group_ids, self.batch_size = sampler, np.asarray(group_ids), batch_size
        self.set_start_iter(start_iter)

    def set_start_iter(self, start_iter: int) -> None:
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.start_iter = start_iter

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        buckets: Dict[int, List[Tuple[int, int]]] = {}
        emitted = 0
        for index, position in self.sampler.iter_with_positions():
            bucket = buckets.setdefault(int(self.group_ids[index]), [])
            bucket.append((index, position))
            if len(bucket) == self.batch_size:
                if emitted >= self.start_iter:
                    yield list(bucket)
                emitted += 1
                bucket.clear()


def trivial_batch_collator(batch: List[dict]) -> List[dict]:
    """The loaders' ``collate_fn``: a batch stays a list of per-image dicts (models batch themselves)."""
    return batch
