"""The two lines an ``ablate fit`` prints before training: where the run is written, and the network.

    run: runs/quickstart_fast/version_0 (MNIST, 10 classes)
    network: InceptionMNIST, 97.3 K parameters (all trainable), 2.4 M multiply-adds per 1x28x28 image

Lightning's own summary lists every submodule of the LightningModule, the metric objects included,
with a FLOPs column that stays 0 unless ``example_input_array`` is set. This one describes the
network alone; its multiply-adds are counted by ``torch.utils.flop_counter`` (FLOPs / 2, as
``ablate zoo`` counts them) on one image of the data's shape, in eval mode. ``--verbose`` adds
Lightning's full table (lightning_modules/ablate_cli.py).
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelSummary
from pytorch_lightning.utilities.model_summary import get_human_readable_count
from torch.utils.flop_counter import FlopCounterMode


def multiply_adds(network: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one eval-mode forward pass of ``network`` on one input of ``input_shape`` (C, H, W)."""
    network = getattr(network, "_orig_mod", network)  # a compiled network: count the eager one, compile nothing
    parameter = next(network.parameters(), None)
    image = torch.zeros(
        1,
        *input_shape,
        device=parameter.device if parameter is not None else "cpu",
        dtype=parameter.dtype if parameter is not None and parameter.is_floating_point() else None,
    )
    modes = {module: module.training for module in network.modules()}
    network.eval()  # the count of inference (aux heads off), and no batch statistics of a zero image
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            network(image)
    finally:
        for module, training in modes.items():
            module.train(training)
    return counter.get_total_flops() // 2


class RunSummary(ModelSummary):
    """Before training: the run folder and data, then the network's class, parameters and multiply-adds.

    A ``ModelSummary`` for Lightning, so the trainer adds no summary of its own beside it.
    """

    def __init__(self) -> None:
        super().__init__(max_depth=1)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a broadcast under DDP: every rank must ask, not rank 0 alone
        if not trainer.is_global_zero:
            return
        network = getattr(pl_module, "network", pl_module)
        data = trainer.datamodule
        in_chans, size = getattr(data, "in_chans", None), getattr(data, "image_size", None)
        run = f"run: {log_dir}"
        if data is not None:
            name = type(data).__name__.removesuffix("DataModule") or type(data).__name__
            classes = getattr(data, "num_classes", None)
            run += f" ({name}, {classes} classes)" if classes else f" ({name})"
        total = sum(p.numel() for p in network.parameters())
        trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
        line = f"network: {type(network).__name__}, {get_human_readable_count(total)} parameters " + (
            "(all trainable)" if trainable == total else f"({get_human_readable_count(trainable)} trainable)"
        )
        if in_chans and size:
            shape = (in_chans, *((size, size) if isinstance(size, int) else size))
            try:
                macs = multiply_adds(network, shape)
            except Exception:  # noqa: BLE001 - left uncounted: the first training step reports the error in full
                macs = None
            if macs is not None:
                line += f", {get_human_readable_count(macs)} multiply-adds per {'x'.join(map(str, shape))} image"
        print(run, line, sep="\n", flush=True)
