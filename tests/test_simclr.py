"""SimCLR pre-training: augmentations, the loss, learning, the exported format, exact resume."""
import json

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF

import pretrain_SimCLR
from conftest import subset
from utils.encoders.simclr import load_simclr
from utils.errors import SetupError
from utils.pretraining.augment import (
    color_jitter_with,
    crop_params,
    jitter_params,
    random_grayscale,
    random_resized_crop_flip,
    resized_crop_flip,
    simclr_views,
)
from utils.pretraining.trainer import Pretrainer, knn_monitor, nt_xent
from utils.runs.folders import RunClaim
from utils.storage.loading import load_torch

TINY = ['--dataset', 'digits', '--arch', 'resnet18', '--batch_size', '32', '--n_images', '64', '--image_size', '8',
        '--device', 'cpu', '--knn_every', '2', '--warmup_epochs', '1']
# the pipeline the batched augmentation replaces (the SimCLR CIFAR recipe), on float tensors
JITTER = T.ColorJitter(0.4, 0.4, 0.4, 0.1)
TORCHVISION = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.RandomApply([JITTER], p=0.8),
                         T.RandomGrayscale(p=0.2)])


def ks_distance(a, b):
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return np.abs(np.searchsorted(a, grid, 'right') / len(a) - np.searchsorted(b, grid, 'right') / len(b)).max()


def test_crop_boxes_are_drawn_as_torchvision_draws_them():
    torch.manual_seed(0)
    n = 4000
    theirs = np.array([T.RandomResizedCrop.get_params(torch.zeros(3, 32, 32), [0.08, 1.0], [3 / 4, 4 / 3])
                       for _ in range(n)], float)
    ours = np.stack([v.numpy() for v in crop_params(n, 32, 32, generator=torch.Generator().manual_seed(1))], 1)
    assert ((ours[:, 2:] >= 1) & (ours[:, 2:] <= 32)).all() and (ours[:, :2] + ours[:, 2:] <= 32).all()
    # area, aspect ratio and the position within the free range; at n = 4000 a gap of 0.04 has
    # p < 1e-4 under equal distributions (clamping boxes to the image instead of redrawing them: 0.11)
    for stat in (lambda p: p[:, 2] * p[:, 3], lambda p: p[:, 3] / p[:, 2], lambda p: p[:, 0] / (33 - p[:, 2]),
                 lambda p: p[:, 1] / (33 - p[:, 3])):
        assert ks_distance(stat(theirs), stat(ours)) < 0.04
    # where no draw fits (a 4 × 64 strip: aspect 16), the centred box at the nearest allowed aspect
    top, left, h, w = crop_params(64, 4, 64, scale=(0.9, 1.0))
    assert torch.equal(torch.stack([top, left, h, w], 1)[0], torch.tensor([0, 29, 4, 5]))
    assert T.RandomResizedCrop.get_params(torch.zeros(3, 4, 64), [0.9, 1.0], [3 / 4, 4 / 3]) == (0, 29, 4, 5)


def test_crops_and_flips_equal_torchvision_for_given_boxes():
    torch.manual_seed(0)
    x = torch.rand(48, 3, 32, 32)
    top, left, h, w = crop_params(48, 32, 32)
    flip = torch.arange(48) % 2 == 0
    ours = resized_crop_flip(x, top, left, h, w, flip)
    for i in range(48):
        theirs = TF.resized_crop(x[i], int(top[i]), int(left[i]), int(h[i]), int(w[i]), [32, 32], antialias=True)
        torch.testing.assert_close(ours[i], TF.hflip(theirs) if flip[i] else theirs, atol=1e-5, rtol=0)


def test_half_the_crops_are_mirrored():
    torch.manual_seed(0)
    x = torch.rand(2000, 1, 4, 4)
    out = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0))  # the whole image, maybe mirrored
    mirrored = torch.isclose(out, x.flip(-1), atol=1e-6).flatten(1).all(1)
    assert (mirrored | torch.isclose(out, x, atol=1e-6).flatten(1).all(1)).all()
    assert abs(mirrored.float().mean().item() - 0.5) < 0.04


def test_jitter_parameters_follow_torchvision():
    n = 24000
    p = jitter_params(n, generator=torch.Generator().manual_seed(0))
    assert abs(p['apply'].float().mean().item() - 0.8) < 0.015
    for k, (low, high) in enumerate((JITTER.brightness, JITTER.contrast, JITTER.saturation)):
        f = p['factors'][:, k]
        assert low <= f.min() < low + 0.01 and high - 0.01 < f.max() <= high and abs(f.mean() - 1) < 0.01
    low, high = JITTER.hue
    assert low <= p['hue'].min() < low + 0.01 and high - 0.01 < p['hue'].max() <= high
    # every order of the four adjustments equally likely (torch.randperm(4) in torchvision)
    _, counts = torch.unique(p['order'], dim=0, return_counts=True)
    assert len(counts) == 24 and counts.min() > 0.8 * n / 24 and counts.max() < 1.2 * n / 24


def test_jitter_and_grayscale_equal_torchvision_for_given_parameters():
    torch.manual_seed(0)
    x = torch.rand(40, 3, 8, 8)
    p = jitter_params(40, generator=torch.Generator().manual_seed(3))
    ours = color_jitter_with(x, **p)
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(40):
        theirs = x[i]
        for op in p['order'][i].tolist() if p['apply'][i] else []:
            theirs = adjust[op](theirs, float(p['hue'][i] if op == 3 else p['factors'][i, op]))
        torch.testing.assert_close(ours[i], theirs, atol=1e-5, rtol=0)
    gray = random_grayscale(x, p=1.0)
    torch.testing.assert_close(gray, TF.rgb_to_grayscale(x, num_output_channels=3), atol=0, rtol=0)


def test_views_have_the_statistics_of_the_torchvision_pipeline():
    """The whole composition on the same images: pixel mean and spread, colourfulness, the share of
    gray views."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    torch.manual_seed(1)
    theirs = torch.stack([TORCHVISION(images[i % 20].float() / 255) for i in range(2000)])
    ours = simclr_views(images, (0.0,) * 3, (1.0,) * 3, views=100, generator=g)  # unnormalised

    def stats(v):
        chroma = (v - v.mean(1, keepdim=True)).abs().mean((1, 2, 3))
        return torch.stack([*v.mean((0, 2, 3)), v.std(), chroma.mean(), (chroma < 1e-6).float().mean()])
    # the gray share is a rate over 2,000 views each (standard deviation of the gap 0.013); the rest are
    # means over millions of pixels
    assert ((stats(ours) - stats(theirs)).abs() < torch.tensor([0.01] * 5 + [0.045])).all()


def test_nt_xent_prefers_matching_views():
    z = torch.randn(8, 16)
    assert nt_xent(z, z) < nt_xent(z, torch.randn(8, 16))
    assert nt_xent(z, z, temperature=0.1) < 0.1


def test_knn_monitor_on_separable_features():
    labels = torch.arange(100) % 4
    feats = torch.nn.functional.one_hot(labels, 4).float() + 0.01 * torch.randn(100, 4)
    assert knn_monitor(feats, labels, feats[:20], labels[:20], 4, k=10) == 1.0


def test_a_few_steps_lower_the_loss(digits):
    """Learning, by a margin no machine's kernels decide: ten steps on one fixed pair of views (drawn
    alike at every step), against a control of the same steps at learning rate zero. On fresh views
    each step, 30 steps lowered the loss by 0.12 on one install and by 0.2 to 0.4 on another, depending
    on the pair of views: the loss of a random pair varies more than a fixed margin can allow for."""
    def losses(lr):
        args = pretrain_SimCLR.parser().parse_args(TINY + ['--nepoch', '50', '--warmup_epochs', '0', '--lr', '0.05'])
        trainer = Pretrainer(args, subset(digits, 64, 32, size=16), torch.device('cpu'))
        trainer.lr = lr  # the peak of the schedule each step sets
        seen = []
        for step in range(10):
            trainer.model.train()
            torch.manual_seed(7)  # the same views every step
            seen.append(float(trainer.step(torch.arange(32), step)))  # the loss before this step's update
        return seen
    control, trained = losses(0.0), losses(0.05)
    assert control == [control[0]] * 10 and trained[0] == control[0]  # nothing moves at rate zero
    # ten steps take it from about 4.1 (ln 63 ≈ 4.14: chance among 63 other views) to 0.58-0.59 of that at 8 px
    # (0.59-0.61 at 16 px), for three draws of the views (2026-12-07)
    assert trained[-1] < 0.8 * control[-1]


def test_export_loads_through_the_training_loader(tmp_path):
    out = tmp_path / 'SimCLR_128_digits.pt'
    summary = pretrain_SimCLR.main(TINY + ['--nepoch', '2', '--out_dir', str(tmp_path / 'runs'), '--output', str(out)])
    encoder = load_simclr(str(out))
    assert encoder.arch == 'resnet18' and encoder.dim == 512
    side = json.load(open(tmp_path / 'SimCLR_128_digits.json'))
    assert side['epochs'] == 2 and side['knn_top1_test'] == summary['knn_top1_test'] and 'resnet18' in side['architecture']
    assert 0 <= summary['knn_top1_test'] <= 1


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    pretrain_SimCLR.main(TINY + ['--nepoch', '3', '--out_dir', str(tmp_path / 'a'), '--output', str(tmp_path / 'a.pt')])
    pretrain_SimCLR.main(TINY + ['--nepoch', '3', '--stop_after', '0', '--out_dir', str(tmp_path / 'b'),
                                 '--output', str(tmp_path / 'b.pt')])
    run_b = tmp_path / 'b' / 'digits_resnet18'
    assert load_torch(str(run_b / 'state.pt'))['epoch'] == 1
    pretrain_SimCLR.main(['--resume', str(run_b), '--device', 'cpu'])
    a, b = load_torch(str(tmp_path / 'a' / 'digits_resnet18' / 'state.pt')), load_torch(str(run_b / 'state.pt'))
    assert a['epoch'] == b['epoch'] == 3
    assert all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert [r['loss'] for r in a['history']] == [r['loss'] for r in b['history']]


def test_one_pretraining_per_folder(tmp_path):
    pretrain_SimCLR.main(TINY + ['--nepoch', '1', '--out_dir', str(tmp_path / 'a'), '--output', str(tmp_path / 'a.pt')])
    run_dir = tmp_path / 'a' / 'digits_resnet18'
    with pytest.raises(SetupError, match='already holds a run; continue it with --resume'):
        pretrain_SimCLR.main(TINY + ['--nepoch', '1', '--out_dir', str(tmp_path / 'a'), '--output', str(tmp_path / 'b.pt')])
    claim = RunClaim(str(run_dir), fresh=False)  # another process pre-training there right now
    try:
        with pytest.raises(SetupError, match='in use by another run right now'):
            pretrain_SimCLR.main(['--resume', str(run_dir), '--device', 'cpu'])
        # a fresh run there is not sent to --resume, which that run refuses while it goes on
        with pytest.raises(SetupError, match=r'digits_resnet18 holds a run that is running right now; choose another '
                                             r'--out_dir, or wait for it to finish$'):
            pretrain_SimCLR.main(TINY + ['--nepoch', '1', '--out_dir', str(tmp_path / 'a'), '--output', str(tmp_path / 'b.pt')])
    finally:
        claim.release()
    assert not (tmp_path / 'b.pt').exists()
