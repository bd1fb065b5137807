"""The one training and evaluation loop: steps, epochs, evaluation, model selection and checkpoints.

A Trainer holds the denoiser (with its diffusion encoder), the diffusion, the optimiser and the data a
step reads, all on the device. Each step draws a batch's candidate labels (the cached neighbour table,
or the authors' per-step retrieval), noises their one-hot labels at antithetic timesteps and regresses
the noise with the retrieval-weighted MSE; every --eval_every epochs from --eval_from the deterministic DDIM
sampler labels the validation and test splits, and the best validation epoch is kept (best.pt). On one
GPU the step and the evaluation batches replay CUDA graphs (utils/runtime/graphs.py).
"""
import os
import signal
import time

import torch
import torch.nn.functional as F

from model_diffusion import Diffusion
from utils.averaging import WeightAverage
from utils.data.image_files import training_view_batches
from utils.data.images import channels_last, random_crop_flip
from utils.data.sampling import balanced_draw
from utils.diff_encoders import build_model, diff_encoder_input, load_tuned_backbone
from utils.errors import Interrupted, NonFiniteLoss, ResumeRefused, quoted_error
from utils.evaluate import SplitInputs, batch_labeller, bn_shares, predict_labels, training_mode
from utils.prepare import search_options
from utils.retrieval import CandidateLabels, SearchKeys, retrieve_candidates
from utils.runs.folders import CHECKPOINT_FORMAT, load_run
from utils.runtime import distributed
from utils.runtime.devices import load_optimizer_state
from utils.runtime.frozen_kernels import compile_forward
from utils.runtime.graphs import GraphedCalls, prepare_cuda, store_frozen_bf16
from utils.runtime.progress import print_line, progress_bar
from utils.runtime.randomness import rng_state, seed_everything, set_rng_state
from utils.runtime.signals import StopSignals
from utils.schedule import is_eval_epoch, learning_rate
from utils.storage.saving import BackgroundSaves, append_jsonl, write_jsonl

# Eager calls of a shape before its CUDA graph is captured (the last one watched for host syncs): the
# training step's first steps (cuDNN autotuning, the optimiser's moments made), each evaluation batch
# shape's first two batches (the first may autotune a shape training did not have).
STEP_WARMUP, EVAL_WARMUP = 3, 2
TOP_K = 5  # evaluation also reports top-5 accuracy (the paper's WebVision columns), where there are more classes


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
        # rank 0 evaluates alone: with batch statistics, each device's share of a batch normalised apart
        self.bn_shares = bn_shares(cfg.eval_bn, self.world)
        if cfg.freeze_diff_encoder:  # before DistributedDataParallel, which must not wait for its gradients
            model.diff_encoder.requires_grad_(False)
        prepare_cuda(device)
        self.use_frozen_kernels()
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
    def use_frozen_kernels(self):
        """--frozen_kernels for the frozen image networks a step runs (utils/runtime/frozen_kernels): f_p
        where it re-encodes each augmented batch, and a frozen diffusion encoder reading the pixels. Before
        the bf16 weights are stored: 'fused' folds BatchNorm into float32 weights, rounded to bf16 once.
        With --ema_decay the averaged copy that evaluation runs is a deep copy, which torch.compile's
        wrapper does not survive: its diffusion encoder evaluates eagerly (the same function)."""
        kind = self.cfg.frozen_kernels
        if kind == 'eager':
            return
        applied = ['f_p'] if self.data.fp_encoder is not None and self.data.fp_encoder.use_kernels(kind) else []
        if kind == 'compiled' and self.cfg.freeze_diff_encoder and self.inputs.diff_input == 'image':
            compile_forward(self.model.diff_encoder)
            applied.append('the diffusion encoder')
        if self.rank == 0:
            print(f'--frozen_kernels {kind}: {" and ".join(applied) or "no frozen network of this step applies"}')

    def store_frozen_bf16(self):
        """The frozen image networks a step runs under bf16 autocast keep bf16 weights, cast once rather
        than at every call (utils/runtime/graphs.store_frozen_bf16): the f_p encoder that re-encodes each augmented
        batch, and a frozen diffusion encoder (the authors' CIFAR one)."""
        fp_encoder = self.data.fp_encoder
        if fp_encoder is not None and fp_encoder.bf16:
            store_frozen_bf16(fp_encoder)
        if self.cfg.freeze_diff_encoder and self.model.bf16_embed:
            store_frozen_bf16(self.model.diff_encoder)

    def graphs_train(self):
        """--cuda_graph all replays the training step on one CUDA device (under torchrun, DistributedDataParallel
        exchanges gradients mid-step; --compile and --frozen_kernels compiled bring their own kernels) for batches
        of --batch_size (an odd last batch, or image files decoded per batch, step eagerly)."""
        return (self.cuda and self.cfg.cuda_graph == 'all' and self.world == 1 and not self.cfg.compile
                and self.cfg.frozen_kernels != 'compiled')

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
        if self.cfg.drop_last and n > self.cfg.batch_size:
            n -= n % self.cfg.batch_size  # --drop_last, the authors' loaders on the image-file datasets
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
        start, loss_before = self.epoch_start(epoch)
        batches = self.batches(epoch)
        loss_sum = torch.zeros((), device=self.device)
        if start:
            loss_sum += loss_before
        first_bad = torch.full((), -1, device=self.device, dtype=torch.long)
        decoded = self.decoded_views(batches[start:], epoch)
        for i in range(start, len(batches)):
            self.set_lr(learning_rate(epoch + i / len(batches), self.cfg.lr, self.cfg.warmup_epochs,
                                      self.cfg.lr_horizon or self.cfg.nepoch))
            loss = self.train_step(batches[i], next(decoded) if decoded is not None else None)
            loss_sum += loss
            # recorded on the device, read once per epoch: no host sync per step
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), i, first_bad)
            if self.stop_requested() and i + 1 < len(batches):
                self.partial = {'epoch': epoch, 'steps_done': i + 1, 'of': len(batches),
                                'rng': rng_state(self.device), 'loss_sum': float(loss_sum)}
                break
        if self.world > 1:  # the epoch's loss over every rank's shard, and a non-finite loss on any rank
            loss_sum, first_bad = distributed.epoch_totals(loss_sum, first_bad)
            loss_sum = loss_sum / self.world
        bad_step = int(first_bad)
        if bad_step >= 0:
            kept = (f'the last good checkpoint ({os.path.join(self.run_dir, "last.pt")}, epoch {self.saved_epoch}) '
                    f'is kept' if self.saved_epoch is not None else 'no checkpoint had been written yet')
            raise NonFiniteLoss(f'the loss became non-finite at epoch {epoch}, step {bad_step}. Training stopped; '
                                f'{kept}. Lower --lr or check the input features.')
        return None if self.partial is not None else float(loss_sum) / len(batches)

    def epoch_start(self, epoch):
        """The step an epoch's training starts at, and the loss summed over the steps before it. The epoch's
        draws (candidates, timesteps, noise) come from (seed, epoch, rank): exact resume. Within an epoch a
        signal stopped (a single process: ranks stop between epochs), rank 0 goes on with the random state
        saved there; other ranks (that stop resumed on several devices) keep their own stream, where a copy
        of rank 0's state would draw the same noise and timesteps on every rank."""
        torch.manual_seed(self.cfg.seed * 100003 + epoch * 1009 + self.rank + 1)
        partial, self.partial = self.partial, None
        if partial is None or partial['epoch'] != epoch:
            return 0, 0.0
        if self.rank == 0:
            set_rng_state(partial['rng'], self.device)
        return partial['steps_done'], partial['loss_sum']

    def decoded_views(self, batches, epoch):
        """Where the model reads image files: the training views of `batches`, decoded in order by
        DataLoader workers (seeded by seed and epoch, so a resumed epoch decodes the same views)."""
        if not self.inputs.reads_files('train'):
            return None
        return iter(training_view_batches(self.inputs.files['train'], [b.tolist() for b in batches], self.cfg.seed,
                                          epoch, self.cfg.num_workers, self.data.decoding['train']))

    def stop_requested(self):
        """A signal asked to stop. Within an epoch only a single process stops (ranks could be at
        different steps); with several ranks the epoch in progress finishes, and they stop together after
        it (distributed.agreed_stop)."""
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
                              cfg.seed, progress, top_k, self.evaluation_graphs(top_k) if not n_samples else None,
                              self.bn_shares)

    def evaluation_graphs(self, top_k=1):
        """With --cuda_graph eval or all on CUDA, the deterministic labels (their top_k) of each evaluation batch shape
        replayed from a CUDA graph (the image embedding and every DDIM step: some hundred small kernels, one
        launch); the graphs live as long as the trainer, so later evaluations only replay."""
        if not (self.cuda and self.cfg.cuda_graph != 'off'):
            return None
        if top_k not in self.eval_graphs:
            labeller = batch_labeller(self.evaluated_model, self.diffusion, self.cfg.ddim_n_step, top_k, self.bn_shares)
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
                'epoch': epoch, 'partial_epoch': self.partial, 'eval_bn_shares': self.bn_shares,
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

    def restore(self, ckpt):
        self.model.load_state_dict(ckpt['model'])
        load_optimizer_state(self.optimizer, ckpt['optimizer'])  # as this device runs it
        if self.average is not None:
            self.average.load_state_dict(ckpt['ema'])
        self.best, self.history = ckpt['best'], ckpt['history']
        # the run's evaluations stay comparable wherever it goes on: normalised as its first invocation's
        # were (a checkpoint from before the count was kept: rank 0 normalised each batch whole)
        self.bn_shares = ckpt.get('eval_bn_shares', 1)
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
        # several ranks stop together between epochs (distributed.agreed_stop), a single process after a step
        finishing = 'this epoch on every device' if self.world > 1 else 'this training step'
        with StopSignals(finishing) as stop, BackgroundSaves() as self.saves:
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
        bar = progress_bar(range(self.start_epoch, cfg.nepoch), desc='train', initial=self.start_epoch,
                           total=cfg.nepoch, dynamic_ncols=True)
        for epoch in bar:  # epochs are numbered from 0 everywhere: bar, log lines, log.jsonl, checkpoints
            bar.set_description(f'epoch {epoch}', refresh=False)  # drawn with the bar's next line
            t0 = time.time()
            train_loss = self.train_epoch(epoch)  # ends with a sync: the timing is the device's
            t1 = time.time()
            self.seconds['train'] += t1 - t0
            if train_loss is None:  # stopped by a signal after a step of this epoch
                self.stop_mid_epoch(epoch, self.elapsed_before + t1 - started)
            self.timed_epochs += 1
            bar.set_postfix(loss=f'{train_loss:.4f}', refresh=False)
            elapsed = self.elapsed_before + t1 - started
            # a run shorter than warm-up still gets one validation-selected result, at its end
            main = distributed.is_main()  # rank 0 evaluates and writes; the others wait for it
            last = epoch == cfg.nepoch - 1
            evaluated = main and (is_eval_epoch(epoch, cfg.eval_from, cfg.eval_every) or (last and not self.history))
            if evaluated:
                self.evaluate(epoch, train_loss, elapsed, splits)
            t2 = time.time()
            self.seconds['evaluate'] += t2 - t1
            times = {'epoch': epoch, 'train_s': round(t1 - t0, 4),
                     'evaluate_s': round(t2 - t1, 4) if evaluated else None, 'checkpoint_s': None,
                     'first_of_invocation': epoch == self.start_epoch}
            self.epoch_times.append(times)
            stopping = distributed.agreed_stop(stop.signum, self.device)  # every rank, after rank 0 evaluated
            saved = main and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch == cfg.nepoch - 1 or stopping)
            if saved:
                self.save(epoch, elapsed)
                self.saved_epoch = epoch
            self.seconds['checkpoint'] += time.time() - t2
            if saved:  # the time the loop waited for it (a copy to host memory; the write is in the background)
                times['checkpoint_s'] = round(time.time() - t2, 4)
            if stopping or last:  # no rank leaves (and destroys its group) while rank 0 still copies last.pt;
                distributed.barrier()  # between epochs, the next step's gradient exchange is the wait
            if stopping and epoch < cfg.nepoch - 1:
                raise Interrupted(f'{signal.Signals(stopping).name} after epoch {epoch}; '
                                  f'{os.path.join(self.run_dir, "last.pt")} holds it. Continue with --resume '
                                  f'{self.run_dir}', stopping)
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
        print_line(f'epoch {epoch:4d}  loss {train_loss:.4f}  val {100 * val_acc:6.2f}%  test {100 * test_acc:6.2f}%  '
                   f'best val {100 * self.best["val_acc"]:6.2f}% (epoch {self.best["epoch"]}){"  *" if improved else ""}')


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


def adopt_newer_best(trainer, ckpt, run_dir):
    """best.pt written after last.pt (a stop between the two writes of an evaluated epoch; with
    --checkpoint_every above 1, epochs apart) holds an evaluation the resume redoes. Its weights are the run's
    best so far (the earlier best's were written over), so its record becomes the trainer's best: the summary
    then names the epoch whose weights best.pt holds and the outputs are made from, even where the redone
    evaluation comes out lower (a GPU's nondeterminism)."""
    best_path, last_path = os.path.join(run_dir, 'best.pt'), os.path.join(run_dir, 'last.pt')
    # read only where it may be newer (a checkpoint is hundreds of megabytes); the same time stamp may be either:
    # a file system's clock ticks every few milliseconds
    if not (os.path.isfile(best_path) and os.path.isfile(last_path)) or \
            os.path.getmtime(best_path) < os.path.getmtime(last_path):
        return
    best = load_run(run_dir, 'best.pt')
    if best['epoch'] > ckpt['epoch'] and best['best']['val_acc'] > trainer.best['val_acc']:
        trainer.best = dict(best['best'])


def resume_trainer(trainer, ckpt, run_dir, main, quiet=False):
    """The trainer continues from `ckpt`: its state restored, the log rewritten to match it."""
    try:
        trainer.restore(ckpt)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:  # the fields' kinds were checked
        raise ResumeRefused(f'{os.path.join(run_dir, "last.pt")} does not fit the networks its configuration builds '
                            f'({quoted_error(exc)}); it is damaged or was edited: use another checkpoint of the run, '
                            f'or start a new run') from None
    if main:  # evaluations logged after the last checkpoint are redone: keep the log consistent
        write_jsonl(trainer.history, os.path.join(run_dir, 'log.jsonl'))
        adopt_newer_best(trainer, ckpt, run_dir)
    partial = ckpt.get('partial_epoch')
    within = f', step {partial["steps_done"]} of epoch {partial["epoch"]}' if partial else ''
    if not quiet:
        after = f'after epoch {ckpt["epoch"]}' if ckpt['epoch'] >= 0 else 'before its first epoch ended'
        print(f'resuming {run_dir} {after}{within} (epochs count from 0)')

