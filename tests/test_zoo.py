"""Every registered network: shape, finiteness, gradients, parameter count, torchvision parity."""

from __future__ import annotations

import pytest
import torch

import architectures
from architectures import AuxOutputs, count_params, create_model, list_models, model_info

# Inputs are kept small so the whole zoo runs in seconds; a few nets need more room.
TEST_SIZE = {"inception_v3": 299, "inception_v3_noaux": 299}
MAX_TEST_SIZE = 64
# Networks too heavy to run forward+backward on a CPU test budget are only counted.
COUNT_ONLY_ABOVE = 150_000_000


def _test_input(name: str, batch: int = 2) -> torch.Tensor:
    chans, height, width = model_info(name).input_size
    size = TEST_SIZE.get(name, min(height, MAX_TEST_SIZE))
    return torch.randn(batch, chans, size, size)


def _logits(out):
    return out.logits if isinstance(out, AuxOutputs) else out


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    net = create_model(name, num_classes=7)
    assert net.num_classes == 7
    assert net.in_chans == model_info(name).input_size[0]
    if count_params(net) > COUNT_ONLY_ABOVE:
        pytest.skip("counted only")
    net.train()
    out = net(_test_input(name))
    logits = _logits(out)
    assert logits.shape == (2, 7)
    loss = logits.float().logsumexp(1).mean()
    if isinstance(out, AuxOutputs):
        assert len(out.aux) > 0, "a net built with aux heads must return them in train mode"
        for aux in out.aux:
            assert aux.shape == (2, 7)
            loss = loss + aux.logsumexp(1).mean()
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    net.eval()
    with torch.no_grad():
        out = net(_test_input(name))
    if isinstance(out, AuxOutputs):
        assert out.aux == (), "aux heads are silent in eval"
    assert torch.isfinite(_logits(out)).all()


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).params is not None])
def test_param_count(name: str) -> None:
    info = model_info(name)
    with torch.device("meta"):
        net = create_model(name, num_classes=info.num_classes)
    assert count_params(net) == info.params


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).torchvision])
def test_torchvision_state_dict_and_outputs(name: str) -> None:
    import torchvision

    info = model_info(name)
    torch.manual_seed(0)
    tv_kwargs = {"init_weights": True} if "googlenet" in info.torchvision or "inception" in info.torchvision else {}
    ours = create_model(name, num_classes=10).eval()
    if info.torchvision.startswith(("googlenet", "inception_v3")):
        tv_kwargs["aux_logits"] = ours.aux_logits  # torchvision builds the aux heads ours has
    reference = torchvision.models.get_model(info.torchvision, weights=None, num_classes=10, **tv_kwargs).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = _test_input(name, batch=1) if info.params < COUNT_ONLY_ABOVE else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        got = _logits(ours(x))
    expected = expected.logits if hasattr(expected, "logits") else expected
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_registry_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="unknown architecture 'resnet21'.*Did you mean"):
        create_model("resnet21")


def test_zoo_model_returns_the_registered_network_itself() -> None:
    net = architectures.ZooModel("inception_mnist", num_classes=5, in_chans=1)
    assert type(net).__name__ != "ZooModel"
    assert net.num_classes == 5
