"""Family-specific checks for the classic nets: AlexNet/ZFNet, VGG, NIN, All-CNN, GoogLeNet,
Inception v3, Xception. Shape, gradient, count and torchvision checks live in test_zoo.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from architectures import AuxOutputs, count_params, create_model, list_models, model_info
from architectures.alexnet import AlexNet
from architectures.all_cnn import ALL_CNN_MODELS, AllCNN
from architectures.googlenet import GoogLeNet
from architectures.nin import NIN
from architectures.vgg import VGG
from architectures.xception import Xception

# Parameter counts of the twelve Table 3 models, summed by hand from Tables 1 and 2 (with biases,
# 10 classes). Table 3 itself rounds several of them differently (Model C: ~1.3M).
ALL_CNN_PARAMS = {
    "model_a": 839_242,
    "strided_cnn_a": 839_242,
    "convpool_cnn_a": 1_254_250,
    "all_cnn_a": 1_254_250,
    "model_b": 885_610,
    "strided_cnn_b": 885_610,
    "convpool_cnn_b": 1_300_618,
    "all_cnn_b": 1_300_618,
    "model_c": 954_730,
    "strided_cnn_c": 954_730,
    "convpool_cnn_c": 1_369_738,
    "all_cnn_c": 1_369_738,
}


def _convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def _count(net: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


def _from_config(class_path: str, init_args: dict) -> nn.Module:
    """Instantiate the way a LightningCLI YAML does: ``class_path`` plus ``init_args``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=nn.Module)
    config = parser.parse_object({"model": {"class_path": class_path, "init_args": init_args}})
    return parser.instantiate(config).model


# --- All-CNN ---------------------------------------------------------------------------------


def test_all_cnn_registers_exactly_the_twelve_rows() -> None:
    assert set(list_models(family="all_cnn")) == set(ALL_CNN_MODELS) == set(ALL_CNN_PARAMS)


@pytest.mark.parametrize("row", sorted(ALL_CNN_PARAMS))
def test_all_cnn_row_count_and_layout(row: str) -> None:
    net = AllCNN(model=row)
    assert count_params(net) == ALL_CNN_PARAMS[row] == model_info(row).params
    convs = _convs(net)
    strided = [c for c in convs if c.stride == (2, 2)]
    pools = _count(net, nn.MaxPool2d)
    base = {"a": 5, "b": 7, "c": 7}[row[-1]]  # convs of Table 1's base model
    if row.startswith("model_"):
        assert (pools, len(strided), len(convs)) == (2, 0, base)
    elif row.startswith("strided_cnn_"):  # the layer before each pool gets stride 2, no pools
        assert (pools, len(strided), len(convs)) == (0, 2, base)
    elif row.startswith("convpool_cnn_"):  # a dense 3x3 conv before each pool
        assert (pools, len(strided), len(convs)) == (2, 0, base + 2)
    else:  # all_cnn_: each pool replaced by a 3x3/2 conv
        assert (pools, len(convs)) == (0, base + 2)
        assert [c.kernel_size for c in strided] == [(3, 3), (3, 3)]
    # Dropout 20% on the input and 50% right after each pool (or the layer replacing it).
    layers = list(net.features)
    assert isinstance(layers[0], nn.Dropout) and layers[0].p == 0.2
    drops = [i for i, m in enumerate(layers) if isinstance(m, nn.Dropout)][1:]
    assert len(drops) == 2 and all(layers[i].p == 0.5 for i in drops)
    for i in drops:
        before = layers[i - 1] if isinstance(layers[i - 1], nn.MaxPool2d) else layers[i - 2]
        assert isinstance(before, nn.MaxPool2d) or before.stride == (2, 2)
    assert net.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 10, 6, 6)  # Table 1's 6x6


def test_all_cnn_eval_is_deterministic_and_train_is_not() -> None:
    torch.manual_seed(0)
    net = AllCNN(model="all_cnn_c")
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))


def test_all_cnn_dropout_and_batch_norm_knobs() -> None:
    net = AllCNN(model="model_c", input_dropout=0.0, pool_dropout=0.3, batch_norm=True)
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.0, 0.3, 0.3]
    assert _count(net, nn.BatchNorm2d) == len(_convs(net)) == 7
    assert AllCNN(model="model_c", num_classes=100)(torch.zeros(1, 3, 32, 32)).shape == (1, 100)


def test_all_cnn_row_switches_by_one_config_key() -> None:
    net = _from_config("architectures.all_cnn.AllCNN", {"model": "strided_cnn_b"})
    assert isinstance(net, AllCNN) and net.model == "strided_cnn_b"
    assert count_params(net) == ALL_CNN_PARAMS["strided_cnn_b"]
    reference = create_model("strided_cnn_b")
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    with pytest.raises(ValueError, match="all_cnn_c"):
        AllCNN(model="all_cnn_d")


# --- VGG -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "convs", "lrn"),
    [("A", 8, 0), ("A-LRN", 8, 1), ("B", 10, 0), ("C", 13, 0), ("D", 13, 0), ("E", 16, 0)],
)
def test_vgg_configs_follow_table_1(config: str, convs: int, lrn: int) -> None:
    with torch.device("meta"):
        net = VGG(config=config)
    assert len(_convs(net)) == convs and _count(net, nn.Linear) == 3  # weight layers: convs + 3 FC
    assert _count(net, nn.LocalResponseNorm) == lrn


def test_vgg_c_has_1x1_convs_closing_the_last_three_stages() -> None:
    with torch.device("meta"):
        net = VGG(config="C")
    stages: list[list[int]] = [[]]
    for layer in net.features:
        if isinstance(layer, nn.MaxPool2d):
            stages.append([])
        elif isinstance(layer, nn.Conv2d):
            stages[-1].append(layer.kernel_size[0])
    assert stages[:-1] == [[3, 3], [3, 3], [3, 3, 1], [3, 3, 1], [3, 3, 1]]
    with torch.device("meta"):
        assert all(c.kernel_size == (3, 3) for c in _convs(VGG(config="D")))


def test_vgg_config_and_batch_norm_switch_by_constructor_arguments() -> None:
    net = _from_config("architectures.vgg.VGG", {"config": "C", "batch_norm": True, "hidden": [], "pool_size": 1})
    assert len(_convs(net)) == 13 and _count(net, nn.BatchNorm2d) == 13
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 1000)


def test_vgg16_cifar_head_is_one_linear_layer_after_global_pooling() -> None:
    net = create_model("vgg16_cifar")
    assert [type(m) for m in net.classifier] == [nn.Linear] and net.classifier[0].in_features == 512
    assert net.forward_features(torch.zeros(2, 3, 32, 32)).shape == (2, 512, 1, 1)


# --- AlexNet / ZFNet -------------------------------------------------------------------------


def test_zfnet_maps_follow_fig_3() -> None:
    with torch.device("meta"):
        net = create_model("zfnet")
        x = torch.zeros(1, 3, 224, 224)
        sizes = []
        for layer in net.features:
            x = layer(x)
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                sizes.append(x.shape[-1])
    assert sizes == [110, 55, 26, 13, 13, 13, 13, 6]
    assert _convs(net)[0].kernel_size == (7, 7) and _convs(net)[0].stride == (2, 2)


def test_alexnet_layouts_switch_by_one_argument_and_init_follows_the_paper() -> None:
    with torch.device("meta"):
        assert [c.out_channels for c in _convs(AlexNet(layout="zfnet"))] == [96, 256, 384, 384, 256]
    small = AlexNet(layout="cifar", num_classes=10, dropout=0.0, positive_bias=False)
    assert [c.out_channels for c in _convs(small)] == [64, 64]
    assert small.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 64, 8, 8)
    torch.manual_seed(0)
    net = AlexNet()
    biases = [c.bias.mean().item() for c in _convs(net)]
    assert biases == [0.0, 1.0, 0.0, 1.0, 1.0]  # AlexNet section 5
    assert 0.009 < _convs(net)[2].weight.std().item() < 0.011


# --- NIN -------------------------------------------------------------------------------------


def test_nin_has_no_fully_connected_layer_and_class_maps_before_pooling() -> None:
    net = NIN(num_classes=10)
    assert _count(net, nn.Linear) == 0 and len(_convs(net)) == 9
    assert [m.p for m in net.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    x = torch.randn(2, 3, 32, 32)
    assert net.forward_features(x).shape == (2, 10, 8, 8)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


# --- GoogLeNet / Inception v3 ----------------------------------------------------------------


# Return types only: these run on the meta device (shapes, no arithmetic), so even Inception v3
# at 299x299 costs nothing; test_zoo.py runs every network for real.
AUX_NETS = [("googlenet", 224, 2), ("googlenet_cifar", 32, 2), ("inception_v3", 299, 1)]


@pytest.mark.parametrize(("name", "size", "n_aux"), AUX_NETS)
def test_aux_nets_return_aux_outputs_in_train_and_eval(name: str, size: int, n_aux: int) -> None:
    with torch.device("meta"):
        net = create_model(name, num_classes=5)
        x = torch.zeros(2, 3, size, size)
        train_out = net.train()(x)
        eval_out = net.eval()(x)
    assert isinstance(train_out, AuxOutputs) and len(train_out.aux) == n_aux
    assert train_out.logits.shape == (2, 5) and all(aux.shape == (2, 5) for aux in train_out.aux)
    assert isinstance(eval_out, AuxOutputs) and eval_out.aux == () and eval_out.logits.shape == (2, 5)


@pytest.mark.parametrize(("name", "size"), [("googlenet_noaux", 224), ("inception_v3_noaux", 299)])
def test_noaux_nets_return_plain_tensors_in_train_and_eval(name: str, size: int) -> None:
    with torch.device("meta"):
        net = create_model(name, num_classes=5)
        outs = [net.train(mode)(torch.zeros(2, 3, size, size)) for mode in (True, False)]
    assert not hasattr(net, "aux1") and not hasattr(net, "AuxLogits")
    assert all(type(out) is torch.Tensor and out.shape == (2, 5) for out in outs)


def test_googlenet_knobs_stem_and_paper_5x5_branch() -> None:
    with torch.device("meta"):
        cifar = GoogLeNet(stem="cifar", num_classes=10)
        assert cifar.forward_features(torch.zeros(1, 3, 32, 32)).shape == (1, 1024, 8, 8)
        paper = GoogLeNet(branch3_kernel=5, aux_logits=False)
    assert paper.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert not hasattr(paper, "aux1") and count_params(paper) > model_info("googlenet_noaux").params


# --- Xception --------------------------------------------------------------------------------


def test_xception_has_36_conv_layers_and_timm_layout() -> None:
    with torch.device("meta"):
        net = create_model("xception")
        assert net.forward_features(torch.zeros(1, 3, 299, 299)).shape == (1, 2048, 10, 10)
    depthwise = [c for c in _convs(net) if c.groups > 1]
    # Section 3: 36 convolutional layers form the feature extractor (1x1 shortcuts excluded).
    assert len(depthwise) == 34 and sum(c.kernel_size == (3, 3) and c.groups == 1 for c in _convs(net)) == 2
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["block1.rep.0.conv1.weight"] == (64, 1, 3, 3)
    assert shapes["block12.rep.4.pointwise.weight"] == (1024, 728, 1, 1)
    assert shapes["block12.skip.weight"] == (1024, 728, 1, 1) and "block4.skip.weight" not in shapes
    with torch.device("meta"):
        shallow = Xception(middle_blocks=4)
    per_block = 3 * (728 * 9 + 728 * 728 + 2 * 728)  # depthwise + pointwise + BN, three times
    assert count_params(net) - count_params(shallow) == 4 * per_block
