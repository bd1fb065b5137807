"""The epochs of one pre-training command: each epoch logged, state.pt written every --save_every
epochs and whenever the command stops (--stop_after, a signal), and what the sidecar reports of
them: the seconds per epoch and the kNN accuracy against wall time."""
import os
import sys
import time

from utils.errors import Interrupted
from utils.runtime.progress import print_line, progress_bar
from utils.runtime.signals import StopSignals
from utils.storage.saving import append_jsonl, save_torch


class EpochStop(StopSignals):
    """StopSignals whose first signal lets the epoch in progress finish: state.pt holds whole epochs
    (a resume then goes on exactly, as from --stop_after)."""

    def _handle(self, signum, frame):
        if self.signum is not None:
            return super()._handle(signum, frame)  # a second signal stops at once
        self.signum = signum
        print(f'\n{self.name}: finishing this epoch, then writing state.pt (send it again to stop at once)',
              file=sys.stderr, flush=True)


def train_epochs(trainer, args, run_dir):
    """Epochs until the run has all of them, --stop_after's minutes are up, or a signal (Interrupted);
    state.pt written every --save_every epochs and whenever the command stops. The last kNN accuracy."""
    started = time.time() - trainer.elapsed
    this_command = time.time()  # --stop_after counts this command's minutes, not the run's: a chain goes on
    knn_acc = trainer.history[-1]['knn_acc'] if trainer.history and 'knn_acc' in trainer.history[-1] else None
    first = trainer.epoch
    state_path = os.path.join(run_dir, 'state.pt')
    with EpochStop() as stop:
        for _ in progress_bar(range(trainer.epoch, args.nepoch), desc=f'SimCLR {args.arch}', initial=trainer.epoch,
                              total=args.nepoch):
            record = run_epoch(trainer, args, first)
            knn_acc = record.get('knn_acc', knn_acc)
            trainer.elapsed = time.time() - started
            record['minutes'] = round(trainer.elapsed / 60, 3)
            if 'knn_acc' in record:
                print_line(f'epoch {trainer.epoch}  loss {record["loss"]:.4f}  kNN top-1 {100 * knn_acc:.2f}%  '
                           f'{record["minutes"]:.1f} min')
            trainer.history.append(record)
            append_jsonl(record, os.path.join(run_dir, 'log.jsonl'))
            stopping = args.stop_after is not None and (time.time() - this_command) / 60 >= args.stop_after \
                and trainer.epoch < args.nepoch
            signalled = stop.signum is not None and trainer.epoch < args.nepoch
            if trainer.epoch % args.save_every == 0 or trainer.epoch == args.nepoch or stopping or signalled:
                save_torch(trainer.state(), state_path)
            if signalled:
                raise Interrupted(f'{stop.name} after epoch {trainer.epoch}; {state_path} holds it. Continue with '
                                  f'--resume {run_dir}', stop.signum)
            if stopping:
                break
    return knn_acc


def run_epoch(trainer, args, first):
    """One epoch and, where due, the kNN monitor: its log record."""
    loss, seconds = trainer.train_epoch()
    # the first epoch of each command carries its warm-up (cuDNN autotuning, the graph capture)
    record = {'epoch': trainer.epoch + 1, 'loss': loss, 'epoch_s': round(seconds, 3),
              **({'warmup': True} if trainer.epoch == first else {})}
    trainer.epoch += 1
    if trainer.epoch % args.knn_every == 0 or trainer.epoch == args.nepoch:
        knn_started = time.perf_counter()
        record['knn_acc'] = trainer.knn_accuracy()
        record['knn_s'] = round(time.perf_counter() - knn_started, 3)
    return record


def epoch_seconds(history):
    """Training seconds per epoch from the log: the first epoch of each command apart (it carries the
    warm-up: cuDNN autotuning, the graph capture), the mean of the others, and epochs per second."""
    first = [r['epoch_s'] for r in history if 'epoch_s' in r and r.get('warmup')]
    warm = [r['epoch_s'] for r in history if 'epoch_s' in r and not r.get('warmup')]
    mean = sum(warm) / len(warm) if warm else None
    return {'first_epoch_s': first[0] if first else None, 'warm_epoch_s': round(mean, 3) if mean else None,
            'warm_epochs': len(warm), 'epochs_per_s': round(1 / mean, 4) if mean else None}


def knn_curve(history):
    """[epoch, wall minutes, kNN top-1] at every kNN evaluation of the log."""
    return [[r['epoch'], r['minutes'], r['knn_acc']] for r in history if 'knn_acc' in r]
