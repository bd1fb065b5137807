"""Tests that pin the method itself: what the training loop feeds the loss, and the denoiser's wiring.

Each assertion fails if a piece of LRA-diffusion is switched off: retrieval bypassed (the loss sees
the plain noisy labels), candidate weights ignored (uniform weights), timesteps drawn without the
antithetic pairing, or the image embedding x_e no longer gating the denoiser's first layer.
"""
import pytest
import torch
from test_engine import digits_cfg

from conftest import subset
from model_diffusion import Denoiser
from utils.diff_encoders import build_diff_encoder
from utils.engine import run
from utils.trainer import Trainer


@pytest.fixture(scope='module')
def fed_to_the_loss(tmp_path_factory, digits):
    """One epoch on 40%-noisy digits, recording every training step's loss inputs and samples."""
    steps, candidates = [], {}
    original_loss, original_step = Trainer._step_loss, Trainer.train_step

    def spy_loss(self, x, y_t, t, fp_x, noise, weights):
        steps[-1].update(y_t=y_t, t=t, noise=noise, weights=weights)
        candidates.setdefault('table', self.data.candidates.candidates)
        candidates.setdefault('noisy', self.data.noisy_labels)
        candidates.setdefault('diffusion', self.diffusion)
        return original_loss(self, x, y_t, t, fp_x, noise, weights)

    def spy_step(self, idx, *decoded):
        steps.append({'idx': idx})
        return original_step(self, idx, *decoded)

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, '_step_loss', spy_loss)
    mp.setattr(Trainer, 'train_step', spy_step)
    try:
        tmp = tmp_path_factory.mktemp('method')
        run(digits_cfg(tmp, '--nepoch', '1', '--n_samples', '0'), lambda c: subset(digits, 600, 100))
    finally:
        mp.undo()
    return steps, candidates


def picked_labels(step, diffusion):
    """The one-hot y_0 the loss was built from, recovered from y_t = √ᾱ·y_0 + √(1−ᾱ)·ε."""
    t = step['t']
    y0 = (step['y_t'] - diffusion.sqrt_one_minus_alphas_bar[t, None] * step['noise']) / diffusion.sqrt_alphas_bar[t, None]
    torch.testing.assert_close(y0, torch.nn.functional.one_hot(y0.argmax(1), y0.shape[1]).float(), atol=1e-3, rtol=0)
    return y0.argmax(1)


def test_the_loss_learns_retrieved_labels_not_the_noisy_ones(fed_to_the_loss):
    steps, c = fed_to_the_loss
    table, noisy = c['table'], c['noisy']
    moved, expected_moved = 0, 0.0
    for step in steps:
        labels, rows = picked_labels(step, c['diffusion']), table[step['idx']]
        assert (rows == labels[:, None]).any(1).all()  # every target is one of the sample's candidates
        moved += int((labels != noisy[step['idx']]).sum())
        expected_moved += float((rows != noisy[step['idx']][:, None]).float().mean(1).sum())
    n = sum(len(s['idx']) for s in steps)
    # with 40% noise the neighbours often disagree with the own label: so do the targets, as often
    assert expected_moved / n > 0.15
    assert moved / n == pytest.approx(expected_moved / n, abs=0.05)


def test_the_loss_weights_are_the_candidates_agreement(fed_to_the_loss):
    steps, c = fed_to_the_loss
    for step in steps:
        labels, rows = picked_labels(step, c['diffusion']), c['table'][step['idx']]
        counts = (rows == labels[:, None]).sum(1).float()
        assert counts.min() < counts.max()  # uniform weights would differ from these
        torch.testing.assert_close(step['weights'], counts / counts.sum())


def test_timesteps_come_in_antithetic_pairs(fed_to_the_loss):
    steps, c = fed_to_the_loss
    T = c['diffusion'].n_timesteps
    for step in steps:
        t, half = step['t'], len(step['t']) // 2 + 1
        assert torch.equal(t[:len(t) - half] + t[half:], torch.full((len(t) - half,), T - 1))
        assert len(t.unique()) > 1


def test_the_image_embedding_gates_the_first_layer():
    torch.manual_seed(0)
    model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=100).eval()
    fp_x, t = torch.randn(5, 6), torch.full((5,), 50)
    y_a, y_b = torch.randn(5, 4), torch.randn(5, 4)
    with torch.no_grad():
        gated_off = [model.head(torch.zeros(5, 16), y, t, fp_x) for y in (y_a, y_b)]
        gated_on = [model.head(torch.ones(5, 16), y, t, fp_x) for y in (y_a, y_b)]
    # x_e = 0 cuts every path from (y_t, f_p) to the output: the gate sits on the first layer
    torch.testing.assert_close(*gated_off)
    assert not torch.allclose(*gated_on)


def test_the_cifar_diffusion_encoder_draws_its_convolutions_as_the_authors_resnet():
    """Their ResNet_for_32 keeps PyTorch's kaiming-uniform (a=√5): every weight within 1/√fan_in, uniform (std
    bound/√3). torchvision's kaiming-normal (fan_out) exceeds the bound in most layers. The encoder is never
    trained under their recipe: these draws are the features the denoiser reads."""
    torch.manual_seed(0)
    encoder = build_diff_encoder('resnet34', 16, 6, (3, 32, 32))
    convs = [m for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 36  # the stem, 32 in the blocks, 3 shortcuts
    for conv in convs:
        bound = 1 / conv.weight[0].numel() ** 0.5
        weight = conv.weight.detach()
        assert weight.abs().max() <= bound
        assert float(weight.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.1)
