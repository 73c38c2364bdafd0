"""Evaluation under DDP that counts every image exactly once.

Lightning gives every validation and test ``DataLoader`` a ``torch.utils.data.DistributedSampler``
under DDP, and that sampler pads: with 201 test images on 2 processes each takes 101, image 0
twice, and the synced accuracy is over 202 predictions (Lightning warns about it,
``_DataConnector._resolve_sampler``). Lightning's own ``UnrepeatedDistributedSampler`` (used for
``predict``) splits without padding instead: rank ``r`` of ``W`` takes indices ``r::W``, so
processes may run one batch fewer than others and torchmetrics syncs exact counts.

Uneven batch counts are safe in evaluation: DDP syncs buffers only on the first forward of an
evaluation loop, which every process runs as long as each holds an image, and our metrics are
reduced once per epoch (torchmetrics ``compute``), not per step. Training keeps Lightning's
padded, shuffled ``DistributedSampler``: a missing batch there would stall the gradient all-reduce.

Lightning leaves any ``DistributedSampler`` subclass in place (``_requires_distributed_sampler``),
so this works with the default ``use_distributed_sampler: true``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Sampler


def eval_sampler(dataset: Sized) -> Sampler | None:
    """The sampler of a validation, test or predict loader: unpadded under DDP, else None (sequential).

    Args:
        dataset: The split to evaluate.

    Returns:
        An ``UnrepeatedDistributedSampler`` (no shuffling) when ``torch.distributed`` is initialised
        with more than one process and every process gets at least one image; otherwise None, and
        the ``DataLoader`` (or Lightning, under DDP) picks the sampler.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world_size = dist.get_world_size()
    if world_size < 2 or len(dataset) < world_size:
        # Fewer images than processes: a process without a batch would stall DDP's first-forward
        # buffer sync, so leave Lightning's padding sampler in place for such tiny splits.
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=dist.get_rank(), shuffle=False)


class EpochShuffleSampler(Sampler[int]):
    """The training order: a permutation drawn from ``seed + epoch`` alone, resumable inside an epoch.

    Lightning calls ``set_epoch`` before every epoch, so epoch ``e`` has the same order in every run
    with the same seed, whatever ran before (a resumed run included); ``skip`` drops the start of
    one epoch's order, the batches a mid-epoch checkpoint had already trained on
    (``ResumableLoader.load_state_dict``). The convention is ``DistributedSampler``'s (``seed + epoch``).

    Args:
        num_items: Length of the split.
        seed: Seed of the orders (``ablate`` passes the run's ``seed_everything``).
    """

    def __init__(self, num_items: int, seed: int) -> None:
        self.num_items, self.seed, self.epoch = num_items, seed, 0
        self._skip: tuple[int, int] | None = None  # (epoch, items) to leave out once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, items: int) -> None:
        """Leave out the first ``items`` of ``epoch``'s order the next time that epoch is iterated."""
        self._skip = (epoch, items)

    def skipped(self) -> int:
        """How many items the next pass leaves out: 0 unless a skip of the current epoch is pending."""
        return self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        start = self.skipped()
        if start:
            self._skip = None
        return iter(order[start:].tolist())


class ResumableLoader(DataLoader):
    """A training ``DataLoader`` Lightning can checkpoint: ``state_dict`` (saved in every checkpoint)
    counts the batches served in the current epoch, ``load_state_dict`` (called when a run resumes
    inside an epoch) makes the next pass skip them. Lightning does not prefetch from loaders with
    a length, so "served" is "trained on"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._served = 0

    def __iter__(self) -> Iterator[Any]:
        skipped = self.sampler.skipped() if isinstance(self.sampler, EpochShuffleSampler) else 0
        self._served = skipped // self.batch_size
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch = self.sampler.epoch if isinstance(self.sampler, EpochShuffleSampler) else 0
        return {"epoch": epoch, "batches": self._served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochShuffleSampler):  # under DDP Lightning wraps the sampler: no skip
            self.sampler.skip(state_dict["epoch"], state_dict["batches"] * self.batch_size)


def split_loader(dataset: Sized, shuffle: bool, **kwargs: Any) -> DataLoader:
    """The loader of one split: training gets an order drawn from ``(seed, epoch)`` that a mid-epoch
    resume continues exactly, with its own generator so iterating never draws from the global RNG;
    evaluation, under DDP, is split without padding so each image counts once.

    Args:
        dataset: The split.
        shuffle: True for the training split.
        kwargs: Further ``DataLoader`` arguments (batch size, workers, collate function).
    """
    if not shuffle:
        return DataLoader(dataset, sampler=eval_sampler(dataset), **kwargs)
    seed = shuffle_seed()
    return ResumableLoader(
        dataset,
        sampler=EpochShuffleSampler(len(dataset), seed),
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def shuffle_seed() -> int:
    """The run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED``), else this process's torch seed."""
    return int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed() % 2**62))
