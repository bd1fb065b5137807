"""The training step, evaluation and checkpoints made for the GPU's speed, checked on the CPU: the step
computes what it computed before, bit for bit; frozen bf16 weights compute what autocast computed;
checkpoints written in the background arrive whole and in order; epoch times keep the first apart."""
import os
import threading

import pytest
import torch
import torch.nn.functional as F
from test_engine import digits_cfg

from conftest import subset
from utils import engine
from utils.data.images import random_crop_flip
from utils.engine import epoch_timing
from utils.evaluate import training_mode
from utils.networks import cifar_resnet_trunk
from utils.prepare import prepare, use_k
from utils.retrieval import CandidateLabels, retrieve_candidates
from utils.runtime import devices
from utils.runtime.devices import load_optimizer_state
from utils.runtime.graphs import store_frozen_bf16
from utils.runtime.randomness import rng_state, set_rng_state
from utils.schedule import learning_rate
from utils.storage import saving as io
from utils.storage.loading import load_json, load_torch
from utils.storage.saving import BackgroundSaves, save_torch
from utils.trainer import clip_groups, new_trainer

CPU = torch.device('cpu')


def reference_epoch(trainer, epoch):
    """The training epoch as the engine ran it before the step could be captured in a CUDA graph,
    written out: the per-step search recomputing its key norms, the learning rate a number in the
    optimiser's groups, the moving average inside the step."""
    cfg, data, model = trainer.cfg, trainer.data, trainer.model
    training_mode(model)
    torch.manual_seed(cfg.seed * 100003 + epoch * 1009 + 1)
    batches = trainer.batches(epoch)
    for i, idx in enumerate(batches):
        lr = learning_rate(epoch + i / len(batches), cfg.lr, cfg.warmup_epochs, cfg.lr_horizon or cfg.nepoch)
        for group in trainer.optimizer.param_groups:
            group['lr'] = lr
        augmented = random_crop_flip(data.images['train'][idx]) if data.images else None
        fp_x = data.fp_encoder.encode(augmented) if data.fp_encoder is not None else data.features['train'][idx]
        x = trainer.inputs.x_batch('train', idx, fp_x, images=augmented)
        if cfg.per_step_retrieval:
            rows = retrieve_candidates(fp_x, data.features['train'], data.noisy_labels, data.noisy_labels[idx], cfg.k,
                                       cfg.candidates)
            labels, weights = CandidateLabels.sample_rows(rows, uniform=data.candidates.uniform)
        else:
            labels, weights = data.candidates.sample(idx)
        y0 = F.one_hot(labels, data.n_class).float()
        t = trainer.diffusion.sample_timesteps(len(idx))
        noise = torch.randn_like(y0)
        eps_hat = model(x, trainer.diffusion.q_sample(y0, t, noise), t, fp_x)
        loss = (weights * (eps_hat - noise).square().mean(1)).sum()
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in clip_groups(model, cfg.recipe):
            torch.nn.utils.clip_grad_norm_(group, cfg.grad_clip)
        trainer.optimizer.step()
        if trainer.average is not None:
            trainer.average.update()


@pytest.mark.parametrize('flags', [
    # the authors' SimCLR path: augmented batch re-encoded, neighbours searched every step, frozen ResNet
    ('--recipe', 'authors', '--diff_encoder', 'resnet18', '--batch_size', '40'),
    # the cached path with the moving average, and an odd last batch (120 = 2 × 50 + 20)
    ('--recipe', 'improved', '--diff_encoder', 'fp_mlp', '--batch_size', '50'),
], ids=['authors-simclr', 'improved-cached'])
def test_the_training_step_is_todays_bit_for_bit(tmp_path, digits, simclr18_path, flags):
    small = subset(digits, 120, 40, size=16)
    cfg = digits_cfg(tmp_path, '--fp_encoder', 'SimCLR', '--fp_checkpoint', simclr18_path, '--warmup_epochs', '1',
                     *flags)
    data = use_k(cfg, prepare(cfg, small, CPU, log=lambda m: None), small, log=lambda m: None)
    ours, reference = (new_trainer(cfg, data, small, str(tmp_path), CPU) for _ in range(2))
    assert bool(cfg.per_step_retrieval) == ('authors' in flags)
    for epoch in range(2):
        ours.train_epoch(epoch)
        reference_epoch(reference, epoch)
    for name, value in ours.model.state_dict().items():
        assert torch.equal(value, reference.model.state_dict()[name]), name
    ours_state, reference_state = ours.optimizer.state_dict()['state'], reference.optimizer.state_dict()['state']
    assert all(torch.equal(ours_state[p][k], reference_state[p][k]) for p in ours_state for k in ours_state[p])
    if ours.average is not None:
        assert all(torch.equal(a, b) for a, b in zip(ours.average.model.state_dict().values(),
                                                      reference.average.model.state_dict().values()))


def test_a_checkpoint_of_another_device_resumes_with_this_devices_optimiser(tmp_path, digits):
    """A CUDA run's checkpoint says fused, capturable Adam with its learning rate on the GPU; resumed on
    the CPU the moments and step counts load and the CPU's implementation stays."""
    small = subset(digits, 100, 20)
    cfg = digits_cfg(tmp_path, '--nepoch', '1', '--batch_size', '50')
    data = use_k(cfg, prepare(cfg, small, CPU, log=lambda m: None), small, log=lambda m: None)
    trainer = new_trainer(cfg, data, small, str(tmp_path), CPU)
    trainer.train_epoch(0)
    state = trainer.optimizer_state()
    assert all(isinstance(g['lr'], float) for g in state['param_groups'])
    as_cuda_saved = {**state, 'param_groups': [{**g, 'fused': True, 'capturable': True} for g in state['param_groups']]}
    other = new_trainer(cfg, data, small, str(tmp_path), CPU)
    load_optimizer_state(other.optimizer, as_cuda_saved)
    group = other.optimizer.param_groups[0]
    assert group['fused'] is not True and group['capturable'] is False
    moments = other.optimizer.state_dict()['state']
    assert all(torch.equal(moments[p]['exp_avg'], state['state'][p]['exp_avg']) for p in moments)
    other.set_lr(1e-4)
    other.train_epoch(1)  # steps with the CPU's Adam


def test_a_pretraining_state_saved_unfused_loads_into_the_fused_sgd_of_a_gpu():
    """pretrain_SimCLR resumed on CUDA from a CPU state: loaded as saved, its SGD would step unfused,
    reading the lr tensor back to the host at every step, and the step's graph capture would fail."""
    def sgd(fused):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3))]
        return params, torch.optim.SGD(params, lr=0.1, momentum=0.9, fused=fused)
    params, saved = sgd(None)
    params[0].square().sum().backward()
    saved.step()
    _, resumed = sgd(True)  # CPU's fused SGD stands in for the GPU's
    load_optimizer_state(resumed, saved.state_dict())
    assert resumed.param_groups[0]['fused'] is True and resumed.param_groups[0]['foreach'] is None
    assert torch.equal(next(iter(resumed.state.values()))['momentum_buffer'],
                       next(iter(saved.state.values()))['momentum_buffer'])


@pytest.mark.parametrize('make', [lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=False),
                                  lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=False)],
                         ids=['adam', 'sgd'])
def test_after_a_resume_the_optimiser_reads_the_schedules_lr_tensor(make):
    """On CUDA the schedule fills one lr tensor that the optimiser (and a graphed step) reads. Loading a
    state must leave the optimiser holding that tensor, not a copy frozen at the loaded value."""
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    saved = make(params, 0.1)
    params[0].square().sum().backward()
    saved.step()
    lr = torch.tensor(0.1)
    resumed = make(params, lr)
    load_optimizer_state(resumed, saved.state_dict())
    assert resumed.param_groups[0]['lr'] is lr
    lr.fill_(0.0)  # the schedule's next value: no update at all
    before = params[0].detach().clone()
    resumed.step()
    assert torch.equal(params[0], before)


def test_moments_loaded_from_another_layout_take_their_parameters_layout():
    """CUDA makes convolution weights channels-last; a state saved on the CPU holds contiguous moments,
    which CUDA's fused Adam and SGD refuse beside channels-last parameters."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3)
    saved = torch.optim.Adam(conv.parameters(), lr=0.1)
    conv(torch.randn(2, 3, 8, 8)).sum().backward()
    saved.step()
    state = saved.state_dict()
    conv.to(memory_format=torch.channels_last)
    resumed = torch.optim.Adam(conv.parameters(), lr=0.1)
    load_optimizer_state(resumed, state)
    weight = resumed.state[conv.weight]
    assert conv.weight.stride() != torch.empty(conv.weight.shape).stride()  # the layouts do differ here
    for name in ('exp_avg', 'exp_avg_sq'):
        assert weight[name].stride() == conv.weight.stride()
        assert torch.equal(weight[name], state['state'][0][name])


def test_a_resume_restores_the_run_devices_cuda_generator_alone(monkeypatch):
    """Saved: the run device's CUDA generator, not every visible GPU's (those fail to restore where fewer
    are visible, and put cuda:1's state into cuda:0 where the run resumes on another index). Restored:
    into the run device, from this format or the one before (a list, one per visible GPU)."""
    states, restored = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}, []
    monkeypatch.setattr(torch.cuda, 'get_rng_state', lambda device: states[torch.device(device).index])
    monkeypatch.setattr(torch.cuda, 'set_rng_state', lambda state, device: restored.append((int(state), str(device))))
    monkeypatch.setattr(torch.cuda, 'current_device', lambda: 0)
    saved = rng_state(torch.device('cuda:1'))
    assert int(saved['cuda']) == 1
    set_rng_state(saved, torch.device('cuda:0'))
    set_rng_state({**saved, 'cuda': [states[0], states[1]]}, torch.device('cuda:1'))  # the format before
    set_rng_state({**saved, 'cuda': [states[0]]}, torch.device('cuda:1'))  # saved where one GPU was visible
    set_rng_state({**saved, 'cuda': [states[0], states[1]]}, torch.device('cuda'))  # the current device's
    assert restored == [(1, 'cuda:0'), (1, 'cuda:1'), (0, 'cuda:1'), (0, 'cuda')]
    on_cpu = rng_state(CPU)
    assert 'cuda' not in on_cpu
    set_rng_state(saved, CPU)  # a CUDA run's state resumed on the CPU: its CUDA generator is not touched
    assert len(restored) == 4


def test_a_cuda_device_named_by_index_becomes_the_current_one(monkeypatch):
    """CUDA graphs capture on the current device's streams: cuda:1 must be current for its graphs to
    record its work. Under torchrun each rank has set its own (LOCAL_RANK), which --device leaves alone."""
    current = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'set_device', current.append)
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    assert devices.resolve_device('cuda:1') == torch.device('cuda', 1) and current == [torch.device('cuda', 1)]
    devices.resolve_device('cuda')  # no index: the current device, whichever it is
    monkeypatch.setenv('WORLD_SIZE', '2')
    devices.resolve_device('cuda:1')
    assert current == [torch.device('cuda', 1)]


def test_frozen_bf16_weights_compute_what_autocast_computed():
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(*cifar_resnet_trunk('resnet18'), torch.nn.Flatten(1), torch.nn.Linear(512, 8)).eval()
    trunk.to(memory_format=torch.channels_last)  # the layout alone may change the kernels: compare the dtype alone
    attention = torch.nn.MultiheadAttention(8, 2)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        before = trunk(x)
    float32_state = {k: v.clone() for k, v in trunk.state_dict().items()}
    store_frozen_bf16(store_frozen_bf16(trunk))  # idempotent
    store_frozen_bf16(attention)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        after = trunk(x)
    assert torch.equal(before, after)
    assert trunk[0].weight.dtype == torch.bfloat16 and trunk[-1].weight.dtype == torch.bfloat16
    assert trunk[1].weight.dtype == torch.float32  # BatchNorm, as autocast keeps it
    assert attention.out_proj.weight.dtype == attention.in_proj_weight.dtype == torch.float32
    state = trunk.state_dict()  # checkpoints hold float32: the values autocast used
    assert all(v.dtype == float32_state[k].dtype for k, v in state.items())
    assert torch.equal(state['0.weight'], float32_state['0.weight'].bfloat16().float())


def test_background_saves_arrive_whole_and_in_order(tmp_path, monkeypatch):
    path = str(tmp_path / 'last.pt')
    release, writing = threading.Event(), threading.Event()
    original = io.save_torch

    def slow(obj, p):
        writing.set()
        release.wait(10)
        original(obj, p)
    monkeypatch.setattr(io, 'save_torch', slow)
    weights = torch.zeros(3)
    with BackgroundSaves() as saves:
        saves.save({'epoch': 0, 'w': weights}, path)
        assert writing.wait(10) and not os.path.exists(path)  # the caller went on while it was written
        weights += 1  # the training loop changes its tensors: the save holds the copy made when it was asked
        saves.save({'epoch': 1, 'w': weights}, path)
        release.set()
    assert load_torch(path)['epoch'] == 1 and torch.equal(load_torch(path)['w'], torch.ones(3))
    monkeypatch.setattr(io, 'save_torch', original)

    # a failed write is raised where the synchronous write raised it, with its own type
    blocked = str(tmp_path / 'a_file' / 'last.pt')
    (tmp_path / 'a_file').write_text('not a folder')
    with pytest.raises(OSError) as direct:
        save_torch({'x': 1}, blocked)
    saves = BackgroundSaves()
    saves.save({'x': 1}, blocked)
    with pytest.raises(type(direct.value)):
        saves.wait()
    saves.pool.shutdown()


def test_a_run_keeps_every_epochs_seconds_with_the_first_apart(tmp_path, digits, capsys):
    flags = ('--nepoch', '4', '--warmup_epochs', '1', '--eval_every', '1', '--n_samples', '0')
    summary, run_dir = engine.run(digits_cfg(tmp_path, *flags), lambda c: subset(digits, 200, 40))
    # the log's summary line leaves each epoch's seconds to summary.json, which keeps them all
    line = [row for row in capsys.readouterr().out.splitlines() if row.startswith('summary: ')][-1]
    assert '"per_epoch"' not in line and '"train_per_warm_epoch"' in line and line.endswith('summary.json)')
    assert load_json(os.path.join(run_dir, 'summary.json'))['seconds']['per_epoch'] == summary['seconds']['per_epoch']
    seconds = summary['seconds']
    per_epoch = seconds['per_epoch']
    assert [r['epoch'] for r in per_epoch] == [0, 1, 2, 3]
    assert [r['first_of_invocation'] for r in per_epoch] == [True, False, False, False]
    assert seconds['train_first_epoch'] == per_epoch[0]['train_s']
    assert seconds['train_per_warm_epoch'] == pytest.approx(sum(r['train_s'] for r in per_epoch[1:]) / 3, abs=1e-3)
    evaluated = [r['evaluate_s'] for r in per_epoch if r['evaluate_s'] is not None]
    assert len(evaluated) == 3 and seconds['evaluation_first'] == evaluated[0]  # epochs 1-3, after warm-up
    assert all(r['checkpoint_s'] is not None for r in per_epoch) and seconds['checkpoint_writes'] > 0
    assert load_torch(os.path.join(run_dir, 'last.pt'))['epoch'] == 3  # on disk when the run returns


def test_epoch_timing_across_invocations():
    def record(epoch, train, evaluate, first):
        return {'epoch': epoch, 'train_s': train, 'evaluate_s': evaluate, 'checkpoint_s': 0.1,
                'first_of_invocation': first}
    times = [record(0, 9.0, None, True), record(1, 2.0, 5.0, False), record(2, 2.0, 1.0, False),
             record(3, 7.0, 4.0, True), record(4, 3.0, 1.0, False)]  # a resume at epoch 3
    timing = epoch_timing(times)
    assert timing['train_first_epoch'] == 9.0 and timing['train_per_warm_epoch'] == pytest.approx(7 / 3, abs=1e-3)
    assert timing['evaluation_first'] == 5.0 and timing['evaluation_per_warm'] == 1.0
    assert timing['checkpoint_wait_per_save'] == 0.1
    assert epoch_timing([])['train_per_warm_epoch'] is None


def test_an_epoch_a_signal_stopped_goes_on_with_its_random_state_on_rank_0_alone(tmp_path, digits):
    """A single process stopped mid-epoch, resumed on several devices: rank 0 continues the saved stream;
    another rank restoring it too would draw the same timesteps and noise as rank 0."""
    small = subset(digits, 100, 20)
    cfg = digits_cfg(tmp_path, '--nepoch', '1', '--batch_size', '50')
    data = use_k(cfg, prepare(cfg, small, CPU, log=lambda m: None), small, log=lambda m: None)
    trainer = new_trainer(cfg, data, small, str(tmp_path), CPU)
    torch.manual_seed(123)
    saved = rng_state(CPU)
    after_saved = torch.rand(4)
    draws = {}
    for rank in (0, 1):
        trainer.rank = rank
        trainer.partial = {'epoch': 3, 'steps_done': 2, 'of': 5, 'rng': saved, 'loss_sum': 1.5}
        assert trainer.epoch_start(3) == (2, 1.5) and trainer.partial is None
        draws[rank] = torch.rand(4)
    assert torch.equal(draws[0], after_saved) and not torch.equal(draws[1], after_saved)
    assert trainer.epoch_start(4) == (0, 0.0)  # another epoch starts at its beginning
