"""ResNet / DenseNet / torchvision-zoo specifics the registry-wide tests in test_zoo.py do not see:
the CIFAR counts of He et al. 2015 (options A and B, plain nets), the shortcut and unit variants
of He et al. 2016b, the papers' rounded counts, knobs, and pretrained-weight loading."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from architectures import count_params, create_model
from architectures.densenet import DenseLayer, DenseNet
from architectures.resnet import ResNet
from architectures.resnet_parts import (
    SHORTCUTS,
    UNITS,
    BNAfterAddUnit,
    ConvSpec,
    ExclusiveGateShortcut,
    NoShortcut,
    OriginalUnit,
    PreactUnit,
    ReLUBeforeAddUnit,
    ResidualUnit,
    ShortcutGateShortcut,
    make_shortcut,
)
from architectures.torchvision_zoo import ZOO_CLASSES

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
# Option A counts at 10 classes (the registry's), and option B (+2,752: the two projection shortcuts
# 16->32 and 32->64, conv + BN), the figures sometimes quoted as option A's ("ResNet-20: 272,474").
OPTION_A = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
OPTION_B = {20: 272_474, 32: 466_906, 44: 661_338, 56: 855_770, 110: 1_730_714, 1202: 19_424_026}
TABLE6_MILLIONS = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}  # He et al. 2015, Table 6


def _meta_count(name: str, **overrides) -> int:
    with torch.device("meta"):
        return count_params(create_model(name, **overrides))


def _units(net: nn.Module) -> list[ResidualUnit]:
    return [m for m in net.modules() if isinstance(m, ResidualUnit)]


def _millions(count: int, digits: int) -> float:
    return round(count / 1e6, digits)


# --- CIFAR ResNets and plain nets (He et al. 2015, Sec. 4.2) ----------------------------------


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_cifar_counts_option_a_and_b(depth: int) -> None:
    a = _meta_count(f"resnet{depth}")
    b = _meta_count(f"resnet{depth}", downsample="B")
    assert (a, b) == (OPTION_A[depth], OPTION_B[depth])
    # Table 6's rounded figures are option A's: option B would read 0.47M and 0.86M for 32 and 56.
    assert _millions(a, 2 if depth < 100 else 1) == TABLE6_MILLIONS[depth]
    assert _meta_count(f"plain{depth}") == a  # option A shortcuts have no parameters


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_plain_nets_have_no_shortcuts(depth: int) -> None:
    with torch.device("meta"):
        net = create_model(f"plain{depth}")
    units = _units(net)
    assert len(units) * 2 + 2 == depth
    assert all(type(unit.downsample) is NoShortcut for unit in units)
    assert not any(True for unit in units for _ in unit.downsample.parameters())


def test_plain_unit_output_is_the_residual_branch_only() -> None:
    torch.manual_seed(0)
    plain, res = create_model("plain20").eval(), create_model("resnet20").eval()
    res.load_state_dict(plain.state_dict())
    x = torch.randn(1, 16, 8, 8)
    unit_plain, unit_res = plain.layer1[0], res.layer1[0]
    branch = unit_res.bn2(unit_res.conv2(unit_res.relu(unit_res.bn1(unit_res.conv1(x)))))
    torch.testing.assert_close(unit_plain(x), torch.relu(branch))
    torch.testing.assert_close(unit_res(x), torch.relu(branch + x))


def test_option_a_zero_pads_and_option_b_projects() -> None:
    a = create_model("resnet20")
    b = create_model("resnet20", downsample="B")
    assert count_params(a.layer2[0].downsample) == 0
    assert isinstance(b.layer2[0].downsample[0], nn.Conv2d) and b.layer2[0].downsample[0].stride == (2, 2)
    x = torch.randn(2, 16, 8, 8)
    out = a.layer2[0].downsample(x, torch.zeros(2, 32, 4, 4))
    torch.testing.assert_close(out[:, :16], x[:, :, ::2, ::2])
    assert (out[:, 16:] == 0).all()


# --- Shortcut variants (He et al. 2016b, Fig. 2 / Table 1) -------------------------------------


@pytest.mark.parametrize("shortcut", sorted(SHORTCUTS))
def test_every_shortcut_builds_and_runs_on_resnet20_and_110(shortcut: str) -> None:
    net = create_model("resnet20", shortcut=shortcut)
    assert all(type(unit.downsample) is SHORTCUTS[shortcut] for unit in _units(net))
    out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with torch.device("meta"):
        deep = create_model("resnet110", shortcut=shortcut)
    assert len(_units(deep)) == 54
    assert all(type(unit.downsample) is SHORTCUTS[shortcut] for unit in _units(deep))


def test_shortcut_is_switched_by_one_argument_only() -> None:
    base = create_model("resnet20")
    gated = create_model("resnet20", shortcut="shortcut_gate")
    base_keys = set(base.state_dict())
    gated_keys = {k for k in gated.state_dict() if ".downsample." not in k}
    assert base_keys == gated_keys  # the convs, BNs and head are untouched


def test_gate_bias_lands_in_the_gate_conv_bias() -> None:
    for name in ("exclusive_gate", "shortcut_gate"):
        net = create_model("resnet20", shortcut=name, shortcut_args={"gate_bias": -3.5})
        biases = [unit.downsample.gate.conv.bias for unit in _units(net)]
        assert len(biases) == 9
        assert all(torch.equal(b, torch.full_like(b, -3.5)) for b in biases)  # init_weights left it alone


def test_default_gate_bias_is_minus_six() -> None:
    net = create_model("resnet20", shortcut="exclusive_gate")
    assert torch.all(net.layer1[0].downsample.gate.conv.bias == -6.0)


def test_gating_formulas_on_a_tiny_unit() -> None:
    x, residual = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    for cls in (ExclusiveGateShortcut, ShortcutGateShortcut):
        shortcut = make_shortcut(
            "exclusive_gate" if cls is ExclusiveGateShortcut else "shortcut_gate", 4, 4, 1, gate_bias=0.7
        )
        nn.init.zeros_(shortcut.gate.conv.weight)  # g(x) = sigmoid(b_g) everywhere
        g = torch.sigmoid(torch.tensor(0.7))
        expected = (1 - g) * x + (g * residual if cls is ExclusiveGateShortcut else residual)
        torch.testing.assert_close(shortcut(x, residual), expected)


def test_constant_scaling_multiplies_by_half() -> None:
    x, residual = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    shortcut_only = make_shortcut("scale", 4, 4, 1)
    both = make_shortcut("scale", 4, 4, 1, residual_scale=0.5)
    torch.testing.assert_close(shortcut_only(x, residual), 0.5 * x + residual)
    torch.testing.assert_close(both(x, residual), 0.5 * x + 0.5 * residual)
    net = create_model("resnet20", shortcut="scale", shortcut_args={"shortcut_scale": 0.5, "residual_scale": 0.5})
    assert all(unit.downsample.residual_scale == 0.5 for unit in _units(net))


def test_dropout_shortcut_is_the_papers_unscaled_bernoulli_with_expectation_half_in_both_modes() -> None:
    """He et al. 2016b: dropout imposes a scale with expectation 0.5 on the shortcut; kept values are
    not rescaled in training, and evaluation multiplies by that expectation."""
    torch.manual_seed(0)
    x, residual = torch.randn(64, 8, 16, 16), torch.randn(64, 8, 16, 16)
    shortcut = make_shortcut("dropout", 8, 8, 1, p=0.5)
    torch.testing.assert_close(shortcut.eval()(x, residual), 0.5 * x + residual)
    kept = shortcut.train()(x, residual) - residual
    assert torch.all((kept == 0) | torch.isclose(kept, x, atol=1e-5)), "kept values are not rescaled"
    assert abs((kept != 0).float().mean() - 0.5) < 0.01
    # The expectation over masks is 0.5 x in training, as in evaluation.
    mean = torch.stack([shortcut(x, residual) - residual for _ in range(200)]).mean(0)
    slope = float((mean * x).sum() / (x * x).sum())  # least squares fit of mean = slope * x
    assert abs(slope - 0.5) < 0.01


def test_inverted_dropout_shortcut_keeps_the_shortcuts_expectation() -> None:
    torch.manual_seed(0)
    x, residual = torch.randn(4, 8, 6, 6), torch.randn(4, 8, 6, 6)
    shortcut = make_shortcut("dropout_inverted", 8, 8, 1, p=0.5)
    torch.testing.assert_close(shortcut.eval()(x, residual), x + residual)
    dropped = shortcut.train()(x, residual) - residual
    assert torch.all((dropped == 0) | torch.isclose(dropped, 2 * x))
    assert 0.3 < (dropped == 0).float().mean() < 0.7


def test_conv1x1_shortcut_projects_every_unit() -> None:
    net = create_model("resnet20", shortcut="conv1x1")
    assert all(isinstance(unit.downsample[0], nn.Conv2d) for unit in _units(net))
    # 1x1 conv + BN on 9 shortcuts: 7 identity-shaped (3x16x16 + 2x32x32 + 2x64x64), 2 reshaping
    extra = 3 * (16 * 16 + 32) + 2 * (32 * 32 + 64) + 2 * (64 * 64 + 128) + (16 * 32 + 64) + (32 * 64 + 128)
    assert count_params(net) == OPTION_A[20] + extra


def test_projection_keeps_torchvision_key_names() -> None:
    keys = set(create_model("resnet50").state_dict())
    assert {
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_var",
        "layer4.2.conv3.weight",
    } <= keys
    assert not any(".skip." in k for k in keys)


# --- Residual-unit variants (He et al. 2016b, Fig. 4 / Table 2) --------------------------------


@pytest.mark.parametrize("unit", sorted(UNITS))
@pytest.mark.parametrize("name", ["resnet20", "resnet110", "resnet164"])
def test_every_unit_builds_on_cifar_resnets(unit: str, name: str) -> None:
    with torch.device("meta"):
        net = create_model(name, unit=unit)
    assert all(type(u) is UNITS[unit] for u in _units(net))
    if name == "resnet20":
        net = create_model(name, unit=unit, shortcut="exclusive_gate")
        out = net(torch.randn(2, 3, 16, 16))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        out.sum().backward()
        assert all(p.grad is not None for p in net.parameters())


def _tiny_unit(cls: type[ResidualUnit]) -> ResidualUnit:
    torch.manual_seed(0)
    unit = cls([ConvSpec(4, 4, 3), ConvSpec(4, 4, 3)], make_shortcut("identity", 4, 4, 1)).eval()
    for module in unit.modules():  # non-trivial eval-mode BN so placements are distinguishable
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(-0.5, 0.5)
    return unit


def test_unit_placements_follow_fig4() -> None:
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        u = _tiny_unit(OriginalUnit)
        torch.testing.assert_close(u(x), torch.relu(x + u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(x)))))))
        u = _tiny_unit(BNAfterAddUnit)
        torch.testing.assert_close(u(x), torch.relu(u.bn2(x + u.conv2(torch.relu(u.bn1(u.conv1(x)))))))
        u = _tiny_unit(ReLUBeforeAddUnit)
        assert torch.all(u(x) - x >= 0)  # F(x) is non-negative
        u = _tiny_unit(UNITS["relu_preact"])
        torch.testing.assert_close(u(x), x + u.bn2(u.conv2(torch.relu(u.bn1(u.conv1(torch.relu(x)))))))
        u = _tiny_unit(PreactUnit)
        torch.testing.assert_close(u(x), x + u.conv2(torch.relu(u.bn2(u.conv1(torch.relu(u.bn1(x)))))))


def test_preact_net_moves_bn_into_units_and_adds_final_activation() -> None:
    original, preact = create_model("resnet164"), create_model("preact_resnet164")
    assert isinstance(original.bn1, nn.BatchNorm2d) and isinstance(original.final_bn, nn.Identity)
    assert isinstance(preact.bn1, nn.Identity) and isinstance(preact.final_bn, nn.BatchNorm2d)
    first = preact.layer1[0]
    assert first.bn1.num_features == first.conv1.in_channels == 16  # BN normalises the conv's input
    assert first.shortcut_sees_preact and not preact.layer1[1].shortcut_sees_preact


# --- Rounded counts of the papers; big nets counted on the meta device -------------------------


def _conv_and_fc_params(net: nn.Module) -> int:
    return sum(p.numel() for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


@pytest.mark.parametrize(
    ("name", "exact", "paper_millions"),
    [
        ("preact_resnet164", 1_703_258, 1.7),  # He et al. 2016b, Table 3
        ("preact_resnet1001", 10_327_706, 10.2),
        ("resnext29_8x64d", 34_426_698, 34.4),  # Xie et al. 2017, Table 7
        ("resnext29_16x64d", 68_155_210, 68.1),
    ],
)
def test_papers_round_weight_layer_counts(name: str, exact: int, paper_millions: float) -> None:
    # These papers' M figures match the conv + fc weights; BN's few thousand parameters are left out.
    with torch.device("meta"):
        net = create_model(name)
    assert count_params(net) == exact
    assert _millions(_conv_and_fc_params(net), 1) == paper_millions


def test_wide_resnet28_10_layout_and_dropout_knob() -> None:
    with torch.device("meta"):
        net = create_model("wide_resnet28_10", drop_rate=0.3)
    assert count_params(net) == 36_479_194 and _millions(count_params(net), 1) == 36.5  # Z&K Table 4
    units = _units(net)
    assert len(units) == 12 and all(type(u) is PreactUnit and u.dropout.p == 0.3 for u in units)
    assert [u.conv2.out_channels for u in units[::4]] == [160, 320, 640]
    assert not any(isinstance(m, nn.BatchNorm2d) for u in units for m in u.downsample.modules())


def test_resnext_groups_reach_the_3x3_conv() -> None:
    with torch.device("meta"):
        net = create_model("resnext29_8x64d")
    assert net.layer1[0].conv2.groups == 8 and net.layer1[0].conv2.in_channels == 512
    assert net.layer3[0].conv3.out_channels == 1024


def test_resnet_rejects_inconsistent_stage_knobs() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        ResNet(layers=(2, 2), widths=(64, 128, 256))
    with pytest.raises(ValueError, match="block='bottleneck'"):
        ResNet(block="basic", groups=32)


# --- DenseNet ----------------------------------------------------------------------------------


def test_densenet_bottleneck_and_compression_knobs() -> None:
    bc = create_model("densenet_bc100_k12")
    assert bc.features.transition1.conv.out_channels == (24 + 16 * 12) // 2
    plain = create_model("densenet_bc100_k12", block="basic", compression=1.0)
    layers = [m for m in plain.modules() if isinstance(m, DenseLayer)]
    assert len(layers) == 48 and not hasattr(layers[0], "conv2")
    assert plain.features.transition1.conv.out_channels == 24 + 16 * 12
    out = plain(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)


def test_densenet_memory_efficient_matches_plain() -> None:
    torch.manual_seed(0)
    net = DenseNet(num_classes=5, growth_rate=4, block_config=(2, 2), stem="cifar", stem_width=8)
    efficient = DenseNet(
        num_classes=5, growth_rate=4, block_config=(2, 2), stem="cifar", stem_width=8, memory_efficient=True
    )
    efficient.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 8, 8)
    net(x).sum().backward()
    efficient(x).sum().backward()
    for (name, p), q in zip(net.named_parameters(), efficient.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


# --- torchvision zoo wrappers ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2", "mnasnet1_0"])
def test_zoo_wrapper_surface_and_in_chans(name: str) -> None:
    torch.manual_seed(0)
    net = create_model(name, num_classes=4, in_chans=1).eval()
    assert type(net) in ZOO_CLASSES.values()  # torchvision's class, with our methods added
    assert (net.num_classes, net.in_chans) == (4, 1)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.forward_head(net.forward_features(x)), net(x))


# --- Pretrained weights ------------------------------------------------------------------------


def test_pretrained_from_local_file(tmp_path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("resnet18", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
    # Another num_classes: the backbone loads, the classifier stays freshly initialised.
    finetune = create_model("resnet18", num_classes=10, pretrained=str(path))
    torch.testing.assert_close(finetune.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert finetune.fc.weight.shape == (10, 512)
    with pytest.raises(ValueError, match="conv1.weight"):
        create_model("resnet18", in_chans=1, pretrained=str(path))


def test_pretrained_files_are_loaded_weights_only(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": nn.ReLU()}, path)  # a pickled object, not tensors
    with pytest.raises(Exception, match="[Ww]eights.only"):
        create_model("resnet18", pretrained=str(path))


def test_pretrained_densenet_accepts_torchvision_legacy_keys(tmp_path) -> None:
    reference = torchvision.models.densenet121(weights=None)
    # Like torchvision's 2017 files: "norm.1"-style layer names and no num_batches_tracked.
    legacy = {
        k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2.") if "denselayer" in k else k: v
        for k, v in reference.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-legacy.pth"
    torch.save(legacy, path)
    ours = create_model("densenet121", pretrained=str(path))
    ours_layer, reference_layer = (
        ours.features.denseblock1.denselayer1,
        reference.features.denseblock1.denselayer1,
    )
    torch.testing.assert_close(ours_layer.norm1.weight, reference_layer.norm1.weight)
    torch.testing.assert_close(ours_layer.conv2.weight, reference_layer.conv2.weight)


def test_pretrained_offline_is_a_clear_error(monkeypatch, tmp_path) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"Offline\?.*hub/checkpoints/resnet18-f37072fd\.pth"):
        create_model("resnet18", pretrained="IMAGENET1K_V1")


def test_pretrained_unknown_name_and_missing_file() -> None:
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        create_model("resnet18", pretrained="IMAGENET_V9")
    with pytest.raises(FileNotFoundError):
        create_model("resnet18", pretrained="/nonexistent/resnet18.pth")


def test_pretrained_zoo_wrapper_keeps_module_versions(tmp_path) -> None:
    # MNASNet refuses state dicts without its version metadata; the head swap must keep it.
    reference = torchvision.models.mnasnet1_0(weights=None)
    path = tmp_path / "mnasnet.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("mnasnet1_0", num_classes=3, pretrained=str(path))
    torch.testing.assert_close(ours.layers[0].weight, reference.layers[0].weight)
    assert ours.classifier[1].out_features == 3


def test_variant_tables_are_the_registered_builders() -> None:
    from architectures import list_models
    from architectures.densenet import DENSENETS
    from architectures.resnet import RESNETS

    for table, cls in ((RESNETS, ResNet), (DENSENETS, DenseNet)):
        for name, knobs in table.items():
            assert name in list_models()
            if sum(knobs.get("layers", ())) > 300:
                continue  # the 1000-layer nets take seconds to build; test_zoo counts them
            with torch.device("meta"):
                assert count_params(create_model(name)) == count_params(cls(**knobs)), name
