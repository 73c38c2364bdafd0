"""Name -> builder registry for every network in the zoo.

Each entry carries the metadata tests, sweeps and ``ablate zoo`` need: the family, the paper,
the parameter count the paper (or torchvision) states at the builder's default ``num_classes``,
and the native input size. Builders are plain functions returning an ``nn.Module``; registering
one never imports anything heavy.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of one registered network.

    Args:
        name: Registry name, e.g. ``"resnet20"``.
        family: Family it belongs to, e.g. ``"resnet_cifar"``.
        paper: Link to the paper the layout follows.
        params: Expected parameter count at ``num_classes`` (None where no number is published).
        input_size: Native input ``(channels, height, width)``.
        num_classes: Number of classes the count ``params`` refers to.
        torchvision: Name of the torchvision builder whose state dict ours matches, if any.
        builder: Function ``(**overrides) -> nn.Module``.
    """

    name: str
    family: str
    paper: str
    params: int | None
    input_size: tuple[int, int, int]
    num_classes: int
    torchvision: str | None
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    *,
    family: str,
    paper: str,
    params: int | None,
    input_size: tuple[int, int, int] = (3, 224, 224),
    num_classes: int = 1000,
    torchvision: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder under its function name."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, family, paper, params, input_size, num_classes, torchvision, builder)
        _name_data_arguments(builder, num_classes, input_size[0])
        return builder

    return decorate


def _name_data_arguments(builder: Callable[..., nn.Module], num_classes: int, in_chans: int) -> None:
    """Show ``num_classes`` and ``in_chans`` in the signature of a ``(**overrides)`` builder.

    A config may name a builder as its network (``class_path: architectures.resnet.resnet20``);
    jsonargparse reads its signature, and the CLI links the data's classes and channels into these
    two names. The builder's other overrides go under ``dict_kwargs``. Defaults are the registered
    ones, those ``params`` is counted at.
    """
    signature = inspect.signature(builder, follow_wrapped=False)
    params = list(signature.parameters.values())
    names = {param.name for param in params}
    if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD or names & {"num_classes", "in_chans"}:
        return
    data = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=int)
        for name, default in (("num_classes", num_classes), ("in_chans", in_chans))
    ]
    builder.__signature__ = signature.replace(parameters=[*params[:-1], *data, params[-1]])


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered names matching a shell-style ``pattern`` (and ``family``), sorted."""
    return sorted(
        name
        for name, info in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (family is None or info.family == family)
    )


def model_info(name: str) -> ModelInfo:
    """Metadata of ``name``; a clear error listing close names when it is unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown architecture {name!r}.{hint} Run `ablate zoo` to list all {len(_REGISTRY)} registered networks."
        ) from None


# (in_chans, num_classes) of the datasets the zoo's variants are published on, for
# ``create_model(name, dataset=...)``.
DATASETS: dict[str, tuple[int, int]] = {
    "mnist": (1, 10),
    "cifar10": (3, 10),
    "cifar100": (3, 100),
    "imagenet": (3, 1000),
}


def create_model(name: str, dataset: str | None = None, **overrides) -> nn.Module:
    """Build the registered network ``name``; ``overrides`` win over the variant's arguments.

    Args:
        name: Registry name, e.g. ``"resnet20"`` (``ablate zoo`` lists them).
        dataset: ``"mnist"``, ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``: its channels and
            classes (explicit ``in_chans``/``num_classes`` still win). None keeps the variant's own,
            those of the dataset it was published on (``model_info(name).input_size``).
        **overrides: Keyword arguments of the builder, e.g. ``num_classes=5``, ``downsample="B"``.
    """
    if dataset is not None:
        if dataset not in DATASETS:
            raise ValueError(
                f"unknown dataset {dataset!r}; give one of {', '.join(DATASETS)}, "
                "or in_chans= and num_classes= yourself"
            )
        in_chans, num_classes = DATASETS[dataset]
        overrides = {"in_chans": in_chans, "num_classes": num_classes, **overrides}
    return model_info(name).builder(**overrides)


class ZooModel(nn.Module):
    """Config entry point for any registered network: ``class_path: architectures.ZooModel``.

    Constructing it returns the registered network itself (not a wrapper), so checkpoints keep
    the network's own state-dict keys. LightningCLI links the data's ``num_classes`` and
    ``in_chans`` into these arguments; left unset (in Python), they are those of the dataset the
    variant was published on (``ZooModel("resnet20")`` takes 3-channel images, 10 classes).
    """

    def __new__(
        cls,
        name: str = "inception_mnist",
        num_classes: int | None = None,
        in_chans: int | None = None,
        overrides: dict | None = None,
    ) -> nn.Module:
        info = model_info(name)
        num_classes = info.num_classes if num_classes is None else num_classes
        in_chans = info.input_size[0] if in_chans is None else in_chans
        return create_model(name, num_classes=num_classes, in_chans=in_chans, **(overrides or {}))

    def __init__(
        self,
        name: str = "inception_mnist",
        num_classes: int | None = None,
        in_chans: int | None = None,
        overrides: dict | None = None,
    ) -> None:
        """Args:
        name: Registry name of the network (``ablate zoo`` lists them).
        num_classes: Number of output classes (linked from the data module); None: the variant's.
        in_chans: Number of input channels (linked from the data module); None: the variant's.
        overrides: Keyword arguments passed to the builder, e.g. ``{downsample: B}``.
        """
        raise AssertionError("unreachable: __new__ returns the registered network")
