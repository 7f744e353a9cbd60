"""The gate math: CIR, relaxed and hard gates, and the deploy-gate fold the exporter relies on."""
import math

import pytest
import torch

from cosinegate.train import gate as G


def _cir(s, r):
    return G.cosine_incompatibility(*G.inner_products(s, r))


def test_cir_range_and_zero_vectors():
    x = torch.randn(4, 8, 5, 5)
    assert torch.allclose(_cir(x, x), torch.zeros(4), atol=1e-6)
    assert torch.allclose(_cir(x, -x), torch.full((4,), 2.0), atol=1e-6)
    cir = _cir(x, torch.zeros_like(x))
    assert torch.isfinite(cir).all() and torch.allclose(cir, torch.ones(4))
    y = torch.randn(4, 8, 5, 5)
    direct = 1 - torch.nn.functional.cosine_similarity(x.flatten(1), y.flatten(1))
    assert torch.allclose(_cir(x, y), direct, atol=1e-6)


def test_threshold_logit_matches_sigmoid_rule():
    assert math.isclose(1 / (1 + math.exp(-G.THRESHOLD_LOGIT)), G.THRESHOLD, rel_tol=1e-12)
    logits = torch.linspace(-3, 3, 601, dtype=torch.float64)
    assert torch.equal(G.hard_gate(logits).bool(), torch.sigmoid(logits) > G.THRESHOLD)


def test_relaxed_gate_tracks_logit_and_hard_is_straight_through():
    torch.manual_seed(0)
    logit = torch.full((20000,), 1.0, requires_grad=True)
    z = G.relaxed_gate(logit, tau=1.0)
    # E[sigmoid(l + Logistic)] is close to, and pulled toward 0.5 from, sigmoid(l).
    assert 0.6 < z.mean().item() < torch.sigmoid(torch.tensor(1.0)).item()
    hard = G.relaxed_gate(logit, tau=0.5, hard=True)
    values = hard.detach()
    assert torch.all((values.abs() < 1e-6) | ((values - 1).abs() < 1e-6))
    hard.sum().backward()
    assert logit.grad.abs().sum() > 0


def test_a_noise_free_relaxed_gate_is_the_deterministic_decision_with_a_gradient():
    torch.manual_seed(0)
    logit = torch.linspace(-3, 3, 61).requires_grad_()
    hard = G.relaxed_gate(logit, tau=0.5, hard=True, noise=0.0)
    assert torch.allclose(hard.detach(), (logit > 0).float(), atol=1e-6)
    hard.sum().backward()
    assert (logit.grad > 0).all()
    noisy = G.relaxed_gate(logit.detach(), tau=0.5, hard=True)
    assert not torch.allclose(noisy, (logit > 0).float(), atol=1e-6), "the paper's gate is noisy"


@pytest.mark.parametrize("gamma", [-2.5, -0.3, 0.7, 3.0])
def test_folded_gate_agrees_with_unfolded_rule_on_every_sample(gamma):
    torch.manual_seed(1)
    ctrl = G.Controller(channels=16, hidden=4).double()
    with torch.no_grad():
        for p in ctrl.parameters():
            p.normal_()
    gamma = torch.tensor(gamma, dtype=torch.float64)
    x = torch.randn(4096, 16, 6, 6, dtype=torch.float64)
    w, b = G.fold_deploy_gate(ctrl, gamma)
    h, _, _ = ctrl(x)
    folded = (h.double() @ w + b) > 0
    unfolded = G.deploy_decision_unfolded(ctrl, gamma, x)
    assert 0 < folded.sum() < len(folded), "test must exercise both decisions"
    assert torch.equal(folded, unfolded)


@pytest.mark.parametrize("gamma", [-2.5, 0.7])
def test_folded_gate_with_a_logit_norm_agrees_with_the_unfolded_rule(gamma):
    torch.manual_seed(2)
    ctrl = G.Controller(channels=16, hidden=4, logit_norm=True).double()
    with torch.no_grad():
        for p in ctrl.parameters():
            p.normal_()
        ctrl.logit_norm.running_mean.fill_(0.8)
        ctrl.logit_norm.running_var.fill_(2.5)
    ctrl.eval()
    gamma = torch.tensor(gamma, dtype=torch.float64)
    x = torch.randn(4096, 16, 6, 6, dtype=torch.float64)
    w, b = G.fold_deploy_gate(ctrl, gamma, threshold=0.3)
    h, _, _ = ctrl(x)
    folded = (h @ w + b) > 0
    unfolded = G.deploy_decision_unfolded(ctrl, gamma, x, threshold=0.3)
    assert 0 < folded.sum() < len(folded), "test must exercise both decisions"
    assert torch.equal(folded, unfolded)


def test_a_logit_norm_takes_the_batch_common_shift_out_of_the_deploy_logit():
    torch.manual_seed(3)
    ctrl = G.Controller(channels=8, hidden=2, logit_norm=True)
    c, cir_hat = torch.randn(64), torch.randn(64)
    gamma = torch.tensor(-2.5)
    shifted = G.deploy_logit(ctrl, gamma, cir_hat, c + 5.0)   # every input's logit moved by -12.5
    assert torch.allclose(shifted, G.deploy_logit(ctrl, gamma, cir_hat, c), atol=1e-4)
    assert shifted.std().item() == pytest.approx(1.0, abs=0.02)  # spread set by the norm's scale


def test_flops_penalty_is_a_hinge_scaled_by_progress():
    assert G.flops_penalty(torch.tensor(0.5), 0.7, 1.0).item() == 0.0
    assert math.isclose(G.flops_penalty(torch.tensor(0.9), 0.7, 0.5).item(), 0.5 * 0.04, rel_tol=1e-5)


def test_consistency_matches_eq20_written_out():
    s, r = torch.rand(3, 4, 5, 5, dtype=torch.float64), torch.randn(3, 4, 5, 5, dtype=torch.float64)
    g = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    norm = lambda t: torch.nn.functional.normalize(t.flatten(1), dim=1)
    direct = (norm(s + r) - norm(s + g.view(-1, 1, 1, 1) * r)).pow(2).sum(1)
    expanded = G.consistency_term(*G.inner_products(s, r), g)
    assert torch.allclose(expanded.double(), direct, atol=1e-5)
    assert expanded[2].item() == pytest.approx(0.0, abs=1e-6) and expanded[0] > 0


def test_margin_penalty_zero_far_from_threshold():
    far = torch.tensor([G.THRESHOLD_LOGIT + 2.0, G.THRESHOLD_LOGIT - 2.0])
    near = torch.tensor([G.THRESHOLD_LOGIT + 0.1])
    assert G.margin_penalty(far, 1.0).item() == 0.0
    assert G.margin_penalty(near, 1.0).item() == pytest.approx(0.9)


def test_straight_through_deploy_gate_is_the_deploy_decision_with_a_sigmoid_gradient():
    logit = torch.linspace(-3, 3, 61, requires_grad=True)
    g = G.deploy_gate_straight_through(logit)
    assert torch.allclose(g.detach(), G.hard_gate(logit.detach()), atol=1e-6)
    g.sum().backward()
    soft = torch.sigmoid(logit.detach() - G.THRESHOLD_LOGIT)
    assert torch.allclose(logit.grad, soft * (1 - soft))


def test_a_routing_temperature_keeps_the_decision_and_reaches_saturated_gates():
    logit = torch.tensor([G.THRESHOLD_LOGIT - 7.0, G.THRESHOLD_LOGIT + 7.0], requires_grad=True)
    cold = torch.autograd.grad(G.deploy_gate_straight_through(logit).sum(), logit)[0]
    warm_gate = G.deploy_gate_straight_through(logit, temperature=4.0)
    warm = torch.autograd.grad(warm_gate.sum(), logit)[0]
    assert warm_gate.detach().tolist() == [0.0, 1.0]
    assert (cold < 1e-3).all() and (warm > 10 * cold).all()
    soft = torch.sigmoid(torch.tensor(7.0 / 4.0))
    assert torch.allclose(warm, soft * (1 - soft) / 4.0)


def test_target_rate_loss_charges_blocks_that_are_always_on_or_off():
    half = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(8, 1)  # each block on for half the batch
    assert G.target_rate_loss(half, 0.5).item() == 0.0
    static = torch.tensor([[1.0, 0.0]]).repeat(16, 1)           # one block always on, one always off
    assert math.isclose(G.target_rate_loss(static, 0.5).item(), 0.25)


def test_beta_quantiles_match_closed_forms():
    uniform = G.beta_quantiles(9, 1.0, 1.0)
    assert torch.allclose(uniform, torch.arange(1, 10, dtype=torch.float64) / 10, atol=1e-4)
    # Beta(2, 1) has CDF t^2, so its quantile at level u is sqrt(u).
    ramp = G.beta_quantiles(9, 2.0, 1.0)
    assert torch.allclose(ramp, (torch.arange(1, 10, dtype=torch.float64) / 10).sqrt(), atol=1e-4)


def test_batch_shaping_is_zero_on_the_prior_and_penalises_a_constant_gate():
    q = G.beta_quantiles(64, 0.6, 0.4)
    logit_on_prior = (torch.logit(q.clamp(1e-6, 1 - 1e-6)) + G.THRESHOLD_LOGIT).float().unsqueeze(1)
    shuffled = logit_on_prior[torch.randperm(64)]  # order in the batch does not matter
    assert G.batch_shaping_loss(shuffled, q).item() < 1e-8
    constant = torch.full((64, 1), 5.0)
    assert G.batch_shaping_loss(constant, q).item() > 0.1


def test_batch_shaping_with_a_temperature_reaches_a_saturated_gate():
    q = G.beta_quantiles(64, 0.8, 0.2)
    saturated = torch.full((64, 1), G.THRESHOLD_LOGIT + 7.0, requires_grad=True)
    cold = torch.autograd.grad(G.batch_shaping_loss(saturated, q), saturated)[0].abs().sum()
    warm = torch.autograd.grad(G.batch_shaping_loss(saturated, q, temperature=4.0), saturated)[0].abs().sum()
    assert warm > 10 * cold
    on_prior = (4.0 * torch.logit(q.clamp(1e-6, 1 - 1e-6)) + G.THRESHOLD_LOGIT).float().unsqueeze(1)
    assert G.batch_shaping_loss(on_prior, q, temperature=4.0).item() < 1e-8


def test_dead_controller_units_are_redrawn_on_for_half_the_inputs_and_live_ones_kept():
    torch.manual_seed(0)
    controller = G.Controller(16, 4)
    pooled = torch.rand(200, 16)  # a block input's GAP: after a ReLU, so >= 0
    with torch.no_grad():
        controller.fc1.weight[:2] = -torch.rand(2, 16)   # negative on every non-negative input
        controller.fc1.bias[:2] = -0.1
        controller.fc1.weight[2:] = torch.rand(2, 16)
        controller.fc1.bias[2:] = 0.0
    live = controller.fc1.weight[2:].clone()
    assert G.revive_dead_units(controller, pooled) == 2
    on = (torch.nn.functional.linear(pooled, controller.fc1.weight, controller.fc1.bias) > 0).float().mean(0)
    assert torch.allclose(on[:2], torch.tensor([0.5, 0.5]), atol=0.01)
    assert torch.equal(controller.fc1.weight[2:], live)
    assert G.revive_dead_units(controller, pooled) == 0


def test_a_controller_hidden_norm_folds_into_w1_at_inference():
    torch.manual_seed(4)
    ctrl = G.Controller(channels=16, hidden=4, hidden_norm=True).double()
    with torch.no_grad():
        for p in ctrl.parameters():
            p.normal_()
        ctrl.hidden_norm.running_mean.normal_()
        ctrl.hidden_norm.running_var.uniform_(0.5, 3.0)
    ctrl.eval()
    x = torch.rand(256, 16, 6, 6, dtype=torch.float64)
    h, _, _ = ctrl(x)
    weight, bias = ctrl.hidden_affine()
    folded = torch.relu(torch.nn.functional.linear(x.mean(dim=(2, 3)), weight, bias))
    assert (h > 0).any() and (h == 0).any(), "test must exercise both sides of the ReLU"
    assert torch.allclose(folded, h, atol=1e-12)


def test_a_hidden_norm_keeps_a_unit_with_negative_weights_on_for_some_images_in_training():
    """A unit negative on every non-negative input is dead without the norm; the norm centres
    it on the batch, so in training it is on for some images and passes gradient."""
    torch.manual_seed(5)
    x = torch.rand(128, 16, 4, 4)
    for hidden_norm, live in ((False, False), (True, True)):
        ctrl = G.Controller(16, 2, hidden_norm=hidden_norm).train()
        with torch.no_grad():
            ctrl.fc1.weight.copy_(-torch.rand(2, 16))
            ctrl.fc1.bias.fill_(-0.1)
        h, c, _ = ctrl(x)
        c.sum().backward()
        assert bool((h > 0).any(0).all()) == live
        assert bool(ctrl.fc1.weight.grad.abs().sum() > 0) == live


def test_a_dead_unit_behind_a_hidden_norm_is_redrawn_through_the_folded_layer():
    torch.manual_seed(6)
    ctrl = G.Controller(16, 2, hidden_norm=True).eval()
    pooled = torch.rand(200, 16)
    with torch.no_grad():
        ctrl.hidden_norm.running_mean.copy_(ctrl.fc1(pooled).mean(0))  # both units centred on the images
        ctrl.hidden_norm.bias.copy_(torch.tensor([-50.0, 0.0]))  # then unit 0 shifted off for every one
    assert G.dead_units(ctrl, pooled).tolist() == [True, False]
    assert G.revive_dead_units(ctrl, pooled) == 1
    weight, bias = ctrl.hidden_affine()
    on = (torch.nn.functional.linear(pooled, weight, bias) > 0).float().mean(0)
    assert 0.4 < on[0] < 0.6


def test_revived_units_are_the_same_draw_for_the_same_generator_seed():
    pooled = torch.rand(50, 16)
    drawn = []
    for seed in (3, 3, 4):
        controller = G.Controller(16, 2)
        with torch.no_grad():
            controller.fc1.weight.fill_(-1.0)
        assert G.revive_dead_units(controller, pooled, torch.Generator().manual_seed(seed)) == 2
        drawn.append(controller.fc1.weight.clone())
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])
