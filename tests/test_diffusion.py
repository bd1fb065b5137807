"""The schedule, forward noising and samplers against closed-form values."""
import math

import pytest
import torch

from model_diffusion import (Denoiser, Diffusion, TimeGatedLinear, ddim_step, ddim_timesteps, labels_from_y0,
                             sample_y0)
from utils.diff_encoders import build_diff_encoder


def test_cosine_schedule_matches_closed_form():
    d = Diffusion(1000, 'cosine')
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 1, 250, 500, 900):
        expected_alpha_bar = f(t + 1) / f(0)
        assert d.alphas_bar[t].item() == pytest.approx(expected_alpha_bar, rel=1e-4, abs=1e-7)
    assert d.betas.max().item() == pytest.approx(0.999)  # capped
    assert torch.all(d.alphas_bar[1:] < d.alphas_bar[:-1])


def test_linear_schedule_endpoints():
    d = Diffusion(1000, 'linear')
    assert d.betas[0].item() == pytest.approx(1e-4)
    assert d.betas[-1].item() == pytest.approx(0.02)


def test_q_sample_equation():
    d = Diffusion(100)
    y0 = torch.eye(4)
    noise = torch.randn(4, 4)
    t = torch.tensor([0, 10, 50, 99])
    y_t = d.q_sample(y0, t, noise)
    for i in range(4):
        a = d.alphas_bar[t[i]]
        torch.testing.assert_close(y_t[i], a.sqrt() * y0[i] + (1 - a).sqrt() * noise[i])


def test_antithetic_timesteps_pair_up():
    d = Diffusion(1000)
    t = d.sample_timesteps(200)
    assert t.shape == (200,) and t.min() >= 0 and t.max() <= 999
    # 101 draws, then their mirrors T−1−t, cut to 200
    torch.testing.assert_close(t[:99] + t[101:200], torch.full((99,), 999))


def test_ddim_timesteps_uniform_with_offset():
    assert ddim_timesteps(1000, 10).tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert ddim_timesteps(1000, 1).tolist() == [1]


def oracle(diffusion, y0):
    """The exact ε for a known y0: what a perfect denoiser predicts."""
    def eps_fn(y_t, t):
        a = diffusion.alphas_bar[t][:, None]
        return (y_t - a.sqrt() * y0) / (1 - a).sqrt()
    return eps_fn


@pytest.mark.parametrize('steps', [10, 50])
def test_deterministic_ddim_with_oracle_lands_near_y0(steps):
    d = Diffusion(1000).double()
    y0 = torch.nn.functional.one_hot(torch.tensor([3, 0, 7]), 10).double()
    out = d.ddim_sample(oracle(d, y0), y0.shape, n_steps=steps)
    assert torch.allclose(out, y0, atol=2e-2)
    assert labels_from_y0(out).tolist() == [3, 0, 7]


def test_single_ddim_step_equation():
    """From y_T = 0 straight to ᾱ_0 at t=1: ε = −√ᾱ1·y0/√(1−ᾱ1), y = √ᾱ0·y0 + √(1−ᾱ0)·ε."""
    d = Diffusion(1000).double()
    y0 = torch.nn.functional.one_hot(torch.tensor([2, 4]), 6).double()
    out = d.ddim_sample(oracle(d, y0), y0.shape, n_steps=1)
    a0, a1 = d.alphas_bar[0], d.alphas_bar[1]
    eps = -a1.sqrt() * y0 / (1 - a1).sqrt()
    torch.testing.assert_close(out, a0.sqrt() * y0 + (1 - a0).sqrt() * eps)


def test_ddpm_with_oracle_returns_y0_exactly():
    d = Diffusion(50).double()
    y0 = torch.nn.functional.one_hot(torch.tensor([1, 2]), 5).double()
    torch.manual_seed(0)
    out = d.ddpm_sample(oracle(d, y0), y0.shape)
    torch.testing.assert_close(out, y0)


def test_ddim_step_with_eta1_is_the_ddpm_posterior():
    """At consecutive steps and eta=1, DDIM's update has the DDPM posterior's mean and variance."""
    d = Diffusion(50).double()
    t = 20
    a_t, a_p, beta = d.alphas_bar[t], d.alphas_bar[t - 1], d.betas[t]
    y0 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    y_t = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
    eps = (y_t - a_t.sqrt() * y0) / (1 - a_t).sqrt()
    mean = beta * a_p.sqrt() / (1 - a_t) * y0 + (1 - beta).sqrt() * (1 - a_p) / (1 - a_t) * y_t
    var = beta * (1 - a_p) / (1 - a_t)
    torch.testing.assert_close(ddim_step(y_t, eps, a_t, a_p, eta=1.0), mean)
    torch.manual_seed(0)
    noise = torch.randn(200000, 3, dtype=torch.float64)
    draws = ddim_step(y_t.expand(200000, 3), eps.expand(200000, 3), a_t, a_p, eta=1.0, noise=noise)
    assert draws.var(0).mean().item() == pytest.approx(var.item(), rel=0.02)
    # eta=0: no noise term at all
    torch.testing.assert_close(ddim_step(y_t, eps, a_t, a_p, eta=0.0, noise=noise[:1]),
                               ddim_step(y_t, eps, a_t, a_p, eta=0.0))


def test_stochastic_sampling_varies_and_deterministic_does_not():
    torch.manual_seed(0)
    model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=100).eval()
    d = Diffusion(100)
    fp = torch.randn(8, 6)
    with torch.inference_mode():
        x_e = model.embed_x(fp)
        a, b = sample_y0(model, d, x_e, fp), sample_y0(model, d, x_e, fp)
        c = sample_y0(model, d, x_e, fp, eta=1.0, noisy_start=True)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_denoiser_depth_is_a_parameter_and_keeps_the_paper_key_names():
    def keys(n_layers):
        model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=100, n_layers=n_layers)
        return {k for k in model.state_dict() if k.startswith(('lin', 'norm'))}
    three, four = keys(3), keys(4)
    assert {k.split('.')[0] for k in three} == {'lin1', 'lin2', 'lin3', 'norm1', 'norm2', 'norm3'}
    assert {k.split('.')[0] for k in four - three} == {'lin4', 'norm4'}
    model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=100, n_layers=4).eval()
    out = model(torch.randn(3, 6), torch.randn(3, 4), torch.tensor([1, 2, 3]), torch.randn(3, 6))
    assert out.shape == (3, 4) and torch.isfinite(out).all()


def test_top5_are_the_coordinates_closest_to_1_the_label_first():
    from model_diffusion import labels_from_y0, ranked_from_y0
    y0 = torch.tensor([[0.1, 0.9, -0.2, 1.3, 0.95, 0.0, 2.5],
                       [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # a tie at 1: the label (first of them) leads
    ranked = ranked_from_y0(y0, 5)
    assert ranked[0].tolist() == [4, 1, 3, 0, 5]   # |y - 1| of those: 0.05, 0.1, 0.3, 0.9, 1.0
    assert torch.equal(ranked[:, 0], labels_from_y0(y0)) and ranked[1, :2].tolist() == [0, 1]


def reference_ddim(d, eps_fn, shape, n_steps, eta, noisy_start, generator):
    """The sampler as it was written before its constants were made once (t and ᾱ looked up, the
    update's scalars computed, at every step of every call)."""
    y = torch.randn(shape, generator=generator) if noisy_start else torch.zeros(shape)
    steps = ddim_timesteps(d.n_timesteps, n_steps).tolist()
    for i, t in enumerate(steps):
        a_t = d.alphas_bar[t]
        a_prev = d.alphas_bar[steps[i + 1]] if i + 1 < len(steps) else d.alphas_bar[0]
        eps = eps_fn(y, torch.full((shape[0],), t, dtype=torch.long))
        noise = torch.randn(shape, generator=generator) if eta > 0 else None
        y0_hat = (y - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        y = a_prev.sqrt() * y0_hat + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        y = y if noise is None else y + sigma * noise
    return y


@pytest.mark.parametrize('eta,noisy_start', [(0.0, False), (1.0, True)])
def test_the_sampler_with_its_constants_made_once_is_the_reference_bit_for_bit(eta, noisy_start):
    torch.manual_seed(0)
    model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=1000).eval()
    fp = torch.randn(32, 6)
    with torch.inference_mode():
        x_e = model.embed_x(fp)
    def eps_fn(y, t):
        return model.head(x_e, y, t, fp)
    d = Diffusion()
    for n_steps in (10, 1, 7, 10):  # the fourth call reads the plan the first made
        got = d.ddim_sample(eps_fn, (32, 4), n_steps, eta, noisy_start, torch.Generator().manual_seed(n_steps))
        with torch.inference_mode():
            want = reference_ddim(d, eps_fn, (32, 4), n_steps, eta, noisy_start, torch.Generator().manual_seed(n_steps))
        assert torch.equal(got, want), n_steps
    assert len(d._ddim_plans) == 3


def test_the_sampler_steps_from_each_ddim_timestep_to_the_next_and_last_to_t0():
    """The plan's ᾱ_t and ᾱ_prev are those of consecutive DDIM timesteps, the last step landing on t = 0's.
    (With an oracle ε, DDIM is exact for any ᾱ sequence: the oracle tests cannot see an index off by one.)"""
    d = Diffusion(1000)
    plan = d.ddim_plan(10)
    steps = [int(t) for t, _ in plan]
    assert steps == ddim_timesteps(1000, 10).tolist() and steps == sorted(steps, reverse=True)
    a_t = torch.stack([c[1] ** 2 for _, c in plan])
    a_prev = torch.stack([c[2] ** 2 for _, c in plan])
    torch.testing.assert_close(a_t, d.alphas_bar[steps])
    torch.testing.assert_close(a_prev, d.alphas_bar[steps[1:] + [0]])


def test_each_timestep_scales_its_layer_by_its_own_gain_row():
    torch.manual_seed(0)
    layer = TimeGatedLinear(3, 4, n_timesteps=100)
    x, t = torch.randn(6, 3), torch.tensor([0, 1, 2, 50, 99, 100])
    with torch.no_grad():
        layer.gain.weight.copy_(torch.arange(101 * 4, dtype=torch.float).view(101, 4) / 100)
        layer.gain.weight[2] = 0  # a zero row silences its timestep
        out = layer(x, t)
    torch.testing.assert_close(out, layer.gain.weight[t] * layer.linear(x))
    assert torch.equal(out[2], torch.zeros(4)) and not torch.allclose(out[4], out[3])
    # the whole denoiser: the same inputs at two timesteps predict different noise
    model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=1000).eval()
    fp_x, y_t = torch.randn(5, 6), torch.randn(5, 4)
    with torch.no_grad():
        early, late = (model(fp_x, y_t, torch.full((5,), t), fp_x) for t in (1, 900))
    assert (early - late).abs().min() > 1e-4


@pytest.mark.parametrize('n_layers', [2, 3, 4])
def test_every_layer_of_the_denoiser_shapes_its_output(n_layers):
    """A layer skipped in the forward pass would keep a zero (or no) gradient."""
    torch.manual_seed(0)
    model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=100, n_layers=n_layers)
    fp_x = torch.randn(8, 6)
    model(fp_x, torch.randn(8, 4), torch.randint(0, 101, (8,)), fp_x).square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
