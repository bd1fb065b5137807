"""CUDA checks of the fast paths: the bf16 CLIP tower's effect on features and neighbours, encoders and the
SimCLR step without host syncs, the graphed SimCLR step against the eager one. They skip without CUDA."""

import pytest
import torch

import pretrain_SimCLR
from benchmarks.numerics import clip_encoder, neighbour_overlap, smooth_images
from conftest import requires_cuda, subset
from utils.encoders.cc_net import load_cc
from utils.encoders.pixels import RawPixels
from utils.encoders.random_weights import save_random_cc, save_random_simclr
from utils.encoders.simclr import load_simclr
from utils.pretraining import trainer

pytestmark = [requires_cuda, pytest.mark.gpu]

TINY = ['--dataset', 'digits', '--arch', 'resnet18', '--batch_size', '32', '--n_images', '64', '--image_size', '16',
        '--device', 'cuda', '--warmup_epochs', '0']


@pytest.mark.parametrize('arch', ['ViT-B/32', 'ViT-B/16'])
def test_the_bf16_tower_keeps_features_and_neighbours(arch):
    images = smooth_images(320, device='cuda')
    reference = clip_encoder(arch, 'clip', 'cuda')
    reference.bf16 = False  # the clip package's tower in float32
    ref = reference.encode(images)
    fused = clip_encoder(arch, 'fused', 'cuda')
    fast = fused.encode(images)  # the encoder's own CUDA path: bf16
    assert {p.dtype for p in fused.tower_in(torch.bfloat16).parameters()} == {torch.bfloat16}
    assert torch.nn.functional.cosine_similarity(ref, fast).min() >= 0.999
    assert neighbour_overlap(ref, fast) >= 0.98
    fused.bf16 = False  # float32 on CUDA: the same function as the clip package's tower
    torch.testing.assert_close(fused.encode(images), ref, atol=1e-3 * ref.abs().max().item(), rtol=0)


def test_the_bf16_weights_are_made_once():
    encoder = clip_encoder('ViT-B/32', 'fused', 'cuda')
    images = smooth_images(4, device='cuda')
    encoder.encode(images)
    tower = encoder.tower_in(torch.bfloat16)
    encoder.encode(images)
    assert encoder.tower_in(torch.bfloat16) is tower


def test_an_encode_makes_no_host_sync(tmp_path):
    """Every f_p the package builds itself (the clip package's tower is kept as it was, for comparison)."""
    images = smooth_images(16, device='cuda')
    simclr = load_simclr(save_random_simclr('resnet18', tmp_path / 's.pt'), 'cuda')
    encoders = [clip_encoder('ViT-B/32', 'fused', 'cuda'), simclr, load_cc(save_random_cc(tmp_path / 'cc.pt'), 'cuda'),
                RawPixels((3, 32, 32), (0.5,) * 3, (0.25,) * 3).finish('cuda')]
    for encoder in encoders:
        encoder.encode(images)  # warm-up: the bf16 copy, cuDNN's choices, the per-device constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for encoder in encoders:
            encoder.encode(images)
    finally:
        torch.cuda.set_sync_debug_mode('default')


def pretrainer(digits, flags):
    args = pretrain_SimCLR.parser().parse_args(TINY + flags)
    return trainer.Pretrainer(args, subset(digits, 64, 32, size=16), torch.device('cuda'))


def test_a_simclr_step_makes_no_host_sync(digits):
    for flags in ([], ['--no-cuda_graph']):
        t = pretrainer(digits, flags)
        idx = torch.arange(32, device='cuda')
        for step in range(trainer.GraphedStep.WARMUP + 1):  # warm-up steps, then the capture
            t.step(idx, step)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            loss = t.step(idx, 10)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        assert torch.isfinite(loss)


def test_the_graphed_simclr_step_equals_the_eager_one(digits, monkeypatch):
    """The same steps, graphed and eager, from the same weights on the same views (fixed here: the
    random views of a graph replay come from its own offsets of the generator)."""
    def fixed_views(images, mean, std):
        x = images.float() / 255
        return torch.cat([x, x.flip(-1)])
    monkeypatch.setattr(trainer, 'simclr_views', fixed_views)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    runs = []
    for flags in ([], ['--no-cuda_graph']):
        t = pretrainer(digits, flags)
        g = torch.Generator().manual_seed(0)
        losses = [t.step(torch.randperm(64, generator=g)[:32].cuda(), step) for step in range(8)]
        runs.append((torch.stack(losses).cpu(), t.model.state_dict()))
    assert runs[0][1].keys() == runs[1][1].keys()
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-4, atol=1e-5)
    for name, value in runs[0][1].items():
        torch.testing.assert_close(value, runs[1][1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_simclr_state_saved_on_the_cpu_steps_graphed_on_cuda(digits):
    """--device may change on --resume: a CPU state's unfused SGD must not reach the CUDA graph, whose
    capture would fail on the lr tensor read back to the host."""
    args = pretrain_SimCLR.parser().parse_args([*TINY[:-4], '--device', 'cpu', '--warmup_epochs', '0'])
    on_cpu = trainer.Pretrainer(args, subset(digits, 64, 32, size=16), torch.device('cpu'))
    on_cpu.step(torch.arange(32), 0)
    t = pretrainer(digits, [])
    t.restore(on_cpu.state())
    assert t.opt.param_groups[0]['fused'] is True and t.opt.param_groups[0]['lr'] is t.lr_now
    idx = torch.arange(32, device='cuda')
    losses = [t.step(idx, step) for step in range(1, trainer.GraphedStep.WARMUP + 3)]
    assert t.graph.graph is not None and all(torch.isfinite(loss) for loss in losses)
