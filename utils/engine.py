"""The one training/evaluation loop every dataset script calls.

Data flows one way, once: images → frozen f_p → cached features → cached neighbour table →
training on the device. Evaluation runs the DDIM sampler on the cached validation/test features
(the authors re-encoded those images at every evaluation; the features are identical).

A run folder holds config.json, log.jsonl (one line per evaluation), best.pt and last.pt
(checkpoint dicts) and summary.json.
"""
import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from model_diffusion import Diffusion
from utils import distributed
from utils.augment import random_crop_flip
from utils.averaging import WeightAverage, evaluated_weights
from utils.checks import check_config
from utils.config import recorded_config
from utils.encoders import channels_last
from utils.evaluate import SplitInputs, batch_labeller, predict_labels, training_mode
from utils.files import training_view_batches
from utils.graphs import GraphedCalls, prepare_cuda, store_frozen_bf16
from utils.io import (BackgroundSaves, append_jsonl, load_json, remove_files, save_json, sweep_partial_writes,
                      write_jsonl)
from utils.outputs import plot_accuracy, rank_file_labels, write_training_outputs
from utils.published import recording
from utils.rundir import (CHECKPOINT_FORMAT, RunClaim, check_resume_flags, check_resume_inputs, check_same_script,
                          check_writable, input_fingerprints, load_run, plan_run_dir, resumed_config,
                          sweep_stale_cache_writes)
from utils.runtime import (Interrupted, SetupError, StopSignals, default_run_name, device_description, resolve_device,
                           rng_state, seed_everything, set_rng_state)
from utils.k_trials import choose_k_by_training, take_over_trial
from utils.prepare import by_model, check_inputs, clean_train_labels, prepare, use_k
from utils.retrieval import CandidateLabels, SearchKeys, retrieve_candidates, search_options
from utils.sampling import balanced_draw
from utils.schedule import is_eval_epoch, learning_rate
from utils.diff_encoders import build_model, diff_encoder_input, load_tuned_backbone


TOP_K = 5  # evaluation also reports top-5 accuracy (the paper's WebVision columns), where there are more classes


class NonFiniteLoss(FloatingPointError):
    pass


# Eager calls of a shape before its CUDA graph is captured (the last one watched for host syncs): the
# training step's first steps (cuDNN autotuning, the optimiser's moments made), each evaluation batch
# shape's first two batches (the first may autotune a shape training did not have).
STEP_WARMUP, EVAL_WARMUP = 3, 2


def clip_groups(model, recipe):
    """The parameter groups whose gradient norms are clipped: under the authors' recipe the denoiser
    and the diffusion encoder each on its own, as their scripts do; otherwise all trained weights as one."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if recipe != 'authors':
        return [trained]
    encoder = {id(p) for p in model.diff_encoder.parameters()}
    groups = [[p for p in trained if id(p) not in encoder], [p for p in trained if id(p) in encoder]]
    return [g for g in groups if g]


class Trainer:
    def __init__(self, cfg, data, model, diffusion, run_dir, device):
        self.cfg, self.data, self.model, self.diffusion = cfg, data, model, diffusion
        self.run_dir, self.device = run_dir, device
        self.inputs = SplitInputs(diff_encoder_input(cfg.diff_encoder, cfg.diff_backbone), data.features, data.images,
                                  data.backbone_features, data.mean, data.std, data.files, data.decoding,
                                  cfg.num_workers)
        self.cuda = device.type == 'cuda'
        model.bf16_embed = self.cuda and cfg.precision == 'bf16'
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if cfg.freeze_diff_encoder:  # before DistributedDataParallel, which must not wait for its gradients
            model.diff_encoder.requires_grad_(False)
        prepare_cuda(device)
        if self.cuda:
            self.store_frozen_bf16()
        # the module training calls: DistributedDataParallel under torchrun, the model itself otherwise
        self.train_model = model
        if self.world > 1:
            ids = [device.index] if device.type == 'cuda' else None
            self.train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # --compile fuses the small denoiser's many launches (the step is launch-bound on a GPU)
        self.step_loss = torch.compile(self._step_loss, dynamic=False) if cfg.compile else self._step_loss
        params = [p for p in model.parameters() if p.requires_grad]
        # the learning rate, set every step: on CUDA a device tensor written in place, which the fused,
        # capturable Adam reads there (one launch for every parameter; no host value for a CUDA graph to fix)
        self.lr = torch.tensor(float(cfg.lr), device=device) if self.cuda else cfg.lr
        self.lr_now = cfg.lr  # the same as a number, for the log
        self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999), weight_decay=0.0,
                                          fused=self.cuda, capturable=self.cuda)
        # per-step retrieval searches the same keys every step: their norms (and on CUDA in bf16 the copy its
        # shortlist reads, utils/retrieval.shortlisted) are made once per run
        self.keys = (SearchKeys(data.features['train'], shortlist=self.cuda and cfg.precision == 'bf16')
                     if cfg.per_step_retrieval else None)
        self.step_graph = GraphedCalls(self._step, STEP_WARMUP, 'the training step') if self.graphs_train() else None
        self.eval_graphs = {}  # top_k → the evaluation's graphs, made at the first evaluation
        self.device_labels = {}  # split → its labels on the device, for the accuracy
        self.clip_groups = clip_groups(model, cfg.recipe)
        self.average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
        self.start_epoch = 0
        self.best = {'val_acc': -1.0, 'epoch': None, 'test_acc': None}
        self.history = []
        self.elapsed_before = 0.0
        self.saved_epoch = None  # the epoch last.pt holds
        self.partial = None  # where a signal stopped an epoch: its steps done and random state
        self.stop = None  # the StopSignals of fit()
        self.stopped_by = None  # the signal number, where one arrived during fit()
        # this process's seconds over every epoch of the run so far, whichever invocation (or the k trial
        # the run went on from) trained it, and how many epochs' training they hold
        self.seconds = {'train': 0.0, 'evaluate': 0.0, 'checkpoint': 0.0, 'checkpoint_writes': 0.0}
        self.timed_epochs = 0
        self.epoch_times = []  # per epoch: its training, evaluation and checkpoint seconds (epoch_timing)
        self.saves = None  # fit()'s BackgroundSaves: checkpoints are written off the critical path

    # ---- CUDA ---------------------------------------------------------------------------------
    def store_frozen_bf16(self):
        """The frozen image networks a step runs under bf16 autocast keep bf16 weights, cast once rather
        than at every call (utils/graphs.store_frozen_bf16): the f_p encoder that re-encodes each augmented
        batch, and a frozen diffusion encoder (the authors' CIFAR one)."""
        fp_encoder = self.data.fp_encoder
        if fp_encoder is not None and fp_encoder.bf16:
            store_frozen_bf16(fp_encoder)
        if self.cfg.freeze_diff_encoder and self.model.bf16_embed:
            store_frozen_bf16(self.model.diff_encoder)

    def graphs_train(self):
        """--cuda_graph replays the training step on one CUDA device (under torchrun, DistributedDataParallel
        exchanges gradients mid-step; --compile brings its own kernels) for batches of --batch_size (an odd
        last batch, or image files decoded per batch, step eagerly)."""
        return self.cuda and self.cfg.cuda_graph and self.world == 1 and not self.cfg.compile

    # ---- inputs -------------------------------------------------------------------------------
    def train_inputs(self, idx, decoded=None):
        """(x, fp_x) for a training batch: augmented pixels where the model reads them (`decoded`: the
        batch's training views, decoded from image files)."""
        data = self.data
        if decoded is not None:
            augmented = decoded.to(self.device, non_blocking=True)
        else:
            augmented = random_crop_flip(data.images['train'][idx]) if data.images else None
        fp_x = data.fp_encoder.encode(augmented) if data.fp_encoder is not None else data.features['train'][idx]
        return self.inputs.x_batch('train', idx, fp_x, images=augmented), fp_x

    # ---- training -----------------------------------------------------------------------------
    def _step_loss(self, x, y_t, t, fp_x, noise, weights):
        """The retrieval-weighted ε-MSE: Σ_i w_i · mean_c (ε̂ − ε)²."""
        eps_hat = self.train_model(x, y_t, t, fp_x)
        return (weights * (eps_hat - noise).square().mean(1)).sum()

    def retrieved_labels(self, idx, fp_x):
        """The step's picked candidate labels and weights: from the cached neighbour table, or (the
        authors' SimCLR path) from neighbours of the augmented query searched now."""
        if not self.cfg.per_step_retrieval:
            return self.data.candidates.sample(idx)
        noisy = self.data.noisy_labels
        rows = retrieve_candidates(fp_x, self.keys, noisy, noisy[idx], self.cfg.k, self.cfg.candidates,
                                   **search_options(self.cfg))
        return CandidateLabels.sample_rows(rows, uniform=self.data.candidates.uniform)

    def train_step(self, idx, decoded=None):
        """One step on the batch `idx`: replayed from the CUDA graph where it applies, else eagerly (the
        same kernels either way); then the moving average, whose rate changes every step."""
        graphed = self.step_graph is not None and decoded is None and len(idx) == self.cfg.batch_size
        loss = self.step_graph(idx) if graphed else self._step(idx, decoded)
        if self.average is not None:
            self.average.update()
        return loss

    def _step(self, idx, decoded=None):
        """Inputs, retrieval, the draws, the loss, its gradients (clipped) and the optimiser's update:
        no value read back to the host, so a CUDA graph can hold it all."""
        x, fp_x = self.train_inputs(idx, decoded)
        labels, weights = self.retrieved_labels(idx, fp_x)
        y0 = F.one_hot(labels, self.data.n_class).float()
        t = self.diffusion.sample_timesteps(len(idx))
        noise = torch.randn_like(y0)
        loss = self.step_loss(x, self.diffusion.q_sample(y0, t, noise), t, fp_x, noise, weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self.clip_groups:
            torch.nn.utils.clip_grad_norm_(group, self.cfg.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def set_lr(self, value):
        """This step's learning rate: on CUDA written into the tensor the optimiser (and a replayed step)
        reads."""
        self.lr_now = value
        if self.cuda:
            self.lr.fill_(value)
        else:
            for group in self.optimizer.param_groups:
                group['lr'] = value

    def batches(self, epoch):
        """This rank's share of each batch of an epoch: every sample, or with --per_class the epoch's
        class-balanced draw. Draw and order depend only on (seed, epoch), so every rank agrees on them
        and a resumed run replays them."""
        pool = balanced_draw(self.data.noisy_labels, self.cfg.per_class, self.cfg.seed, epoch).to(self.device)
        n = pool.shape[0]
        g = torch.Generator(self.device).manual_seed(self.cfg.seed * 100003 + epoch)
        order = pool[torch.randperm(n, device=self.device, generator=g)]
        # a last batch too small to give every rank two samples would break BatchNorm; fold it
        # into the previous batch
        cuts = list(range(0, n, self.cfg.batch_size))
        if len(cuts) > 1 and n - cuts[-1] < 2 * self.world:
            cuts.pop()
        return [order[a:b].tensor_split(self.world)[self.rank] for a, b in zip(cuts, cuts[1:] + [n])]

    def train_epoch(self, epoch):
        """One epoch's steps; the mean loss, or None when a signal stopped it after a step (self.partial
        then says where, for last.pt)."""
        training_mode(self.model)
        # the epoch's draws (candidates, timesteps, noise) come from (seed, epoch, rank): exact resume
        torch.manual_seed(self.cfg.seed * 100003 + epoch * 1009 + self.rank + 1)
        batches = self.batches(epoch)
        loss_sum = torch.zeros((), device=self.device)
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        start = 0
        if self.partial is not None and self.partial['epoch'] == epoch:  # resuming within this epoch
            start = self.partial['steps_done']
            set_rng_state(self.partial['rng'])
            loss_sum += self.partial['loss_sum']
        self.partial = None
        decoded = self.decoded_views(batches[start:], epoch)
        for i in range(start, len(batches)):
            self.set_lr(learning_rate(epoch + i / len(batches), self.cfg.lr, self.cfg.warmup_epochs,
                                      self.cfg.lr_horizon or self.cfg.nepoch))
            loss = self.train_step(batches[i], next(decoded) if decoded is not None else None)
            loss_sum += loss
            # recorded on the device, read once per epoch: no host sync per step
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)
            if self.stop_requested() and i + 1 < len(batches):
                self.partial = {'epoch': epoch, 'steps_done': i + 1, 'of': len(batches), 'rng': rng_state(),
                                'loss_sum': float(loss_sum)}
                break
        bad_step = int(first_bad)
        if bad_step >= 0:
            kept = (f'the last good checkpoint ({os.path.join(self.run_dir, "last.pt")}, epoch {self.saved_epoch}) '
                    f'is kept' if self.saved_epoch is not None else 'no checkpoint had been written yet')
            raise NonFiniteLoss(f'the loss became non-finite at epoch {epoch}, step {bad_step}. Training stopped; '
                                f'{kept}. Lower --lr or check the input features.')
        return None if self.partial is not None else float(loss_sum) / len(batches)

    def decoded_views(self, batches, epoch):
        """Where the model reads image files: the training views of `batches`, decoded in order by
        DataLoader workers (seeded by seed and epoch, so a resumed epoch decodes the same views)."""
        if not self.inputs.reads_files('train'):
            return None
        return iter(training_view_batches(self.inputs.files['train'], [b.tolist() for b in batches], self.cfg.seed,
                                          epoch, self.cfg.num_workers, self.data.decoding))

    def stop_requested(self):
        """A signal asked to stop. Within an epoch only a single process stops (ranks could be at
        different steps); under torchrun the epoch in progress finishes first."""
        return self.stop is not None and self.stop.signum is not None and self.world == 1

    # ---- evaluation ---------------------------------------------------------------------------
    @property
    def evaluated_model(self):
        """The weights evaluation reads: their moving average with --ema_decay, else the trained ones."""
        return self.average.model if self.average is not None else self.model

    def predict(self, split, n_samples=0, progress=None, top_k=1):
        """Deterministic DDIM labels for a split (and, with n_samples, class frequencies; with top_k > 1
        the top_k classes of each sample, its label first)."""
        cfg = self.cfg
        batches = self.inputs.batches(split, cfg.eval_batch_size)
        return predict_labels(self.evaluated_model, self.diffusion, batches, cfg.ddim_n_step, cfg.eval_bn, n_samples,
                              cfg.seed, progress, top_k, self.evaluation_graphs(top_k) if not n_samples else None)

    def evaluation_graphs(self, top_k=1):
        """With --cuda_graph on CUDA, the deterministic labels (their top_k) of each evaluation batch shape
        replayed from a CUDA graph (the image embedding and every DDIM step: some hundred small kernels, one
        launch); the graphs live as long as the trainer, so later evaluations only replay."""
        if not (self.cuda and self.cfg.cuda_graph):
            return None
        if top_k not in self.eval_graphs:
            labeller = batch_labeller(self.evaluated_model, self.diffusion, self.cfg.ddim_n_step, top_k)
            self.eval_graphs[top_k] = GraphedCalls(labeller, EVAL_WARMUP, 'evaluation')
        return self.eval_graphs[top_k]

    def accuracy(self, split, labels):
        return self.accuracies(split, labels)[0]

    def accuracies(self, split, labels):
        """Top-1 and top-5 accuracy of a split from one DDIM pass (top-5: None for 5 classes or fewer). The
        labels are compared where the predictions are, and one number per accuracy is read back."""
        if split not in self.device_labels:
            self.device_labels[split] = labels.to(self.device)
        labels, top_k = self.device_labels[split], TOP_K if self.data.n_class > TOP_K else 1
        ranked = self.predict(split, top_k=top_k)[0]
        if top_k == 1:
            return float((ranked == labels).float().mean()), None
        hits = ranked == labels[:, None]
        return float(hits[:, 0].float().mean()), float(hits.any(1).float().mean())

    # ---- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, epoch, elapsed):
        """`epoch`: the last finished epoch; 'partial_epoch', where a signal stopped the next one mid-way."""
        return {'format_version': CHECKPOINT_FORMAT, 'config': vars(self.cfg), 'data_info': self.data.info,
                'epoch': epoch, 'partial_epoch': self.partial,
                'model': self.model.state_dict(), 'optimizer': self.optimizer_state(),
                'ema': self.average.state_dict() if self.average is not None else None,
                'best': dict(self.best), 'history': list(self.history),
                'elapsed_s': elapsed, 'seconds': dict(self.seconds), 'timed_epochs': self.timed_epochs,
                'epoch_times': list(self.epoch_times)}

    def optimizer_state(self):
        """The optimiser's state dict, its learning rate a number (on CUDA the groups hold the tensor)."""
        state = self.optimizer.state_dict()
        state['param_groups'] = [{**g, 'lr': self.lr_now} for g in state['param_groups']]
        return state

    def load_optimizer_state(self, state):
        """A saved optimiser state (moments, step counts), run the way this trainer runs it: the device
        that saved it may have been another, so the implementation flags and the learning-rate holder stay
        this trainer's (they also decide where the step counts are kept)."""
        own = [{k: g[k] for k in ('lr', 'fused', 'capturable', 'foreach')} for g in self.optimizer.param_groups]
        groups = [{**g, **kept} for g, kept in zip(state['param_groups'], own)]
        self.optimizer.load_state_dict({**state, 'param_groups': groups})

    def restore(self, ckpt):
        self.model.load_state_dict(ckpt['model'])
        self.load_optimizer_state(ckpt['optimizer'])
        if self.average is not None:
            self.average.load_state_dict(ckpt['ema'])
        self.best, self.history = ckpt['best'], ckpt['history']
        self.start_epoch = ckpt['epoch'] + 1
        self.saved_epoch = ckpt['epoch']
        self.partial = ckpt.get('partial_epoch')
        self.elapsed_before = ckpt['elapsed_s']
        if 'seconds' in ckpt:  # older checkpoints: the times of this invocation's epochs only
            self.seconds, self.timed_epochs = {**self.seconds, **ckpt['seconds']}, ckpt['timed_epochs']
        self.epoch_times = list(ckpt.get('epoch_times', []))

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self, splits):
        """Train from start_epoch to --nepoch. Checkpoints are written in the background, in order and each
        atomically; every one is on disk when fit returns or raises."""
        with StopSignals() as stop, BackgroundSaves() as self.saves:
            self.stop = stop
            try:
                return self._fit(splits, stop)
            finally:
                # a signal in the last epoch ends nothing early, but a caller with more to do must stop
                self.stopped_by = stop.signum
                self.stop = None
                self.seconds['checkpoint_writes'] += self.saves.wait()  # raises a failed write

    def save(self, epoch, elapsed, name='last.pt'):
        """A checkpoint of the state after `epoch`, written by fit()'s background writer."""
        self.seconds['checkpoint_writes'] += self.saves.written()
        self.saves.save(self.checkpoint(epoch, elapsed), os.path.join(self.run_dir, name))

    def _fit(self, splits, stop):
        """The epochs; a first SIGTERM/SIGINT ends the step in progress, writes last.pt and stops."""
        cfg, started = self.cfg, time.time()
        bar = tqdm(range(self.start_epoch, cfg.nepoch), desc='train', initial=self.start_epoch,
                   total=cfg.nepoch, dynamic_ncols=True)
        for epoch in bar:  # epochs are numbered from 0 everywhere: bar, log lines, log.jsonl, checkpoints
            bar.set_description(f'epoch {epoch}')
            t0 = time.time()
            train_loss = self.train_epoch(epoch)  # ends with a sync: the timing is the device's
            t1 = time.time()
            self.seconds['train'] += t1 - t0
            if train_loss is None:  # stopped by a signal after a step of this epoch
                self.stop_mid_epoch(epoch, self.elapsed_before + t1 - started)
            self.timed_epochs += 1
            bar.set_postfix(loss=f'{train_loss:.4f}')
            elapsed = self.elapsed_before + t1 - started
            # a run shorter than warm-up still gets one validation-selected result, at its end
            main = distributed.is_main()  # rank 0 evaluates and writes; the others wait for it
            last = epoch == cfg.nepoch - 1
            evaluated = main and (is_eval_epoch(epoch, cfg) or (last and not self.history))
            if evaluated:
                self.evaluate(epoch, train_loss, elapsed, splits)
            t2 = time.time()
            self.seconds['evaluate'] += t2 - t1
            times = {'epoch': epoch, 'train_s': round(t1 - t0, 4),
                     'evaluate_s': round(t2 - t1, 4) if evaluated else None, 'checkpoint_s': None,
                     'first_of_invocation': epoch == self.start_epoch}
            self.epoch_times.append(times)
            saved = main and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch == cfg.nepoch - 1 or stop.signum)
            if saved:
                self.save(epoch, elapsed)
                self.saved_epoch = epoch
            self.seconds['checkpoint'] += time.time() - t2
            if saved:  # the time the loop waited for it (a copy to host memory; the write is in the background)
                times['checkpoint_s'] = round(time.time() - t2, 4)
            distributed.barrier()
            if stop.signum and epoch < cfg.nepoch - 1:
                raise Interrupted(f'{stop.name} after epoch {epoch}; {os.path.join(self.run_dir, "last.pt")} holds '
                                  f'it. Continue with --resume {self.run_dir}', stop.signum)
        return self.elapsed_before + time.time() - started

    def stop_mid_epoch(self, epoch, elapsed):
        last = os.path.join(self.run_dir, 'last.pt')
        if distributed.is_main():
            self.save(epoch - 1, elapsed)
        done = self.partial
        raise Interrupted(f'{self.stop.name} at epoch {epoch}, step {done["steps_done"]} of {done["of"]}; {last} holds '
                          f'it. Continue with --resume {self.run_dir}', self.stop.signum)

    def evaluate(self, epoch, train_loss, elapsed, splits):
        val_acc, val_top5 = self.accuracies('val', splits.labels('val'))
        test_acc, test_top5 = self.accuracies('test', splits.labels('test'))
        record = {'epoch': epoch, 'val_acc': val_acc, 'test_acc': test_acc, 'train_loss': train_loss,
                  'lr': self.lr_now, 'elapsed_s': round(elapsed, 2)}
        if test_top5 is not None:
            record.update(val_top5=val_top5, test_top5=test_top5)
        improved = val_acc > self.best['val_acc']
        if improved:
            self.best = {'val_acc': val_acc, 'epoch': epoch, 'test_acc': test_acc,
                         **({'val_top5': val_top5, 'test_top5': test_top5} if test_top5 is not None else {})}
            self.save(epoch, elapsed, 'best.pt')
        self.history.append(record)
        append_jsonl(record, os.path.join(self.run_dir, 'log.jsonl'))
        tqdm.write(f'epoch {epoch:4d}  loss {train_loss:.4f}  val {100 * val_acc:6.2f}%  test {100 * test_acc:6.2f}%  '
                   f'best val {100 * self.best["val_acc"]:6.2f}% (epoch {self.best["epoch"]}){"  *" if improved else ""}')


# ---- entry point used by the dataset scripts -------------------------------------------------------

OOM_ADVICE = ('out of GPU memory: lower --batch_size (training), --eval_batch_size (evaluation) or '
              '--encode_batch_size (feature extraction), or use a smaller --diff_encoder')


def main(cfg, load_splits):
    """What every dataset script runs: train (or resume), or predict with a trained run. With several
    --gpu_devices this process only launches one process per device and returns None."""
    check_config(cfg)
    status = distributed.use_gpu_devices(cfg, refuse)
    if status is not None:
        if status:
            raise SystemExit(status)
        return None
    if cfg.predict:
        from utils.predict import predict
        return predict(cfg, load_splits)
    return run(cfg, load_splits)


def refuse(message):
    raise SetupError(message)


def run(cfg, load_splits):
    """Train and evaluate LRA-diffusion; `load_splits(cfg)` returns the dataset's ImageSplits.

    Everything is checked before work starts: the flags, the checkpoint being resumed (the script that
    made it, the flags its command line would change), the run folder (a fresh run refuses one holding
    a run or files no run wrote), then the data, labels and encoders; only then is the run folder
    claimed (refused if another run holds it) and the features extracted."""
    check_config(cfg)
    ckpt = load_run(cfg.resume) if cfg.resume else None
    if ckpt is not None:
        check_same_script(cfg, ckpt['config'], cfg.resume, '--resume')
        check_resume_flags(cfg, ckpt, cfg.resume)
        cfg = resumed_config(cfg, ckpt)
        check_config(cfg)
    distributed.init_from_env(cfg.device)
    device = distributed.local_device(resolve_device(cfg.device))
    if not cfg.resume:  # one name for every rank (the default one carries a time stamp)
        cfg.run_name = distributed.broadcast_object(cfg.run_name or default_run_name(cfg))
    run_dir = plan_run_dir(cfg)
    check_writable(cfg.cache_dir, '--cache_dir')
    check_writable(run_dir, '--resume' if cfg.resume else '--out_dir')
    seed_everything(cfg.seed)
    with recording() as published_inputs:  # the dataset's too (e.g. Clothing1M's cc_select lists)
        splits = load_splits(cfg)
        checked = check_inputs(cfg, splits, device)
    claim = RunClaim(run_dir, fresh=not cfg.resume) if distributed.is_main() else None
    try:
        sweep_stale_cache_writes(cfg.cache_dir)
        return _run(cfg, splits, checked, published_inputs, device, run_dir, ckpt)
    except torch.cuda.OutOfMemoryError as exc:
        raise SetupError(f'{OOM_ADVICE} ({str(exc).splitlines()[0]})') from exc
    finally:
        if claim is not None:
            claim.release()


def _run(cfg, splits, checked, published_inputs, device, run_dir, ckpt):
    data = prepare(cfg, splits, device, checked=checked)
    data.info['inputs'] = published_inputs  # name → url, path, git blob sha1 of every published input
    data.info['input_fingerprints'] = input_fingerprints(splits, data)
    if ckpt is not None:
        before = ckpt['data_info']
        data.info['prepare_total_s'] = round(before.get('prepare_total_s', before['prepare_s']) + data.info['prepare_s'], 2)
        if 'k_trials' in before:  # the trials that chose the run's k, run by its first invocation
            data.info['k_trials'] = before['k_trials']
        check_resume_inputs(ckpt['data_info'].get('input_fingerprints'), data.info['input_fingerprints'], run_dir)
    main = distributed.is_main()
    if main:
        os.makedirs(run_dir, exist_ok=True)
    start = ckpt  # the checkpoint the run goes on from: the one resumed, or its chosen k trial's
    if by_model(cfg) and ckpt is None:
        k, data.info['k_trials'] = choose_k_by_training(cfg, data, splits, run_dir, trial_trainer(splits, device))
        data = use_k(cfg, data, splits, k)
        start = take_over_trial(cfg, data.info, run_dir, k)
    trainer = new_trainer(cfg, data, splits, run_dir, device, start)
    if start is not None:
        resume_trainer(trainer, start, run_dir, main, quiet=ckpt is None)
    if main:
        write_config(run_dir, cfg, data.info, device, ckpt)
    print(f'{splits.name}: {data.info["n_train"]} noisy training samples ({data.info["noise_source"]}), '
          f'f_p {cfg.fp_encoder} ({data.info["fp_dim"]}-d), diffusion encoder {cfg.diff_encoder}, '
          f'device {device_description(device)}; run folder {run_dir}')
    wall = trainer.fit(splits)
    if not main:
        return None, run_dir
    summary = run_summary(cfg, trainer, data.info, device, wall)
    started = time.time()
    summary.update(finish_outputs(trainer, data, splits, run_dir))
    summary['seconds']['outputs'] = round(time.time() - started, 2)
    save_json(summary, os.path.join(run_dir, 'summary.json'))
    print('summary: ' + json.dumps(summary))
    return summary, run_dir


def new_trainer(cfg, data, splits, run_dir, device, ckpt=None):
    """A Trainer of a freshly initialised model (seeded, so the same for every cache state); the
    pre-trained backbone is loaded unless a checkpoint will replace every weight."""
    seed_everything(cfg.seed)
    model = build_model(cfg, splits.n_class, data.info['fp_dim'], tuple(data.info['image_shape']))
    if ckpt is None:
        load_tuned_backbone(model, cfg)
    model = channels_last(model.to(device), device)
    diffusion = Diffusion(cfg.n_timesteps, cfg.beta_schedule).to(device)
    return Trainer(cfg, data, model, diffusion, run_dir, device)


def trial_trainer(splits, device):
    """How utils/k_trials starts a trial: a fresh Trainer in the trial's folder, continuing the folder's
    last.pt where `resumable`."""
    def start(cfg, data, folder, resumable):
        main = distributed.is_main()
        if main:
            os.makedirs(folder, exist_ok=True)
        ckpt = None
        if resumable and os.path.isfile(os.path.join(folder, 'last.pt')):
            try:
                ckpt = load_run(folder)
            except SetupError:  # unreadable, or of an older format: the trial starts over
                ckpt = None
        if main:
            sweep_partial_writes(folder)
        if main and ckpt is None:  # a trial of other flags, or one stopped before its first epoch ended
            remove_files(folder, ('log.jsonl', 'best.pt', 'last.pt'))
        trainer = new_trainer(cfg, data, splits, folder, device, ckpt)
        if ckpt is not None:
            resume_trainer(trainer, ckpt, folder, main)
        return trainer
    return start


def resume_trainer(trainer, ckpt, run_dir, main, quiet=False):
    """The trainer continues from `ckpt`: its state restored, the log rewritten to match it."""
    trainer.restore(ckpt)
    if main:  # evaluations logged after the last checkpoint are redone: keep the log consistent
        write_jsonl(trainer.history, os.path.join(run_dir, 'log.jsonl'))
    partial = ckpt.get('partial_epoch')
    within = f', step {partial["steps_done"]} of epoch {partial["epoch"]}' if partial else ''
    if not quiet:
        print(f'resuming {run_dir} after epoch {ckpt["epoch"]}{within} (epochs count from 0)')


def run_summary(cfg, trainer, info, device, wall):
    """summary.json before the run's outputs are written: the selected model's accuracy and the times.
    wall_time_s and the training, evaluation and checkpoint seconds cover every epoch of the run, those
    an earlier invocation or the k trial the run went on from trained included; seconds.k_trials is
    this invocation's trials (the one the run went on from among them)."""
    summary = {'best_val_acc': trainer.best['val_acc'], 'best_epoch': trainer.best['epoch'],
               'test_acc': trainer.best['test_acc'], 'epochs': cfg.nepoch, 'wall_time_s': round(wall, 2),
               'device': device_description(device), 'noise_type': cfg.noise_type,
               **{k: info[k] for k in ('noisy_label_accuracy', 'retrieval_majority_accuracy') if k in info}}
    if trainer.best.get('test_top5') is not None:  # top-5 at the same epoch (over more than 5 classes)
        summary.update(best_val_top5=trainer.best['val_top5'], test_top5_acc=trainer.best['test_top5'])
    if cfg.k_choices:
        summary['k'] = cfg.k  # the chosen one
    timed = trainer.timed_epochs
    summary['seconds'] = {'prepare': info.get('prepare_total_s', info['prepare_s']),  # every invocation's
                          'train_per_epoch': round(trainer.seconds['train'] / timed, 3) if timed else None,
                          'evaluations': round(trainer.seconds['evaluate'], 2),
                          'checkpoints': round(trainer.seconds['checkpoint'], 2),
                          'checkpoint_writes': round(trainer.seconds['checkpoint_writes'], 2),
                          **epoch_timing(trainer.epoch_times), 'per_epoch': trainer.epoch_times}
    if 'k_trials' in info:
        summary['seconds']['k_trials'] = info['k_trials']['seconds']
    return summary


def epoch_timing(epoch_times):
    """Seconds of a training epoch and of an evaluation: the first of each invocation (cuDNN autotuning,
    CUDA graph capture, memory first allocated) reported apart from the warm ones, which are what a
    longer run repeats; and the mean time the loop waited for a checkpoint."""
    first, warm = {'train_s': [], 'evaluate_s': []}, {'train_s': [], 'evaluate_s': []}
    seen = set()
    for record in epoch_times:
        if record['first_of_invocation']:
            seen = set()
        for key in first:
            if record[key] is not None:
                (warm if key in seen else first)[key].append(record[key])
                seen.add(key)
    saves = [r['checkpoint_s'] for r in epoch_times if r['checkpoint_s'] is not None]

    def mean(values):
        return round(sum(values) / len(values), 4) if values else None
    return {'train_first_epoch': mean(first['train_s'][:1]), 'train_per_warm_epoch': mean(warm['train_s']),
            'evaluation_first': mean(first['evaluate_s'][:1]), 'evaluation_per_warm': mean(warm['evaluate_s']),
            'checkpoint_wait_per_save': mean(saves)}


def write_config(run_dir, cfg, info, device, ckpt):
    """config.json: the run's resolved flags and data facts. A resumed run keeps what the original
    run recorded and adds one entry per resume (where it continued, on which device)."""
    path = os.path.join(run_dir, 'config.json')
    here = {'device_name': device_description(device), 'world_size': distributed.world_size()}
    config = {**recorded_config(cfg), **info, **here}
    if ckpt is not None:
        original = load_json(path)  # unreadable: the fresh record replaces it
        if original:
            resumes = original.get('resumes', []) + [{'after_epoch': ckpt['epoch'], **here,
                                                      'command_line_flags': getattr(cfg, 'command_line_flags', None)}]
            config = {**original, 'resumes': resumes}
    save_json(config, path)


def finish_outputs(trainer, data, splits, run_dir):
    """With the best-validation weights: denoised training labels, probabilities, plots."""
    trainer.evaluated_model.load_state_dict(evaluated_weights(load_run(run_dir, 'best.pt')))
    denoised, probs = trainer.predict('train', n_samples=trainer.cfg.n_samples, progress='denoising the training labels')
    clean = clean_train_labels(splits)
    noisy, denoised = data.noisy_labels.cpu().numpy(), denoised.cpu().numpy()
    probs = probs.cpu().numpy() if probs is not None else None
    facts = write_training_outputs(run_dir, noisy, denoised, probs, clean, splits.class_names)
    if not splits.in_memory:  # image files: the likely mislabelled ones by path, the splits' notes
        facts.update(rank_file_labels(run_dir, splits, noisy, denoised, probs, data.candidates.candidates,
                                      trainer.cfg.n_samples), **splits.notes)
    plot_accuracy(trainer.history, os.path.join(run_dir, 'accuracy.png'), data.info.get('noisy_label_accuracy'),
                  'validation (noisy labels)' if splits.noisy_val else 'validation (clean)')
    return facts
