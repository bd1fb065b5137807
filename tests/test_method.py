"""Tests that pin the method itself: what the training loop feeds the loss, and the denoiser's wiring.

Each assertion fails if a piece of LRA-diffusion is switched off: retrieval bypassed (the loss sees
the plain noisy labels), candidate weights ignored (uniform weights), timesteps drawn without the
antithetic pairing, or the image embedding x_e no longer gating the denoiser's first layer.
"""
from types import SimpleNamespace

import pytest
import torch
from test_engine import digits_cfg

from conftest import subset
from model_diffusion import Denoiser
from utils.diff_encoders import build_diff_encoder
from utils.engine import run
from utils.retrieval import CandidateLabels
from utils.trainer import Trainer


@pytest.fixture(scope='module')
def fed_to_the_loss(tmp_path_factory, digits):
    """One epoch on 40%-noisy digits, recording every training step's loss inputs and samples."""
    steps, candidates = [], {}
    original_loss, original_step, original_lr = Trainer._step_loss, Trainer.train_step, Trainer.set_lr

    def spy_loss(self, x, y_t, t, fp_x, noise, weights):
        steps[-1].update(y_t=y_t, t=t, noise=noise, weights=weights)
        candidates.setdefault('table', self.data.candidates.candidates)
        candidates.setdefault('noisy', self.data.noisy_labels)
        candidates.setdefault('diffusion', self.diffusion)
        return original_loss(self, x, y_t, t, fp_x, noise, weights)

    def spy_step(self, idx, *decoded):
        steps.append({'idx': idx, 'lr': self.lr_now})  # set for this step just before it
        return original_step(self, idx, *decoded)

    def spy_lr(self, value):
        candidates.setdefault('peak_lr', self.cfg.lr)
        candidates.setdefault('warmup_epochs', self.cfg.warmup_epochs)
        return original_lr(self, value)

    mp = pytest.MonkeyPatch()
    mp.setattr(Trainer, '_step_loss', spy_loss)
    mp.setattr(Trainer, 'train_step', spy_step)
    mp.setattr(Trainer, 'set_lr', spy_lr)
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


def test_the_learning_rate_rises_step_by_step_through_the_warmup_epoch(fed_to_the_loss):
    """The authors' schedule is read at every step's fractional epoch, not once an epoch."""
    steps, c = fed_to_the_loss
    lrs = [float(step['lr']) for step in steps]
    assert c['warmup_epochs'] >= 1 and lrs[0] == 0  # epoch 0 lies in the warm-up
    assert all(a < b for a, b in zip(lrs, lrs[1:]))
    assert lrs[-1] == pytest.approx(c['peak_lr'] * (len(lrs) - 1) / len(lrs) / c['warmup_epochs'])


def test_the_loss_weighs_each_samples_error_by_its_retrieval_weight():
    """Σ_i w_i · mean_c (ε̂ − ε)²: a sample of weight 0.75 with no error and one of 0.25 with error 1 give
    0.25 (a plain mean would give 0.5)."""
    model = SimpleNamespace(train_model=lambda x, y_t, t, fp_x: torch.zeros(2, 3))
    noise, weights = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]]), torch.tensor([0.75, 0.25])
    assert Trainer._step_loss(model, None, None, None, None, noise, weights).item() == pytest.approx(0.25)


@pytest.fixture(scope='module')
def searched_each_step(tmp_path_factory, digits):
    """One epoch with the neighbours searched at every step (the authors' SimCLR path): each step's
    candidate rows as searched, and the labels and weights the loss was given."""
    steps = []
    original_rows, original_loss = CandidateLabels.sample_rows, Trainer._step_loss

    def spy_rows(candidates, generator=None, uniform=False):
        steps.append({'rows': candidates})
        return original_rows(candidates, generator, uniform)

    def spy_loss(self, x, y_t, t, fp_x, noise, weights):
        steps[-1].update(y_t=y_t, t=t, noise=noise, weights=weights, diffusion=self.diffusion)
        return original_loss(self, x, y_t, t, fp_x, noise, weights)

    mp = pytest.MonkeyPatch()
    mp.setattr(CandidateLabels, 'sample_rows', staticmethod(spy_rows))
    mp.setattr(Trainer, '_step_loss', spy_loss)
    try:
        tmp = tmp_path_factory.mktemp('per_step')
        cfg = digits_cfg(tmp, '--nepoch', '1', '--n_samples', '0', '--per_step_retrieval', '--fp_train_view',
                         'augmented')
        run(cfg, lambda c: subset(digits, 600, 100))
    finally:
        mp.undo()
    return [step for step in steps if 'weights' in step]  # rows sampled for the step's loss


def test_neighbours_searched_each_step_weigh_the_loss_by_their_agreement(searched_each_step):
    assert searched_each_step
    spread = False
    for step in searched_each_step:
        labels, rows = picked_labels(step, step['diffusion']), step['rows']
        assert rows.shape[1] == 11 and (rows == labels[:, None]).any(1).all()  # k = 10 neighbours + own
        counts = (rows == labels[:, None]).sum(1).float()
        spread |= bool(counts.min() < counts.max())
        torch.testing.assert_close(step['weights'], counts / counts.sum())
    assert spread  # uniform weights would differ from these


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
