"""Each benchmark command at tiny size on the CPU (the GPU figures come from the same commands)."""
import contextlib
import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch

import train_CIFAR
import train_Clothing1M
from benchmarks import checkpoints, file_training, inference, numerics, retrieval, sampling, training
from model_diffusion import Diffusion
from utils.averaging import evaluated_weights
from utils.diff_encoders import build_model
from utils.encoders.clip import load_clip
from utils.errors import SetupError
from utils.evaluate import classify_images
from utils.prepare import use_k
from utils.storage.loading import load_torch
from utils.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_inference_table_runs_every_column():
    rows = inference.main(['--sizes', '16', '32', '--small', '--batch_size', '16', '--device', 'cpu'])
    assert {r['column'] for r in rows} == set(inference.COLUMNS)
    assert all(r['seconds'] > 0 and r['images_per_s'] > 0 for r in rows)


@contextlib.contextmanager
def trainers_gone_between_runs(monkeypatch, module, run_name):
    """Within: each run (`module.run_name`) starts with every earlier run's Trainer collected. Held in reference
    cycles (bound methods, graphs), its optimiser state and device memory would stay beside the next run's.
    Yields the weak references to the trainers made."""
    from utils.trainer import Trainer
    trainers, made, first_run = [], Trainer.__init__, getattr(module, run_name)

    def tracked(self, *args, **kwargs):
        made(self, *args, **kwargs)
        trainers.append(weakref.ref(self))

    def a_run(*args, **kwargs):
        assert all(t() is None for t in trainers), "the previous run's Trainer is still alive"
        return first_run(*args, **kwargs)
    monkeypatch.setattr(Trainer, '__init__', tracked)
    monkeypatch.setattr(module, run_name, a_run)
    gc.disable()  # only the benchmark's own collection frees a run's cycles
    try:
        yield trainers
    finally:
        gc.enable()


def test_training_benchmark_projects_a_paper_length_run(monkeypatch):
    with trainers_gone_between_runs(monkeypatch, training, 'one_run') as trainers:
        rows = training.main(['--small', '--nepoch', '2', '--encoders', 'ViT-B/32', '--diff_encoders', 'fp_mlp',
                              '--device', 'cpu', '--modes', 'eager', 'graphed'])
    assert len(trainers) == 2
    eager, graphed = rows
    assert (eager['mode'], eager['cuda_graph'], graphed['mode'], graphed['cuda_graph']) == ('eager', 'off', 'graphed', 'all')
    for row in rows:
        assert row['paper_length_is_projection'] and row['train_s_per_epoch'] > 0 and row['paper_length_min'] > 0
        assert row['step_image_gflop'] == 0 and row['image_tflop_per_s'] is None  # fp_mlp reads features
        # the first epoch and evaluation once, 199 warm epochs and the recipe's other evaluations
        evaluations = 39  # train_CIFAR.py's: every 5 epochs after 5 of warm-up
        expected = (row['feature_extraction_s'] + row['train_s_first_epoch'] + 199 * row['train_s_per_epoch']
                    + row['eval_s_first'] + (evaluations - 1) * row['eval_s_each'] + 200 * row['checkpoint_s_each'])
        assert row['paper_length_min'] == pytest.approx(expected / 60, abs=0.01)


def test_the_authors_step_runs_a_teraflop_of_frozen_convolutions():
    """The authors' CIFAR step on the SimCLR path: ResNet-50 f_p over the augmented views and the frozen
    CIFAR-stem ResNet-34 diffusion encoder, 200 images each, forward only; the improved recipe trains the
    diffusion encoder (forward and backward) and runs no f_p."""
    authors = train_CIFAR.config([])
    assert training.step_image_gflop(authors, 'SimCLR', small=False) == pytest.approx(464 + 519, rel=0.01)
    assert training.step_image_gflop(train_CIFAR.config(['--fp_encoder', 'CLIP']), 'ViT-L/14', False) == \
        pytest.approx(464, rel=0.01)
    improved = training.step_image_gflop(train_CIFAR.config(['--recipe', 'improved']), 'SimCLR', False)
    assert 2.5 * 464 < improved < 3.5 * 464
    rate = training.image_network_rate(authors, 'SimCLR', False, 45000, 4.04)
    assert rate['image_tflop_per_s'] == pytest.approx(983 * 225 / 4.04 / 1000, rel=0.01)


def test_retrieval_benchmark_is_exact():
    result = retrieval.main(['--n', '3000', '--dim', '32', '--k', '5', '--device', 'cpu', '--chunk_size', '700'])
    assert result['self_is_first'] == 1.0 and result['agreement_with_cdist'] == 1.0


def test_end_to_end_inference_equals_the_trainers_evaluation(tmp_path, digits, tiny_clip_path):
    """classify_images (images encoded batch by batch) gives the labels the trained run's own
    evaluation gives from its cached features, under both BatchNorm modes of the recipes."""
    from test_engine import digits_cfg

    from conftest import subset
    from utils import engine
    from utils.prepare import prepare
    small = subset(digits, 200, 60)
    for recipe in ('improved', 'authors'):
        cfg = digits_cfg(tmp_path / recipe, '--fp_encoder', 'CLIP', '--CLIP_type', tiny_clip_path, '--diff_encoder',
                         'linear', '--nepoch', '2', '--warmup_epochs', '1', '--eval_every', '1', '--n_samples', '0',
                         '--recipe', recipe, '--eval_batch_size', '25')
        summary, run_dir = engine.run(cfg, lambda c: small)
        data = use_k(cfg, prepare(cfg, small, torch.device('cpu'), log=lambda m: None), small, log=lambda m: None)
        model = build_model(cfg, 10, data.info['fp_dim'], (3, 32, 32))
        model.load_state_dict(evaluated_weights(load_torch(os.path.join(run_dir, 'best.pt'))))
        trainer = Trainer(cfg, data, model, Diffusion(), run_dir, torch.device('cpu'))
        cached = trainer.predict('test')[0]
        assert float((cached == small.test_labels).float().mean()) == pytest.approx(summary['test_acc'])
        direct = classify_images(small.test_images, load_clip(tiny_clip_path), model, Diffusion(),
                                 'image', small.mean, small.std, batch_size=25, eval_bn=cfg.eval_bn)
        assert torch.equal(direct, cached)


def test_extraction_benchmark_decodes_and_encodes_every_file():
    from benchmarks import extraction
    result = extraction.main(['--n', '40', '--small', '--workers', '2', '--batch_size', '16', '--device', 'cpu'])
    assert result['images'] == 40 and result['feature_dim'] == 32 and result['images_per_s'] > 0


def test_the_bf16_numerics_benchmark_compares_the_two_towers_on_the_same_images():
    (row,) = numerics.main(['--device', 'cpu', '--archs', 'tiny', '--n', '40'])
    assert row['arch'] == 'tiny' and 0.99 < row['min_cosine'] <= 1 and 0.5 < row['top10_overlap'] <= 1
    same = torch.randn(40, 8)
    assert numerics.neighbour_overlap(same, same) == 1.0
    assert numerics.neighbour_overlap(same, torch.randn(40, 8)) < 0.5  # unrelated features: about 10 of 39


def test_the_checkpoint_benchmark_saves_the_authors_cifar_state_both_ways(tmp_path):
    state = checkpoints.authors_state(torch.device('cpu'))
    assert 100e6 < checkpoints.state_bytes(state) < 130e6  # the denoiser and the moments of what is trained
    (tmp_path / 'last.pt').write_bytes(b'a run\'s checkpoint')  # --out_dir named a run folder
    result = checkpoints.main(['--out_dir', str(tmp_path), '--saves', '1'])
    assert len(result['synchronous_s']) == len(result['background_wait_s']) == 1
    assert os.listdir(tmp_path) == ['last.pt'] and (tmp_path / 'last.pt').read_bytes() == b'a run\'s checkpoint'


def test_the_file_training_benchmark_frees_each_run_before_the_next(monkeypatch):
    with trainers_gone_between_runs(monkeypatch, file_training, 'run_variant') as trainers:
        result = file_training.main(['--small', '--device', 'cpu'])
    assert len(trainers) == len(result['rows']) == len(file_training.VARIANTS) >= 2


def test_the_file_training_benchmark_gives_weights_only_to_the_networks_a_run_builds():
    weights = file_training.random_weights
    assert weights([], 'f') == ['--fp_checkpoint', 'f/CC_net.pt', '--diff_encoder_weights', 'random']  # defaults
    assert weights(['--fp_encoder', 'raw', '--diff_encoder', 'resnet18_l'], 'f') == ['--diff_encoder_weights', 'random']
    assert weights(['--fp_encoder', 'CLIP', '--diff_encoder', 'fp_mlp'], 'f') == []
    for extra in ([], ['--fp_encoder', 'CLIP', '--diff_encoder', 'fp_mlp'], ['--recipe', 'improved']):
        argv = ['--clothing1m_root', 'r', *weights(extra, 'f'), *extra]
        assert train_Clothing1M.config(argv).clothing1m_root == os.path.abspath('r')  # every flag for a network the run builds


def test_gpu_profiles_share_the_kernels_time_counted_once():
    """On a GPU the profiler gives a kernel's time both to the kernel and to the CPU op that launched it, and
    user annotations span kernels again: the shares are of the kernels' time alone, each kernel once."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from benchmarks.common import ranked_ops

    def event(key, device_type, us, annotation=False):
        return SimpleNamespace(key=key, count=1, device_type=device_type, is_user_annotation=annotation,
                               self_device_time_total=us, self_cpu_time_total=5)
    events = [event('aten::mm', DeviceType.CPU, 300), event('gemm_kernel', DeviceType.CUDA, 300),
              event('Optimizer.step#Adam.step', DeviceType.CUDA, 100, annotation=True),
              event('elementwise_kernel', DeviceType.CUDA, 100)]  # e.g. replayed by a CUDA graph: no launching op
    ranked = ranked_ops(events, cuda=True, top=15)
    assert [(r['op'], r['share']) for r in ranked] == [('gemm_kernel', 0.75), ('elementwise_kernel', 0.25)]
    on_cpu = ranked_ops(events, cuda=False, top=2)  # CPU time of every op: the profiler's CPU events only
    assert len(on_cpu) == 2 and all(r['share'] == 0.25 for r in on_cpu)


def test_the_layouts_command_writes_only_into_a_new_or_empty_folder(tmp_path):
    """`python -m benchmarks.layouts FOLDER` writes labels.csv and four trees: a folder holding a user's files
    is refused in one line, never written over."""
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'labels.csv').write_text('my,labels\n')
    command = [sys.executable, '-m', 'benchmarks.layouts']
    refused = subprocess.run([*command, str(mine)], cwd=REPO, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr == f'error: {mine} exists and is not an empty folder; name a ' \
                                                         f'new one\n'
    assert os.listdir(mine) == ['labels.csv'] and (mine / 'labels.csv').read_text() == 'my,labels\n'
    made = subprocess.run([*command, str(tmp_path / 'new')], cwd=REPO, capture_output=True, text=True)
    assert made.returncode == 0 and (tmp_path / 'new' / 'labels.csv').is_file()


def test_the_sampling_benchmark_resumes_a_stopped_run_and_refuses_a_run_of_other_flags(tmp_path, monkeypatch):
    """A stopped seed's run said 'Continue with --resume', which the benchmark's command does not take: it
    refused the folder for good. A run of other flags in its place was measured as the benchmark's."""
    trained = []
    monkeypatch.setattr(sampling, 'run', lambda cfg, load_splits: trained.append(cfg))
    run_dir = tmp_path / 'runs' / 'seed7'
    run_dir.mkdir(parents=True)
    (run_dir / 'last.pt').write_bytes(b'')
    made = {'seed': 7, 'nepoch': 30, 'lr': 3e-3, 'noise_type': 'digits-U-0.4'}
    (run_dir / 'config.json').write_text(json.dumps(made))
    assert sampling.trained_run(str(tmp_path), 7) == str(run_dir) and trained[-1].resume == str(run_dir)
    (run_dir / 'config.json').write_text(json.dumps({**made, 'nepoch': 2}))
    with pytest.raises(SetupError, match=rf'{run_dir} holds a run of other flags \(--nepoch 2 \(here: 30\)\); '
                                         r'give another --out_dir'):
        sampling.trained_run(str(tmp_path), 7)
    assert len(trained) == 1


def test_the_sampling_benchmark_sets_the_two_samplers_side_by_side(tmp_path):
    """The frequencies of noisy sampling (η = 1, the package's) find the flipped digits better than the
    authors' noiseless stochastic DDIM (η = 0) from the same start, as docs/RESULTS.md reports; were η
    not passed through, the two rows would be one."""
    rows = sampling.main(['--out_dir', str(tmp_path), '--seeds', '123', '--n_samples', '8'])
    ours, theirs, votes = rows
    assert (ours['eta'], theirs['eta'], votes['sampler']) == (1.0, 0.0, sampling.VOTES)
    # the ranking's first key, the deterministic label, ranks well whatever the frequencies
    assert min(r['auroc_ranking'] for r in rows) > 0.9 and votes['most_sampled_accuracy'] > 0.9
    assert ours['deterministic_accuracy'] == theirs['deterministic_accuracy'] > 0.85  # one model, one answer
    assert ours['auroc_flipped'] > theirs['auroc_flipped'] + 0.05 and ours['auroc_flipped'] > 0.8
    assert ours['flipped_clean_mass'] > ours['flipped_given_mass']
    assert open(tmp_path / 'sampling.md').read() == sampling.markdown(rows)
    # a second command reuses the trained run
    summary = tmp_path / 'runs' / 'seed123' / 'summary.json'
    written = summary.stat().st_mtime_ns
    assert sampling.trained_run(str(tmp_path), 123) == str(summary.parent) and summary.stat().st_mtime_ns == written
