"""--frozen_kernels: the frozen image networks of a step folded or compiled compute what they did eagerly."""
import warnings

import pytest
import torch
from test_engine import digits_cfg

import train_CIFAR
from benchmarks.frozen_kernels import spread_batchnorm
from conftest import subset
from utils.encoders.clip import load_clip
from utils.encoders.simclr import SimCLREncoder
from utils.networks import cifar_resnet_trunk
from utils.prepare import prepare, use_k
from utils.runtime import frozen_kernels
from utils.runtime.frozen_kernels import FoldedTrunk, fold_conv_bn, fuse_trunk
from utils.trainer import new_trainer

CPU = torch.device('cpu')


def simclr(arch):
    torch.manual_seed(0)
    return spread_batchnorm(SimCLREncoder(arch), seed=1).finish(CPU)


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])  # basic blocks; the authors' f_p, bottlenecks
def test_a_folded_simclr_encoder_encodes_as_before(arch):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    encoder = simclr(arch)
    before = encoder.encode(images)
    assert encoder.use_kernels('fused') and isinstance(encoder.f, FoldedTrunk)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.f.modules())  # every one folded
    after = encoder.encode(images)
    # the features are unit vectors: float32 rounding of the folded weights moves them by about 1e-7
    torch.testing.assert_close(after, before, rtol=0, atol=2e-6)
    assert encoder.use_kernels('fused') and isinstance(encoder.f, FoldedTrunk)  # a second call changes nothing
    torch.testing.assert_close(encoder.encode(images), after, rtol=0, atol=0)


def test_batchnorm_folds_with_its_running_statistics():
    """The statistics count: folded with the identity's instead, the features move."""
    encoder = simclr('resnet18')
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    before = encoder.encode(images)
    trunk = encoder.f
    for m in trunk.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
    encoder.f = fuse_trunk(trunk)
    assert (encoder.encode(images) - before).abs().max() > 1e-2


def test_only_an_eval_mode_resnet_trunk_folds():
    trunk = torch.nn.Sequential(*cifar_resnet_trunk('resnet18'))
    with pytest.raises(ValueError, match='training-mode BatchNorm'):
        fuse_trunk(trunk.train())
    with pytest.raises(ValueError, match='CIFAR ResNet trunk'):
        fuse_trunk(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval())
    assert SimCLREncoder('resnet18').finish(CPU).use_kernels('eager') is False


def test_compiled_applies_to_the_clip_packages_tower_alone(tiny_clip_path):
    """The fused CLIP tower's encode does not run through `features`: compiling that would change nothing,
    and the trainer would say f_p runs compiled."""
    assert load_clip(tiny_clip_path, tower='fused').use_kernels('compiled') is False
    package = load_clip(tiny_clip_path, tower='clip')
    assert package.use_kernels('compiled') is True and package.kernels == 'compiled'


def authors_trainer(tmp_path, digits, simclr18_path, kernels):
    """The authors' SimCLR path on digits: each trainer its own prepared data, since --frozen_kernels
    changes the f_p encoder the data holds."""
    small = subset(digits, 120, 40, size=16)
    cfg = digits_cfg(tmp_path, '--fp_encoder', 'SimCLR', '--fp_checkpoint', simclr18_path, '--warmup_epochs', '1',
                     '--recipe', 'authors', '--diff_encoder', 'resnet18', '--batch_size', '40',
                     '--frozen_kernels', kernels)
    data = use_k(cfg, prepare(cfg, small, CPU, log=lambda m: None), small, log=lambda m: None)
    return new_trainer(cfg, data, small, str(tmp_path), CPU)


def test_a_run_with_folded_f_p_trains_as_the_eager_one(tmp_path, digits, simclr18_path):
    fused = authors_trainer(tmp_path / 'f', digits, simclr18_path, 'fused')
    eager = authors_trainer(tmp_path / 'e', digits, simclr18_path, 'eager')
    assert isinstance(fused.data.fp_encoder.f, FoldedTrunk) and not isinstance(eager.data.fp_encoder.f, FoldedTrunk)
    for epoch in range(2):
        assert fused.train_epoch(epoch) == pytest.approx(eager.train_epoch(epoch), rel=1e-5)
    reference = eager.model.state_dict()
    for name, value in fused.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_flag_is_read_checked_and_may_change_on_resume():
    from utils.runs.folders import MAY_CHANGE_ON_RESUME
    assert train_CIFAR.config([]).frozen_kernels == 'eager'  # the default is what the authors' code runs
    assert train_CIFAR.config(['--frozen_kernels', 'fused']).frozen_kernels == 'fused'
    with pytest.raises(SystemExit):
        train_CIFAR.config(['--frozen_kernels', 'tensorrt'])
    assert 'frozen_kernels' in MAY_CHANGE_ON_RESUME  # it changes how, not what


def test_a_compiled_run_trains_and_labels_as_the_eager_one(tmp_path, digits, simclr18_path, capsys):
    """--frozen_kernels compiled through the engine: f_p and the frozen diffusion encoder compiled, an
    epoch trained and the test split labelled (other shapes, the evaluation's mode) as eagerly. The
    authors' diffusion encoder normalises with each batch's statistics (training-mode BatchNorm): compiled,
    it still does, or the loss would differ; and its state dict keeps its keys, so checkpoints still load.
    (One compiled run: a compile takes 30-40 s on a cold CPU cache.)"""
    compiled = authors_trainer(tmp_path / 'c', digits, simclr18_path, 'compiled')
    assert 'f_p and the diffusion encoder' in capsys.readouterr().out
    eager = authors_trainer(tmp_path / 'e', digits, simclr18_path, 'eager')
    assert compiled.train_epoch(0) == pytest.approx(eager.train_epoch(0), rel=1e-4)
    torch.testing.assert_close(compiled.predict('test'), eager.predict('test'), rtol=0, atol=0)
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())


def test_a_batchnorm_without_affine_weights_folds_and_a_training_one_anywhere_is_refused():
    conv, bn = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4, affine=False)
    bn.running_mean.uniform_(-0.3, 0.3), bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fold_conv_bn(conv, bn.eval())(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    trunk = torch.nn.Sequential(*cifar_resnet_trunk('resnet18')).eval()
    trunk[4][0].bn1.train()  # one BatchNorm left training: it would normalise with the batch's statistics
    with pytest.raises(ValueError, match='training-mode BatchNorm'):
        fuse_trunk(trunk)


def test_an_encoder_is_not_switched_from_one_way_to_another():
    encoder = simclr('resnet18')
    assert encoder.use_kernels('fused')
    with pytest.raises(ValueError, match='already runs with --frozen_kernels fused'):
        encoder.use_kernels('compiled')


@pytest.mark.parametrize('fused_call', ['raises', 'nan', 'agrees'])
def test_the_fused_calls_are_used_only_where_they_run_and_agree(monkeypatch, fused_call):
    """The decision at a trunk's first CUDA call, its cuDNN calls stood in for: an engine missing for one
    of the real shapes, or a NaN, leaves the folded convolutions running apart, with a warning."""
    def stand_in(apart):
        def call(conv, x, *rest):
            fused = rest[-1]
            if fused and fused_call == 'raises':
                raise RuntimeError('FIND was unable to find an engine to execute this computation\nmore')
            out = apart(conv, x, *rest[:-1], False)
            return out.fill_(float('nan')) if fused and fused_call == 'nan' else out
        return call
    monkeypatch.setattr(frozen_kernels, 'conv_relu', stand_in(frozen_kernels.conv_relu))
    monkeypatch.setattr(frozen_kernels, 'conv_add_relu', stand_in(frozen_kernels.conv_add_relu))
    monkeypatch.setattr(frozen_kernels, 'cudnn_fusion_fails', lambda device, dtype: None)
    encoder = simclr('resnet18')
    images = torch.randn(4, 3, 16, 16)
    before = encoder.f(images)
    encoder.use_kernels('fused')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        encoder.f.decide_fusion(images)
    assert encoder.f.fused == (fused_call == 'agrees') and len(caught) == (fused_call != 'agrees')
    if fused_call == 'raises':
        assert encoder.f.fallback == 'FIND was unable to find an engine to execute this computation'
    torch.testing.assert_close(encoder.f.run(images), before, rtol=0, atol=2e-5)
