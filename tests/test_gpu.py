"""Checks that need CUDA; they skip on machines without it (CI has none)."""
import os

import pytest
import torch
from test_engine import digits_cfg, run_interrupted_at

import demo_digits
from benchmarks.common import cifar_like_features, same_sets
from conftest import requires_cuda, subset
from utils.encoders.clip import load_clip
from utils.encoders.random_weights import save_random_clip, save_random_simclr
from utils.encoders.simclr import load_simclr
from utils.engine import run
from utils.evaluate import predict_labels
from utils.prepare import prepare, use_k
from utils.retrieval import SearchKeys, knn, retrieve_candidates
from utils.runtime.graphs import store_frozen_bf16
from utils.storage.loading import load_json, load_torch
from utils.trainer import new_trainer

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


@pytest.mark.parametrize('flags', [[], ['--compile'], ['--cuda_graph', 'off'], ['--cuda_graph', 'all']])
def test_digits_run_on_cuda(tmp_path, digits, flags):
    cfg = demo_digits.config(['--device', 'cuda', '--out_dir', str(tmp_path), '--cache_dir',
                                                  str(tmp_path / 'cache'), *flags])
    summary, _ = run(cfg, lambda c: digits)
    assert summary['test_acc'] > summary['noisy_label_accuracy'] + 0.25


def test_gpu_devices_one_id_runs_on_that_device(tmp_path, digits):
    from utils.engine import main
    last = torch.cuda.device_count() - 1
    cfg = demo_digits.config(['--gpu_devices', str(last), '--nepoch', '2', '--warmup_epochs', '1',
                                                  '--n_samples', '0', '--out_dir', str(tmp_path), '--cache_dir',
                                                  str(tmp_path / 'cache')])
    summary, run_dir = main(cfg, lambda c: digits)
    recorded = load_json(os.path.join(run_dir, 'config.json'))
    assert summary['device'] == torch.cuda.get_device_name(last) and recorded['device'] == f'cuda:{last}'


CUDA = torch.device('cuda')
# the authors' SimCLR path (augmented batch re-encoded, neighbours searched every step, frozen ResNet
# diffusion encoder) and the cached path (features and neighbour table read, moving average)
PATHS = {'authors': ('--recipe', 'authors', '--diff_encoder', 'resnet18'),
         'cached': ('--recipe', 'improved', '--diff_encoder', 'fp_mlp')}


def cuda_trainer(tmp_path, digits, simclr18_path, path, *flags):
    """A trainer on CUDA over 170 digits: four batches of 40 (graphed after three warm-up steps) and an
    odd one of 10 (eager)."""
    small = subset(digits, 170, 60)
    cfg = digits_cfg(tmp_path, '--device', 'cuda', '--batch_size', '40', '--warmup_epochs', '1', '--fp_encoder',
                     'SimCLR', '--fp_checkpoint', simclr18_path, '--n_samples', '0', *PATHS[path], *flags)
    data = use_k(cfg, prepare(cfg, small, CUDA, log=lambda m: None), small, log=lambda m: None)
    return new_trainer(cfg, data, small, str(tmp_path), CUDA)


def in_sync_error_mode(fn):
    """fn() with any host sync an error (a value read back, a blocking copy)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        return fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize('path', sorted(PATHS))
@pytest.mark.parametrize('graph', ['off', 'all'])
def test_a_training_step_makes_no_host_sync(tmp_path, digits, simclr18_path, path, graph):
    trainer = cuda_trainer(tmp_path, digits, simclr18_path, path, '--cuda_graph', graph)
    idx = trainer.batches(0)[0]
    for _ in range(4):  # cuDNN autotuning, the optimiser's state, and where graphed, the capture
        trainer.set_lr(1e-3)
        trainer.train_step(idx)
    in_sync_error_mode(lambda: (trainer.set_lr(5e-4), trainer.train_step(idx)))
    assert (trainer.step_graph.captured if trainer.step_graph else 0) == (graph == 'all')


@pytest.mark.parametrize('path', sorted(PATHS))
def test_graphed_and_eager_training_agree(tmp_path, digits, simclr18_path, path):
    """The same kernels and the same draws (the default generator's Philox offsets advance in a replay as
    in eager calls): after three epochs of 5 steps, the weights agree to float rounding."""
    graphed = cuda_trainer(tmp_path / 'g', digits, simclr18_path, path, '--cuda_graph', 'all')
    eager = cuda_trainer(tmp_path / 'e', digits, simclr18_path, path, '--cuda_graph', 'off')
    losses = [(graphed.train_epoch(e), eager.train_epoch(e)) for e in range(3)]
    assert graphed.step_graph.captured == 1 and eager.step_graph is None
    for a, b in losses:
        assert a == pytest.approx(b, rel=1e-4)
    reference = eager.model.state_dict()
    for name, value in graphed.model.state_dict().items():
        torch.testing.assert_close(value, reference[name], rtol=1e-3, atol=1e-5, msg=name)
    if graphed.average is not None:
        for a, b in zip(graphed.average.model.parameters(), eager.average.model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('path', sorted(PATHS))
def test_graphed_evaluation_gives_the_eager_labels(tmp_path, digits, simclr18_path, path):
    trainer = cuda_trainer(tmp_path, digits, simclr18_path, path, '--eval_batch_size', '25')
    graphed_labels_are_the_eager_ones(trainer, digits)


def test_graphed_evaluation_of_a_compiled_diffusion_encoder_gives_the_eager_labels(tmp_path, digits, simclr18_path):
    """--frozen_kernels compiled: the compiled forward is captured in the evaluation graphs (compiled in the
    first warm-up batch of each shape and mode, never during a capture)."""
    trainer = cuda_trainer(tmp_path, digits, simclr18_path, 'authors', '--eval_batch_size', '25',
                           '--frozen_kernels', 'compiled')
    graphed_labels_are_the_eager_ones(trainer, digits)


def graphed_labels_are_the_eager_ones(trainer, digits):
    trainer.train_epoch(0)
    batches = trainer.inputs.batches('val', 25)  # 60 images: two batches of 25, one of 10
    eager = predict_labels(trainer.evaluated_model, trainer.diffusion, batches, eval_bn=trainer.cfg.eval_bn)[0]
    # each shape: two eager warm-up batches, a capture, then replays (the batch of 10 comes once a call)
    graphed = [trainer.predict('val')[0] for _ in range(4)]
    assert trainer.eval_graphs[1].captured == 2  # top-1 labels: one graph per batch shape
    assert all(torch.equal(labels, eager) for labels in graphed)
    labels = subset(digits, 170, 60).val_labels
    assert trainer.accuracy('val', labels) == pytest.approx(float((eager.cpu() == labels).float().mean()))


def test_the_bf16_shortlist_on_cuda_finds_the_float32_neighbours():
    """CIFAR-sized: 45,000 keys of 2048 dimensions (SimCLR's), 2,000 augmented queries."""
    keys, queries = [t.cuda() for t in cifar_like_features(45000, 2000, 2048)]
    exact = knn(queries, keys, 10, chunk_size=500, exact_ties=False)[1]
    stored = SearchKeys(keys, shortlist=True)
    shortlisted = knn(queries, stored, 10, chunk_size=500, exact_ties=False)[1]
    assert same_sets(shortlisted, exact) >= 0.99
    noisy = torch.randint(0, 10, (45000,), device='cuda')
    rows = retrieve_candidates(queries[:200], stored, noisy, noisy[:200], 10)
    assert rows.shape == (200, 11)


def test_frozen_bf16_encoders_encode_as_before(tmp_path):
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device='cuda')
    encoder = load_simclr(save_random_simclr('resnet50', tmp_path / 's.pt'), 'cuda')
    before = encoder.encode(images)
    store_frozen_bf16(encoder)
    after = encoder.encode(images)
    assert encoder.f[0].weight.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(before, after).min() > 0.9999  # the layout may change kernels


def test_fused_f_p_on_cuda_is_the_eager_one_to_bf16_rounding():
    """--frozen_kernels fused: BatchNorm folded, cuDNN's fused calls where they run. Against float32, its
    features are as close as eager bf16's (one rounding of the folded weights for two of the kernels')."""
    from benchmarks.frozen_kernels import spread_batchnorm, true_float32
    from utils.encoders.simclr import SimCLREncoder
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, device='cuda')

    def encoder(kernels, bf16=True):
        torch.manual_seed(0)
        e = spread_batchnorm(SimCLREncoder('resnet50'), seed=1)
        e.bf16 = bf16
        e = e.finish(CUDA)
        e.use_kernels(kernels)
        return store_frozen_bf16(e) if bf16 else e
    with true_float32():
        reference = encoder('eager', bf16=False).encode(images)
    fused = encoder('fused')
    cosine = {k: float(torch.nn.functional.cosine_similarity(e.encode(images), reference).min())
              for k, e in (('eager', encoder('eager')), ('fused', fused))}
    print(f'min cosine to float32: {cosine}; cuDNN fusion: {fused.f.fused} ({fused.f.fallback})')
    assert cosine['fused'] > 0.99 and cosine['fused'] >= cosine['eager'] - 0.005
    # whether cuDNN's fused calls run depends on the cuDNN build (benchmarks.frozen_kernels records which, for
    # the speed figures); either they ran or the reason they did not is named
    assert fused.f.fused is True or (fused.f.fused is False and fused.f.fallback), (fused.f.fused, fused.f.fallback)


def test_a_fused_training_step_makes_no_host_sync(tmp_path, digits, simclr18_path):
    trainer = cuda_trainer(tmp_path, digits, simclr18_path, 'authors', '--frozen_kernels', 'fused')
    idx = trainer.batches(0)[0]
    for _ in range(2):  # the fusion check, cuDNN autotuning, the optimiser's state
        trainer.set_lr(1e-3)
        trainer.train_step(idx)
    in_sync_error_mode(lambda: (trainer.set_lr(5e-4), trainer.train_step(idx)))


def test_a_resumed_cuda_run_continues_the_straight_one(tmp_path, digits, monkeypatch):
    """Replays draw what eager steps drew, and per-epoch seeding and the saved generator state hold with
    graphs: an interrupted and resumed run ends where the straight one does. CUDA promises no bitwise
    repeat (atomic adds, autotuned kernels), so the resumed run may differ from the straight one by what a
    second straight run differs by, plus float rounding; a resume that drew or restored anything else
    lands far away."""
    small = subset(digits, 170, 60)
    flags = ['--device', 'cuda', '--nepoch', '4', '--warmup_epochs', '1', '--batch_size', '40', '--n_samples', '0']
    for name in ('a', 'again'):
        run(digits_cfg(tmp_path / name, *flags), lambda c: small)
    run_interrupted_at(monkeypatch, 2, digits_cfg(tmp_path / 'b', *flags), small)
    run_dir = str(tmp_path / 'b' / 'runs' / 'r')
    run(demo_digits.config(['--resume', run_dir, '--device', 'cuda']), lambda c: small)
    straight, again, ends = [load_torch(os.path.join(d, 'last.pt'))['model'] for d in
                             (str(tmp_path / 'a' / 'runs' / 'r'), str(tmp_path / 'again' / 'runs' / 'r'), run_dir)]
    for name, value in straight.items():
        if not value.is_floating_point():
            assert torch.equal(ends[name], value), name
            continue
        noise = float((again[name] - value).abs().max())
        torch.testing.assert_close(ends[name], value, rtol=1e-3, atol=1e-5 + 4 * noise, msg=name)
