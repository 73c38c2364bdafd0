"""Transfer learning: start from saved weights, freeze part of the network, find its head.

``FineTune`` (``--fine_tune.*`` on ``ablate``) is the callback that loads the starting weights, freezes
parameters by name prefix, keeps the frozen batch-norm layers' statistics, and trains the head at its
own learning rate.

Weights come from a local state-dict file in torchvision's layout (the zoo's torchvision-layout
networks share its keys: ``alexnet``, ``vgg*``, ``resnet*``, ``densenet*``, ...), from one of our
own Lightning checkpoints (its ``network.`` keys), or from a torchvision weights name such as
``"AlexNet_Weights.IMAGENET1K_V1"`` (downloaded through torch.hub where the network allows; see
``architectures.pretrained`` for the registered builders' own ``pretrained`` argument, which
also knows the legacy DenseNet keys). Files are read with ``torch.load(weights_only=True)``, which
cannot execute code from the file.

The networks are built with the data's ``num_classes``, so a checkpoint's head of another width
does not fit: ``load_weights`` then leaves the new head freshly initialised and says so, the
"replace the last layer" step of fine-tuning.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from collections.abc import Iterable

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from lightning_modules.param_groups import check_prefixes, matches

# What `--fine_tune.weights` takes, said in every error about it.
_WHAT_WEIGHTS_HOLD = (
    "--fine_tune.weights takes a file saved with torch.save(network.state_dict(), path), one of our checkpoints "
    "(a .ckpt written by `ablate fit`), or a torchvision weights name like 'ResNet18_Weights.IMAGENET1K_V1'"
)


def head_name(network: nn.Module) -> str:
    """The last module owning parameters: the classifier of every zoo network (``fc``,
    ``classifier.6``, ``classifier.1``, ...)."""
    owners = [name for name, module in network.named_modules() if any(True for _ in module.parameters(recurse=False))]
    if not owners:
        raise ValueError(f"{type(network).__name__} has no parameters")
    return owners[-1]


def read_state_dict(source: str) -> dict[str, torch.Tensor]:
    """A state dict from a file (plain, ``{"state_dict": ...}`` or a Lightning checkpoint of this
    classifier) or a torchvision weights name like ``"ResNet18_Weights.IMAGENET1K_V1"``."""
    if os.path.isfile(source):
        try:
            state = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:  # weights_only refused a non-tensor object
            raise ValueError(f"weights file {source} holds objects other than tensors; refused ({error})") from None
        except Exception as error:  # noqa: BLE001 - zip, pickle-opcode and EOF errors: none is a weights file
            with open(source, "rb") as handle:
                head = handle.read(4)
            # torch.save writes a zip archive (or, before torch 1.6, a pickle starting with byte 0x80).
            if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":
                problem = "is not a PyTorch file (torch.save writes a zip archive)"
            else:
                cause = str(error).splitlines()[0] if str(error) else type(error).__name__
                problem = f"is truncated or corrupt ({cause})"
            raise ValueError(f"weights file {source} {problem}; {_WHAT_WEIGHTS_HOLD}") from None
        if isinstance(state, dict):
            state = state.get("state_dict", state)
        if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
            what = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict of other things than tensors"
            raise ValueError(f"weights file {source} holds {what}, not a state dict; {_WHAT_WEIGHTS_HOLD}")
        if state and all(key.startswith("network.") for key in state if not key.startswith("ema_network.")):
            state = {key.removeprefix("network."): value for key, value in state.items() if key.startswith("network.")}
        return state
    if "_Weights." not in source:
        raise FileNotFoundError(
            f"weights {source!r}: no such file, and not a torchvision weights name like 'AlexNet_Weights.IMAGENET1K_V1'"
        )
    import torchvision

    try:
        weights = torchvision.models.get_weight(source)
    except (ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"weights {source!r} is not a torchvision weights name ({error})") from None
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except OSError as error:  # URLError, timeouts, refused connections
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"could not download {source} from {weights.url} ({error}). Offline? Fetch the file elsewhere and "
            f"pass its path as `weights`, or put it in {cache}/."
        ) from error


def load_weights(network: nn.Module, source: str, skip_mismatched_head: bool = True) -> list[str]:
    """Load ``source`` into ``network`` in place; returns the checkpoint keys left out.

    Args:
        network: The network to fill (e.g. built with the new data's ``num_classes``).
        source: A state-dict file or a torchvision weights name (see ``read_state_dict``).
        skip_mismatched_head: Leave the head's parameters freshly initialised when their shapes
            differ from the checkpoint's (another ``num_classes``), with a log line naming them;
            False makes any shape difference an error.

    Raises:
        ValueError: Shapes differ outside the head (or anywhere, without ``skip_mismatched_head``),
            or keys are missing or unexpected.
    """
    state = read_state_dict(source)
    from lightning_modules.divergence import non_finite_tensors

    if bad := non_finite_tensors(state):
        raise ValueError(
            f"{source} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): it is not a trained "
            "model; give --fine_tune.weights a checkpoint saved before the run diverged"
        )
    own = network.state_dict()
    mismatched = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    head = head_name(network)
    outside_head = [key for key in mismatched if not matches(key, head)]
    if outside_head or (mismatched and not skip_mismatched_head):
        shapes = ", ".join(f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}" for key in mismatched[:4])
        hint = "" if outside_head else "; set fine_tune.skip_mismatched_head true to start a new head"
        raise ValueError(f"{source} does not fit {type(network).__name__} (checkpoint vs network: {shapes}){hint}")
    if mismatched:
        shapes = ", ".join(f"{key} {tuple(state[key].shape)} -> {tuple(own[key].shape)}" for key in mismatched)
        rank_zero_info(f"load_weights: new head {head!r}, not loaded from {source} (shapes differ: {shapes})")
    kept = OrderedDict((key, value) for key, value in state.items() if key not in mismatched)
    if hasattr(state, "_metadata"):  # per-module versions: BatchNorm loads by them
        kept._metadata = state._metadata
    result = network.load_state_dict(kept, strict=False)
    missing = [key for key in result.missing_keys if key not in mismatched]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source} does not match {type(network).__name__}: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    rank_zero_info(f"load_weights: {len(kept)} tensors loaded into {type(network).__name__} from {source}")
    return mismatched


def freeze(network: nn.Module, prefixes: Iterable[str], setting: str = "freeze") -> list[str]:
    """Set ``requires_grad=False`` on every parameter under one of ``prefixes``; returns their names.

    Args:
        network: The network.
        prefixes: Parameter-name prefixes or module names, e.g. ``["features"]`` for AlexNet's
            convolutions, ``["conv1", "bn1", "layer1"]`` for a ResNet's first stage; ``""`` is
            the whole network.
    """
    prefixes = list(prefixes)
    check_prefixes(network, prefixes, setting)  # an unknown name is refused under the setting that gave it
    frozen = []
    for name, param in network.named_parameters():
        if any(matches(name, prefix) for prefix in prefixes):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def frozen_norm_layers(network: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Names of the batch-norm layers under ``prefixes``: kept in eval mode so their running
    statistics stay the checkpoint's (``FineTune``'s ``freeze_bn_stats``)."""
    prefixes = list(prefixes)
    return [
        name
        for name, module in network.named_modules()
        # _BatchNorm: torch's one base of BatchNorm1d/2d/3d, SyncBatchNorm and the lazy ones (no public one).
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(matches(name, p) for p in prefixes)
    ]


class FineTune(Callback):
    """Fine-tuning: start from saved weights, freeze part of the network, keep its batch-norm
    statistics, speed up the head.

    Applied when a run sets up, before the optimiser is built (frozen parameters stay out of it) and
    before Lightning wraps the network for DDP. Lightning's ``BaseFinetuning`` is built for unfreezing
    on a schedule and rebuilds the optimiser's parameter groups on resume; nothing here unfreezes.

    Args:
        weights: State-dict file (torchvision layout, or one of our checkpoints) or torchvision
            weights name (``AlexNet_Weights.IMAGENET1K_V1``) loaded into the network when a run
            starts without ``ckpt_path`` (a checkpoint being restored holds the weights instead).
        skip_mismatched_head: Leave the head freshly initialised when ``weights`` has another
            number of classes (logged); False makes that an error.
        freeze: Parameter-name prefixes / module names of the network whose parameters are not
            trained (``requires_grad=False``, left out of the optimiser), e.g. ``[features]``.
        freeze_bn_stats: Keep the batch-norm layers under ``freeze`` in eval mode, so their running
            statistics stay the loaded ones.
        head_lr_multiplier: Multiplier of the learning rate of the network's head (its last module
            with parameters, e.g. ``fc`` or ``classifier.6``); an entry of the classifier's
            ``lr_multipliers`` for exactly the head's name wins over it.
    """

    def __init__(
        self,
        weights: str | None = None,
        skip_mismatched_head: bool = True,
        freeze: list[str] | None = None,
        freeze_bn_stats: bool = True,
        head_lr_multiplier: float = 1.0,
    ) -> None:
        if head_lr_multiplier < 0:
            raise ValueError(f"fine_tune.head_lr_multiplier must be >= 0, got {head_lr_multiplier}")
        self.weights = weights
        self.skip_mismatched_head = skip_mismatched_head
        self.freeze = list(freeze or [])
        self.freeze_bn_stats = freeze_bn_stats
        self.head_lr_multiplier = head_lr_multiplier
        self._frozen_norms: list[nn.Module] = []
        # Networks the weights went into: a test after fit in the same process sets up again and must
        # evaluate the trained weights, not the starting ones.
        self._loaded: set[int] = set()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        network = pl_module.network
        resuming = getattr(trainer, "ckpt_path", None) is not None
        if self.weights and id(network) not in self._loaded and not resuming:
            load_weights(network, self.weights, skip_mismatched_head=self.skip_mismatched_head)
            self._loaded.add(id(network))
        if self.head_lr_multiplier != 1.0:
            pl_module.lr_multipliers.setdefault(head_name(network), self.head_lr_multiplier)
        freeze(network, self.freeze, "fine_tune.freeze")
        names = frozen_norm_layers(network, self.freeze) if self.freeze_bn_stats else []
        self._frozen_norms = [network.get_submodule(name) for name in names]

    def on_train_batch_start(self, *args: object) -> None:
        # Lightning puts the whole module in train mode when training starts and after every
        # validation; the frozen statistics go back to eval before any batch normalises with them.
        for layer in self._frozen_norms:
            layer.eval()
