"""Several ranks (the package's launcher, gloo on the CPU): they stop together, build each cache once, and
agree on every decision one of them could make alone."""
import json
import os
import re
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch

from utils.runtime import distributed
from utils.storage.loading import load_torch
from utils.runtime.distributed import device_launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the digits demo as one rank of a launch: it says where it runs (pid file per rank) before it starts
DIGITS_RANK = """
import os, sys
folder = sys.argv[1]
open(os.path.join(folder, 'pid' + os.environ['RANK']), 'w').write(str(os.getpid()))
import demo_digits
from utils.runs.cli import run_cli
run_cli(lambda argv: demo_digits.main(argv[1:]))
"""


def launch_digits(tmp_path, *flags):
    script = tmp_path / 'digits_rank.py'
    script.write_text(DIGITS_RANK)
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    where = [] if '--resume' in flags else ['--out_dir', str(tmp_path / 'runs'), '--run_name', 'r']
    argv = [str(tmp_path), *where, '--cache_dir', str(tmp_path / 'cache'), *flags]
    store = distributed.agent_store(2)
    return distributed.launch(device_launch([0, 1], str(script), argv, env, store.port), [0, 1])


def test_a_signal_one_rank_receives_stops_every_rank_after_the_same_epoch(tmp_path, capfd):
    """A scheduler's SIGTERM to one process of a launch: every rank finishes the epoch and stops after it, rank
    0 writes last.pt for that epoch, and the launch ends as a stop does (one line, 128 + SIGTERM). Deciding per
    rank, rank 1 left while rank 0 went on into the next epoch's gradient exchange and failed there. The same
    launch with --resume finishes the run."""
    run_dir = tmp_path / 'runs' / 'r'

    def signal_rank_1():  # once rank 0 has evaluated an epoch: training is under way on both ranks
        deadline = time.monotonic() + 120
        while not (run_dir / 'log.jsonl').exists() or not (tmp_path / 'pid1').exists():
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        os.kill(int((tmp_path / 'pid1').read_text()), signal.SIGTERM)
    sender = threading.Thread(target=signal_rank_1, daemon=True)
    sender.start()
    status = launch_digits(tmp_path, '--nepoch', '10', '--warmup_epochs', '0', '--eval_every', '1', '--n_samples', '2')
    sender.join()
    out, err = capfd.readouterr()
    assert status == 128 + signal.SIGTERM, err[-2000:]
    # rank 0's log alone: the data line once, an epoch line per evaluation (rank 1 printed them all again)
    evaluated = len(open(run_dir / 'log.jsonl').readlines())
    assert out.count('noisy training samples') == 1 and len(re.findall(r'^epoch +\d+ +loss', out, re.M)) == evaluated
    stopped = re.findall(r'^stopped: SIGTERM after epoch (\d+); .*Continue with --resume', err, re.M)
    assert len(stopped) == 1, err[-2000:]  # rank 0's line alone
    assert 'SIGTERM: finishing this epoch on every device, then writing last.pt' in err  # rank 1's, as it came
    epoch = int(stopped[0])
    assert epoch < 9
    saved = load_torch(str(run_dir / "last.pt"))
    assert saved['epoch'] == epoch
    log = [json.loads(line) for line in open(run_dir / 'log.jsonl')]
    assert log[-1]['epoch'] == epoch  # rank 0 trained no further than rank 1
    assert launch_digits(tmp_path, '--resume', str(run_dir)) == 0, capfd.readouterr().err[-2000:]
    log = [json.loads(line) for line in open(run_dir / 'log.jsonl')]
    assert [r['epoch'] for r in log] == list(range(10))
    assert json.load(open(run_dir / 'summary.json'))['epochs'] == 10


def test_agreed_stop_in_one_process_is_the_signal_itself():
    assert distributed.agreed_stop(None, torch.device('cpu')) is None
    assert distributed.agreed_stop(signal.SIGTERM, torch.device('cpu')) == signal.SIGTERM


# a rank of a launch that builds caches: what it computes and reads, as it says (gloo on the CPU)
CACHE_RANK = """
import sys
import numpy as np
import pytest
import torch
from utils.data.image_files import Decoding
from utils.encoders import cache
from utils.encoders.pixels import RawPixels
from utils.runtime import distributed

def say(line):  # one write: with PYTHONUNBUFFERED print writes the line and its end apart (interleaved)
    sys.stdout.write(line + '\\n')

distributed.init_from_env('cpu')
what, folder, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
rank = distributed.rank()
if what == 'table':
    def table(features, k):
        open(folder + '/computed', 'a').write(f'rank{rank} ')
        return features[:, :k] * 2
    value = cache.cached(table, dict(features=torch.arange(12.).view(4, 3), k=2), folder, 'table', log=print)
    say(f'value {value.flatten().tolist()}')
if what == 'files':
    if rank == 1:  # this rank's first look misses the cache rank 0 finds (a slow shared file system, say)
        looks, look = [], cache.load_file_features
        def first_look_misses(*args, **kwargs):
            looks.append(1)
            return None if len(looks) == 1 else look(*args, **kwargs)
        def encode_files(*args, **kwargs):
            raise AssertionError('rank 1 encoded what rank 0 had found')
        cache.load_file_features, cache.encode_files = first_look_misses, encode_files
    encoder = RawPixels((3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    found = cache.cached_file_features([encoder], paths, 'x', 'train', folder, Decoding(32), 2, 0, log=print)
    say(f'rows {found[0].shape[0]}')
distributed.leave()
"""


def launch_cache_ranks(tmp_path, *argv):
    script = tmp_path / 'cache_rank.py'
    script.write_text(CACHE_RANK)
    env = {**os.environ, 'PYTHONPATH': ROOT, 'OMP_NUM_THREADS': '1'}
    store = distributed.agent_store(2)
    return distributed.launch(device_launch([0, 1], str(script), list(argv), env, store.port), [0, 1])


def test_a_cached_computation_is_made_by_rank_0_alone_and_read_by_the_others(tmp_path, capfd):
    """The neighbour table and in-memory features: one computation and one writer of the file, not one per
    rank into the same path."""
    assert launch_cache_ranks(tmp_path, 'table', str(tmp_path)) == 0
    assert (tmp_path / 'computed').read_text().split() == ['rank0']
    values = re.findall(r'^value (.*)$', capfd.readouterr().out, re.M)
    assert values == ['[0.0, 2.0, 6.0, 8.0, 12.0, 14.0, 18.0, 20.0]'] * 2


def test_what_file_features_to_encode_is_rank_0s_finding_for_every_rank(tmp_path, capfd):
    """A rank that missed a cache rank 0 found reads it, rather than encoding its shard for a join the others
    never make (where they would wait for it)."""
    from benchmarks import layouts
    from utils.data.image_files import Decoding
    from utils.encoders.cache import cached_file_features
    from utils.encoders.pixels import RawPixels
    rng = np.random.default_rng(0)
    paths = [str(tmp_path / f'{i}.jpg') for i in range(6)]
    for i, path in enumerate(paths):
        layouts.jpeg(path, i, rng)
    cache = tmp_path / 'cache'
    encoder = RawPixels((3, 32, 32), (0.5,) * 3, (0.5,) * 3)
    cached_file_features([encoder], paths, 'x', 'train', str(cache), Decoding(32), 2, 0, log=lambda m: None)
    made = sorted(os.listdir(cache))
    status = launch_cache_ranks(tmp_path, 'files', str(cache), *paths)
    out, err = capfd.readouterr()
    assert status == 0, err[-2000:]
    assert re.findall(r'^rows (\d+)$', out, re.M) == ['6', '6']
    assert sorted(os.listdir(cache)) == made  # read, not rebuilt


def test_the_process_group_waits_past_nccls_default_and_binds_each_rank_to_its_device(monkeypatch):
    """A rank waiting while rank 0 downloads CLIP's weights (or joins a million-row cache) must not be ended by
    NCCL's 10-minute default; the communicator is bound to the rank's own device."""
    joined = {}
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('LOCAL_RANK', '1')
    monkeypatch.setattr(distributed.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(distributed.dist, 'init_process_group',
                        lambda backend, **kw: joined.update(backend=backend, **kw))
    distributed.init_from_env('cpu')
    assert joined == {'backend': 'gloo', 'timeout': distributed.COLLECTIVE_TIMEOUT, 'device_id': None}
    assert distributed.COLLECTIVE_TIMEOUT.total_seconds() >= 3600
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda index: joined.update(set_device=index))
    distributed.init_from_env('auto')
    assert joined == {'backend': 'nccl', 'timeout': distributed.COLLECTIVE_TIMEOUT,
                      'device_id': torch.device('cuda', 1), 'set_device': 1}


def test_a_rank_leaves_the_process_group_however_its_command_ends(tmp_path):
    """Torn down inside the group at interpreter exit, its threads abort the process: a launch's refusal
    (exit 2) came back as 134 (SIGABRT) about one time in 30."""
    from utils.errors import SetupError
    from utils.runs.cli import REFUSAL_EXIT, run_cli

    def refused(argv):
        raise SetupError('no such folder; give another')
    for main, status in ((refused, REFUSAL_EXIT), (lambda argv: sys.exit(3), 3)):
        torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path / str(status)}', rank=0,
                                             world_size=1)
        with pytest.raises(SystemExit) as ended:
            run_cli(main, [])
        assert ended.value.code == status and not torch.distributed.is_initialized()


def test_with_batch_statistics_each_devices_share_of_an_evaluation_batch_is_normalised_apart(tmp_path,
                                                                                              monkeypatch):
    """The authors' nn.DataParallel normalised each device's share of a batch by its own statistics: rank 0,
    evaluating alone, does the same for as many shares as the run has devices (torch.chunk's split, a
    smaller last share included); predict.py follows the checkpoint's count."""
    import train_CIFAR
    from model_diffusion import Diffusion
    from utils import evaluate
    from utils.diff_encoders import build_model
    assert (evaluate.bn_shares('batch', 4), evaluate.bn_shares('running', 4), evaluate.bn_shares('batch', 1)) == \
        (4, 1, 1)
    cfg = train_CIFAR.config(['--diff_encoder', 'linear'])
    torch.manual_seed(0)
    model = build_model(cfg, 10, 8, (3, 4, 4))
    x, fp_x = torch.randn(30, 3, 4, 4), torch.randn(30, 8)
    evaluate.evaluation_mode(model, 'batch')
    with torch.inference_mode():
        parts = torch.cat([model.embed_x(part) for part in (x[:8], x[8:16], x[16:24], x[24:])])
        torch.testing.assert_close(evaluate.embed(model, x, 4), parts)
        assert not torch.allclose(evaluate.embed(model, x, 1), parts, atol=1e-4)
    diffusion = Diffusion()
    labels = evaluate.predict_labels(model, diffusion, [(x, fp_x)], eval_bn='batch', shares=4)[0]
    sampled = evaluate.predict_labels(model, diffusion, [(x, fp_x)], eval_bn='batch', n_samples=2, shares=4)[0]
    by_part = [evaluate.predict_labels(model, diffusion, [(x[a:b], fp_x[a:b])], eval_bn='batch')[0]
               for a, b in ((0, 8), (8, 16), (16, 24), (24, 30))]
    assert torch.equal(labels, torch.cat(by_part)) and torch.equal(sampled, labels)


def test_a_checkpoint_says_how_its_evaluations_normalised_and_predict_follows_it(tmp_path, monkeypatch):
    import demo_digits
    import predict
    from utils import predict as predicting
    from utils.storage.saving import save_torch
    flags = ['--nepoch', '2', '--warmup_epochs', '0', '--eval_bn', 'batch', '--diff_encoder', 'linear',
             '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache'), '--run_name', 'r']
    demo_digits.main(flags)
    run_dir = tmp_path / 'runs' / 'r'
    best = load_torch(str(run_dir / 'best.pt'))
    assert best['eval_bn_shares'] == 1  # one process
    save_torch({**best, 'eval_bn_shares': 3}, str(run_dir / 'best.pt'))  # as a run on three devices writes it
    seen = []
    real = predicting.predict_labels
    monkeypatch.setattr(predicting, 'predict_labels', lambda *a, **kw: seen.append(kw.get('shares')) or real(*a, **kw))
    predict.main([str(run_dir), '--split', 'test', '--n_samples', '0'])
    assert seen == [3]


def test_a_lone_sample_of_a_ragged_batch_joins_the_share_before_it(tmp_path):
    """BatchNorm1d cannot take batch statistics of one sample: 5 images on 4 devices are normalised as 2 + 3."""
    import train_CIFAR
    from utils import evaluate
    from utils.diff_encoders import build_model
    cfg = train_CIFAR.config(['--diff_encoder', 'linear'])
    torch.manual_seed(0)
    model = build_model(cfg, 10, 8, (3, 4, 4))
    x = torch.randn(5, 3, 4, 4)
    evaluate.evaluation_mode(model, 'batch')
    with torch.inference_mode():
        torch.testing.assert_close(evaluate.embed(model, x, 4), torch.cat([model.embed_x(x[:2]), model.embed_x(x[2:])]))
        torch.testing.assert_close(evaluate.embed(model, x[:2], 4), model.embed_x(x[:2]))  # fewer than the devices


def test_a_resumed_run_evaluates_as_its_checkpoint_did(tmp_path):
    """Resumed on another number of devices, a run's evaluations stay comparable with those that chose its best
    epoch so far."""
    from test_engine import digits_cfg

    from conftest import subset
    from utils.data.digits import load_digits_splits
    from utils.prepare import prepare, use_k
    from utils.trainer import new_trainer
    small = subset(load_digits_splits(), 100, 20)
    cfg = digits_cfg(tmp_path, '--nepoch', '1', '--batch_size', '50', '--eval_bn', 'batch')
    data = use_k(cfg, prepare(cfg, small, torch.device('cpu'), log=lambda m: None), small, log=lambda m: None)
    trainer = new_trainer(cfg, data, small, str(tmp_path), torch.device('cpu'))
    assert trainer.bn_shares == 1
    written_on_four = {**trainer.checkpoint(0, 1.0), 'eval_bn_shares': 4}
    trainer.restore(written_on_four)
    assert trainer.bn_shares == 4
    before_it_was_kept = {k: v for k, v in written_on_four.items() if k != 'eval_bn_shares'}
    trainer.restore(before_it_was_kept)
    assert trainer.bn_shares == 1


def test_after_a_failure_under_nccl_a_rank_aborts_its_communicator_rather_than_wait_for_the_others(tmp_path,
                                                                                                   monkeypatch):
    """Destroying an NCCL communicator waits for every rank, and the others may be waiting for this one in a
    collective; a gloo group (or a run that ended well) is destroyed."""
    ended = []
    monkeypatch.setattr(distributed.dist.distributed_c10d, '_abort_process_group', lambda: ended.append('abort'))
    torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed.dist, 'get_backend', lambda: 'nccl')
        distributed.leave(failed=True)
        assert ended == ['abort'] and torch.distributed.is_initialized()
        monkeypatch.delattr(distributed.dist.distributed_c10d, '_abort_process_group')
        distributed.leave(failed=True)  # a torch without it: the exit ends the process (the launch the others)
        distributed.leave()  # ended well: destroyed
        assert ended == ['abort'] and not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_leaving_destroys_the_group_a_model_in_a_reference_cycle_still_holds(tmp_path):
    """A trainer keeps bound methods of itself, so its DistributedDataParallel (and through it the process group)
    lives until the garbage collector runs. Left to the interpreter's exit, the group's gloo threads ended a
    finished rank at random with SIGABRT ('terminate called without an active exception', exit 134): leaving
    frees the model first, so the group is destroyed at once."""
    import weakref
    torch.distributed.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))
        model(torch.randn(3, 4)).sum().backward()
        holder = {'model': model}
        holder['itself'] = holder
        alive = weakref.ref(model)
        del model, holder
        distributed.leave()
        assert alive() is None and not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_several_devices_launch_the_script_that_defines_load_splits_else_the_runs_own():
    import functools

    import train_CIFAR
    from utils.engine import launched_script
    from utils.errors import SetupError
    cfg = train_CIFAR.config([])
    assert launched_script(cfg, train_CIFAR.load_splits) == train_CIFAR.__file__
    # a wrapper, or a function of a notebook or another module: the package's script of the run's defaults
    for other in (functools.partial(train_CIFAR.load_splits), lambda c: None):
        assert launched_script(cfg, other) == os.path.join(ROOT, 'train_CIFAR.py')
    with pytest.raises(SetupError, match='several --gpu_devices run a script file'):
        launched_script(cfg.replace(script=None), lambda c: None)  # a defaults table naming no script


def test_one_process_never_looks_for_a_script_to_launch(tmp_path, monkeypatch):
    """Only several devices launch: a run in this process from a function of a defaults table naming no script
    runs as it did."""
    from utils import engine
    ran = []
    monkeypatch.setattr(engine, 'run', lambda cfg, load_splits: ran.append(cfg.script) or ('summary', 'run_dir'))
    import train_CIFAR
    cfg = train_CIFAR.config(['--out_dir', str(tmp_path)]).replace(script=None)
    assert engine.main(cfg, lambda c: None) == ('summary', 'run_dir') and ran == [None]


def test_a_refusal_one_rank_makes_alone_is_said_by_that_rank(monkeypatch, capsys):
    from utils.errors import RefusedByOneRank, SetupError
    from utils.runs.cli import REFUSAL_EXIT, run_cli
    monkeypatch.setenv(distributed.LAUNCHED, '0 1')
    monkeypatch.setenv('RANK', '1')
    for error, said in ((SetupError('all ranks refuse this; rank 0 says it'), ''),
                        (RefusedByOneRank('only rank 1 refuses this'), 'error: only rank 1 refuses this\n')):
        def refused(argv):
            raise error
        with pytest.raises(SystemExit) as ended:
            run_cli(refused, [])
        assert ended.value.code == REFUSAL_EXIT and capsys.readouterr().err == said


def test_a_tuned_backbones_imagenet_weights_are_fetched_with_the_inputs_rank_0_first(tmp_path, monkeypatch):
    """check_inputs runs under main_first: rank 0 downloads ResNet-50's weights, the others find them (each
    downloaded them at once when its trainer was made), and a failed download is refused before the run folder
    is claimed."""
    import train_Clothing1M
    from test_engine import digits_cfg

    from utils import prepare
    from utils.data.digits import load_digits_splits
    fetched, checked = [], []
    monkeypatch.setattr(prepare, 'torchvision_weights', fetched.append)
    prepare.fetch_tuned_backbone(train_Clothing1M.config(['--recipe', 'authors']))
    assert fetched == ['resnet50']
    for flags in (['--diff_backbone', 'cached'], ['--diff_encoder_weights', 'random'], ['--resume', str(tmp_path)]):
        prepare.fetch_tuned_backbone(train_Clothing1M.config(['--recipe', 'authors', *flags]))
    assert fetched == ['resnet50']  # frozen features, other weights, or a checkpoint's
    monkeypatch.setattr(prepare, 'fetch_tuned_backbone', checked.append)
    cfg = digits_cfg(tmp_path)
    prepare.check_inputs(cfg, load_digits_splits(), torch.device('cpu'), log=lambda m: None)
    assert checked == [cfg]
