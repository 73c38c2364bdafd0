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

from collections.abc import Sized

import torch.distributed as dist
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Sampler


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
