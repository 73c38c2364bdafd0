"""Every network family as plain ``nn.Module``s, registered by name.

Importing this package registers all families; ``create_model(name)`` builds one.
"""

from architectures.common import AuxOutputs, count_params
from architectures.registry import ModelInfo, ZooModel, create_model, list_models, model_info, register_model
from architectures.resnet_parts import register_shortcut

# Family modules register their builders on import.
from architectures import alexnet, all_cnn, densenet, googlenet, inception_mnist, inception_v3, lenet, nin, resnet, torchvision_zoo, vgg, xception  # noqa: E402,E501,F401  isort: skip  # fmt: skip

__all__ = [
    "AuxOutputs",
    "ModelInfo",
    "ZooModel",
    "count_params",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "register_shortcut",
]
