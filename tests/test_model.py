"""Model topology, MAC counts, gate modes and the exact-identity property of skipped blocks."""
import pytest
import torch

from cosinegate.train.model import (GATE_MODES, CosineGateResNet, ModelConfig, executed_mac_ratio,
                                    macs_breakdown, param_counts)


def test_plain_resnet20_macs_and_params():
    cfg = ModelConfig(gated=False)
    assert macs_breakdown(cfg)["plain_total"] == 40_551_040
    assert 0.26e6 < param_counts(CosineGateResNet(cfg))["total"] < 0.28e6


@pytest.mark.parametrize("depth,blocks", [(8, 3), (20, 9), (32, 15), (56, 27)])
def test_depths_and_controller_budget(depth, blocks):
    model = CosineGateResNet(ModelConfig(depth=depth))
    assert len(model.blocks) == blocks == len(model.gated_indices)
    assert param_counts(model)["controller_share"] < 0.01


def test_invalid_depth_is_rejected():
    with pytest.raises(ValueError, match="6n\\+2"):
        ModelConfig(depth=21)


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
def test_forward_every_mode(channels, size):
    model = CosineGateResNet(ModelConfig(depth=8, in_channels=channels, input_size=size)).eval()
    x = torch.randn(2, channels, size, size)
    for mode in GATE_MODES:
        logits, stats = model(x, mode)
        assert logits.shape == (2, 10) and len(stats) == 3
    with pytest.raises(ValueError, match="unknown gate mode"):
        model(x, "sometimes")


def test_skipped_block_is_exact_identity_or_shortcut():
    model = CosineGateResNet(ModelConfig(depth=8)).eval()
    x = torch.relu(torch.randn(2, 16, 32, 32))
    y, _ = model.blocks[0](x, "off")
    assert torch.equal(y, x)
    y, _ = model.blocks[1](x, "off")  # stride 2: subsample and zero-pad channels
    assert y.shape == (2, 32, 16, 16) and torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert (y[:, :8] == 0).all() and (y[:, 24:] == 0).all()


def test_gamma_sign_and_init():
    faithful = CosineGateResNet(ModelConfig(depth=8, gamma0=-2.5)).eval()
    opened = CosineGateResNet(ModelConfig(depth=8, gamma0=-2.5, open_logit=3.0)).eval()
    x = torch.randn(16, 3, 32, 32)
    # Faithful: l ~ gamma0 * CIR with CIR ~ 1 -> gates start nearly closed.
    assert faithful(x, "paper")[1][0]["g"].mean() < 0.5
    # Open: the controller bias makes the initial deploy logit +3 (CIR estimate starts at 1).
    logit = opened(x, "deploy")[1][0]["logit_deploy"]
    assert torch.allclose(logit, torch.full_like(logit, 3.0), atol=1e-5)
    assert opened.blocks[0].gamma.item() == pytest.approx(-2.5)


def test_executed_mac_ratio():
    cfg = ModelConfig(depth=8)
    macs = macs_breakdown(cfg)
    idx = list(range(3))
    on = executed_mac_ratio(macs, torch.ones(1, 3), idx).item()
    off = executed_mac_ratio(macs, torch.zeros(1, 3), idx).item()
    assert on == pytest.approx(macs["full_total"] / macs["plain_total"])
    assert off == pytest.approx((macs["stem"] + macs["head"] + sum(macs["controllers"])) / macs["plain_total"])


def test_without_noise_the_training_gate_is_the_deploy_rule():
    torch.manual_seed(1)  # a start whose controllers all have a live hidden unit
    model = CosineGateResNet(ModelConfig(depth=8, in_channels=1, input_size=8, gate_logit_norm=True,
                                         open_logit=0.0))
    model.set_gate_noise(0.0)
    x = torch.randn(64, 1, 8, 8)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:  # running statistics of this batch, so the logit norms' shift 0 splits it
        norm.reset_running_stats()
        norm.momentum = None
    with torch.no_grad():
        model(x, "deploy")
    model.eval()
    _, deploy = model(x, "deploy")
    _, trained = model(x, "relaxed_deploy", tau=0.5)
    for d, t in zip(deploy, trained):
        assert 0 < d["g"].sum() < len(x), "the test needs gates that differ among inputs"
        assert torch.allclose(t["g"].detach(), d["g"], atol=1e-6)
    with pytest.raises(ValueError, match="noise"):
        model.set_gate_noise(-1.0)
