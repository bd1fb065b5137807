"""Checks that need CUDA; they skip on machines without it (CI has none)."""
import pytest
import torch

import demo_digits
from conftest import requires_cuda
from utils.config import parse_config
from utils.encoders import load_clip, load_simclr
from utils.engine import run
from utils.random_weights import save_random_clip, save_random_simclr
from utils.retrieval import knn

pytestmark = [requires_cuda, pytest.mark.gpu]


def test_bf16_encoders_match_fp32(tmp_path):
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device='cuda')
    for encoder in (load_clip(save_random_clip('ViT-B/32', tmp_path / 'b32.pt'), 'cuda'),
                    load_simclr(save_random_simclr('resnet50', tmp_path / 's.pt'), 'cuda')):
        encoder.bf16 = False
        ref = encoder.encode(images)
        encoder.bf16 = True
        fast = encoder.encode(images)
        assert torch.nn.functional.cosine_similarity(ref, fast).min() > 0.99


def test_knn_on_cuda_matches_cpu():
    x = torch.randn(5000, 64)
    _, cpu = knn(x, x, 10)
    _, gpu = knn(x.cuda(), x.cuda(), 10)
    assert (gpu.cpu() == cpu).float().mean() > 0.999


@pytest.mark.parametrize('flags', [[], ['--compile']])
def test_digits_run_on_cuda(tmp_path, digits, flags):
    cfg = parse_config('', demo_digits.DEFAULTS, ['--device', 'cuda', '--out_dir', str(tmp_path), '--cache_dir',
                                                  str(tmp_path / 'cache'), *flags])
    summary, _ = run(cfg, lambda c: digits)
    assert summary['test_acc'] > summary['noisy_label_accuracy'] + 0.25


def test_gpu_devices_one_id_runs_on_that_device(tmp_path, digits):
    from utils.engine import main
    last = torch.cuda.device_count() - 1
    cfg = parse_config('', demo_digits.DEFAULTS, ['--gpu_devices', str(last), '--nepoch', '2', '--warmup_epochs', '1',
                                                  '--n_samples', '0', '--out_dir', str(tmp_path), '--cache_dir',
                                                  str(tmp_path / 'cache')])
    summary, _ = main(cfg, lambda c: digits)
    assert summary['device'] == torch.cuda.get_device_name(last) and cfg.device == f'cuda:{last}'
