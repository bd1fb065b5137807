"""The CC f_p loader on a random checkpoint in the layout of the published CC_net.pt."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from utils.data.images import CLOTHING1M_MEAN as CC_MEAN
from utils.data.images import CLOTHING1M_STD as CC_STD
from utils.encoders.cc_net import load_cc
from utils.encoders.factory import build_fp_encoder
from utils.encoders.random_weights import save_random_cc
from utils.errors import EncoderError


def authors_keys():
    """The state-dict keys of the authors' CC_model: torchvision ResNet-50 with fc = Identity under
    model_resnet, two linear heads, and two 128→64→64→14 classifiers (Linear, BatchNorm, ReLU, Dropout)."""
    keys = {'model_resnet.' + k for k in torchvision.models.resnet50().state_dict() if not k.startswith('fc.')}
    keys |= {f'{head}.{p}' for head in ('classification_fc', 'dr') for p in ('weight', 'bias')}
    for head in ('fc1', 'fc2'):
        for block in ('fc1', 'fc2'):
            keys |= {f'{head}.{block}.0.weight', f'{head}.{block}.0.bias'}
            keys |= {f'{head}.{block}.1.{p}' for p in ('weight', 'bias', 'running_mean', 'running_var',
                                                       'num_batches_tracked')}
        keys |= {f'{head}.fc3.weight', f'{head}.fc3.bias'}
    return keys


@pytest.fixture(scope='module')
def cc_path(tmp_path_factory):
    return str(save_random_cc(tmp_path_factory.mktemp('cc') / 'CC_net.pt'))


def test_random_checkpoint_has_exactly_the_authors_keys(cc_path):
    state = torch.load(cc_path, weights_only=True)
    assert set(state) == authors_keys()
    assert state['dr.weight'].shape == (128, 2048) and state['classification_fc.weight'].shape == (14, 2048)
    assert state['fc1.fc1.0.weight'].shape == (64, 128) and state['fc2.fc3.weight'].shape == (14, 64)


def test_cc_f_p_is_the_128_d_projection_of_the_resnet_50_features(cc_path):
    encoder = build_fp_encoder('CC', 'cpu', checkpoint=cc_path, bf16=False)
    assert encoder.dim == 128 and encoder.resolution == 224 and encoder.fingerprint
    encoder.resolution = 64  # the network pools adaptively; 64 px keeps the CPU test fast
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    feats = encoder.encode(images)
    assert feats.shape == (2, 128)
    # independently: a torchvision ResNet-50 with the file's weights, Clothing1M normalisation, resized
    state = torch.load(cc_path, weights_only=True)
    net = torchvision.models.resnet50()
    net.fc = torch.nn.Identity()
    net.load_state_dict({k.removeprefix('model_resnet.'): v for k, v in state.items() if k.startswith('model_resnet.')})
    x = F.interpolate(images.float() / 255, size=(64, 64), mode='bilinear', align_corners=False)
    x = (x - torch.tensor(CC_MEAN).view(1, 3, 1, 1)) / torch.tensor(CC_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.linear(net.eval()(x), state['dr.weight'], state['dr.bias'])
    torch.testing.assert_close(feats, expected, atol=1e-4, rtol=1e-4)


def test_a_file_of_another_shape_is_refused_in_one_line(tmp_path, cc_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / 'resnet18.pt')
    with pytest.raises(EncoderError, match='missing keys') as info:
        load_cc(str(tmp_path / 'resnet18.pt'))
    assert '\n' not in str(info.value)
    state = torch.load(cc_path, weights_only=True)
    state['fc1.fc1.0.weight'] = torch.zeros(64, 256)
    torch.save(state, tmp_path / 'odd.pt')
    with pytest.raises(EncoderError, match=r'another shape \(first: fc1.fc1.0.weight') as info:
        load_cc(str(tmp_path / 'odd.pt'))
    assert '\n' not in str(info.value)
    with pytest.raises(EncoderError, match='--fp_checkpoint'):
        load_cc(str(tmp_path / 'absent.pt'))
