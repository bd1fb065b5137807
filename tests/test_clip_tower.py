"""The CLIP image tower rebuilt for inference (utils/encoders/clip_tower.py) against the clip package's own, the
--clip_tower choice, and the per-device constants of the encoders' preprocessing."""
from types import SimpleNamespace

import pytest
import torch

import train_CIFAR
from utils.data.images import channel_constant, normalize_images
from utils.encoders.cache import cached_features, computation_key, encode_view
from utils.encoders.clip import CLIPEncoder, load_clip
from utils.encoders.clip_tower import VisionTower
from utils.encoders.factory import build_fp_encoder
from utils.encoders.random_weights import random_clip_visual
from utils.errors import EncoderError

# the released towers' architectures; ViT-L/14 with 2 of its 24 blocks keeps the test cheap on a CPU
# and has every shape of the full tower (16 heads of 64, 257 tokens of 1024)
ARCHITECTURES = {'ViT-B/32': ('ViT-B/32', None), 'ViT-B/16': ('ViT-B/16', None),
                 'ViT-L/14 (2 of 24 blocks)': ('ViT-L/14', 2)}


def clip_visual(name):
    """The tower with every tensor random: as initialised, each LayerNorm is (1, 0) and the attention biases
    are 0, so a tower that dropped or swapped one of them would still match."""
    arch, layers = ARCHITECTURES[name]
    visual = random_clip_visual(arch, layers=layers)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in visual.parameters():
            if p.numel() > 1 and p.std() == 0:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return visual


@pytest.mark.parametrize('arch', ARCHITECTURES)
def test_the_fused_tower_equals_the_clip_package_tower_in_float32(arch):
    visual = clip_visual(arch)
    fused = VisionTower.from_clip(visual).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = fused(x), visual(x)
    assert ours.shape == theirs.shape == (2, visual.output_dim)
    assert (ours - theirs).abs().max() <= 1e-5 * theirs.abs().max()


def test_both_towers_load_from_one_checkpoint_and_keep_their_own_caches(tiny_clip_path, tmp_path):
    towers = {t: load_clip(tiny_clip_path, tower=t) for t in ('clip', 'fused')}
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    clip_feats, fused_feats = (towers[t].encode(images) for t in ('clip', 'fused'))
    torch.testing.assert_close(fused_feats, clip_feats, atol=1e-5, rtol=1e-5)
    # the clip package's tower keeps the cache key it had before the fused one existed
    assert towers['clip'].describe() == {'class': 'CLIPEncoder', 'version': 1, 'mean': [], 'std': []}
    assert towers['fused'].describe()['tower'] == 'fused'
    keys = [computation_key(encode_view, dict(encoder=e, images=images, view='clean', seed=None))
            for e in towers.values()]
    assert keys[0] != keys[1]
    for encoder in towers.values():
        cached_features(encoder, images, 'x', 'train', str(tmp_path), log=lambda m: None)
    assert len(list(tmp_path.iterdir())) == 2


def test_the_tower_is_chosen_by_flag(tiny_clip_path):
    for flags, tower in (([], 'fused'), (['--clip_tower', 'clip'], 'clip')):
        cfg = train_CIFAR.config(['--fp_encoder', 'CLIP', '--CLIP_type', tiny_clip_path, *flags])
        encoder = build_fp_encoder(cfg.fp_encoder, 'cpu', clip_type=cfg.CLIP_type, clip_tower=cfg.clip_tower)
        assert encoder.tower == tower
    with pytest.raises(EncoderError, match='unknown CLIP tower'):
        CLIPEncoder(SimpleNamespace(visual=None), 'ViT-B/32', tower='fast')


def test_a_bf16_copy_is_made_once_and_the_float32_weights_stay():
    fused = VisionTower.from_clip(clip_visual('ViT-L/14 (2 of 24 blocks)'))
    copy = fused.copy_as(torch.bfloat16)
    assert {p.dtype for p in copy.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fused.parameters()} == {torch.float32}
    assert all(torch.equal(copy.state_dict()[k], v.bfloat16()) for k, v in fused.state_dict().items())


def test_the_residual_is_in_place_only_without_gradients():
    fused = VisionTower.from_clip(clip_visual('ViT-L/14 (2 of 24 blocks)'))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = fused(x)
    out = fused(x)  # autograd records the graph: the residual must not overwrite what it saved
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected)
    assert fused.blocks[0].qkv.weight.grad is not None


def test_normalisation_constants_are_made_once_per_device():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    first = channel_constant((0.1, 0.2, 0.3), 'cpu')
    assert channel_constant([0.1, 0.2, 0.3], torch.device('cpu')) is first
    out = normalize_images(images, (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    expected = (images.float() / 255 - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)) / 0.5
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    with torch.inference_mode():  # made inside inference mode, still usable outside it
        fresh = channel_constant((0.7, 0.8, 0.9), 'cpu')
    assert not fresh.is_inference()


def test_a_run_made_before_the_flag_goes_on_with_the_clip_tower(tmp_path):
    from utils.runs.folders import CHECKPOINT_FORMAT, load_run
    from utils.storage.saving import save_torch
    info = {'dataset': 'cifar10', 'n_class': 10, 'fp_dim': 768, 'image_shape': [3, 32, 32], 'mean': [0.5] * 3,
            'std': [0.25] * 3}
    save_torch({'format_version': CHECKPOINT_FORMAT, 'config': {'fp_encoder': 'CLIP'}, 'data_info': info, 'epoch': 0,
                'model': {}, 'optimizer': {'param_groups': []}, 'history': [], 'elapsed_s': 1.0,
                'best': {'val_acc': -1.0, 'epoch': None, 'test_acc': None}},
               str(tmp_path / 'last.pt'))
    assert load_run(str(tmp_path))['config']['clip_tower'] == 'clip'
