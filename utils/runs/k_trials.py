"""The run's k: the one given (--k), or the one chosen among --k_choices on the validation split, by the
neighbours' vote or (--k_select model) by what the model makes of it: `settle_k`, the one call the
engine makes.

Each k of --k_choices trains a fresh model for the first --k_trial_epochs epochs of the run (the same
seed, learning-rate schedule and evaluations, up to the run's first evaluation at or after that many
epochs) and is scored by its best validation accuracy; ties go to the smaller k. The best trial is
then exactly the run's first epochs with that k, so the run goes on from it (its checkpoints and log
become the run's) instead of training those epochs again. The test split is evaluated where the run
evaluates it, and never enters the choice.
The vote (--k_select vote) prefers the k whose neighbourhoods are purest, which on a weak f_p is a
large k even where the labels are nearly right; the model's validation accuracy says what the
retrieved targets cost.

The trials live in RUN/k_trials/k<K>/ (log.jsonl, trial.json; last.pt and best.pt until the choice is
made): a run stopped while choosing is continued by the same command with the same --run_name, which
reuses the finished trials and resumes the one in progress from its last epoch.
"""
import hashlib
import json
import math
import os
import signal
import time

from utils.errors import Interrupted, SetupError
from utils.prepare import search_options, select_k, use_k, warn_noisy_choice
from utils.retrieval import neighbour_table
from utils.runs.folders import NEWEST_IMAGE, load_run
from utils.runtime import distributed
from utils.runtime.devices import free_memory
from utils.schedule import is_eval_epoch
from utils.storage.loading import load_json
from utils.storage.saving import remove_files, save_json, save_torch

# flags that name where a run and its inputs live, how it is driven, or what only the run does after
# training, not what its trials compute (the inputs themselves enter the key by their fingerprints)
NOT_IN_TRIAL_KEY = ('run_name', 'out_dir', 'resume', 'argv', 'command_line_flags', 'script_flags', 'device',
                    'num_workers', 'cache_dir', 'checkpoint_every', 'debug', 'k_choices', 'k_select', 'k_trial_epochs',
                    'data_root', 'cifar_n_dir', 'clip_download_root', 'inputs_dir', 'download', 'encode_batch_size',
                    'n_samples', 'script', 'dataset_flags', 'gpu_devices', 'print_config', 'recipe_filled')


def trial_epochs(cfg):
    """--k_trial_epochs, or by default a tenth of the run and at least twice its warm-up (a trial scored
    during warm-up measures little but chance: digits, 14% against 10% after 11 epochs, 77% against 69%
    after 20); then up to the run's next evaluation, so a trial ends scored as the run would be there."""
    wanted = cfg.k_trial_epochs or max(cfg.nepoch // 10, 2 * cfg.warmup_epochs, cfg.warmup_epochs + 1)
    return next((epoch + 1 for epoch in range(wanted - 1, cfg.nepoch) if is_eval_epoch(epoch, cfg.eval_from, cfg.eval_every)), cfg.nepoch)


def too_close(scores, n_val):
    """Whether the best two trials differ by less than two standard errors of their difference on
    n_val validation images (then the choice is close to a coin toss)."""
    if len(scores) < 2 or not n_val:
        return False
    first, second = sorted(scores.values(), reverse=True)[:2]
    spread = math.sqrt((first * (1 - first) + second * (1 - second)) / n_val)
    return first - second < 2 * spread


def trial_config(cfg, k):
    """The run's configuration cut to its first trial_epochs(cfg) epochs, with this k: the learning
    rate follows the full run's schedule (its horizon is the run's, not the trial's)."""
    return cfg.replace(k=k, nepoch=trial_epochs(cfg), lr_horizon=cfg.lr_horizon or cfg.nepoch)


def trial_key(trial_cfg, fingerprints):
    """What a finished trial must match to be reused: the trial's flags, the run's inputs and the way its
    neighbour table is made (a table made by another rule can hold other neighbours)."""
    flags = {k: v for k, v in vars(trial_cfg).items() if k not in NOT_IN_TRIAL_KEY}
    # the newest image time says nothing 'image files' does not (recorded since 2026-12-06): trials made
    # before it keep their key
    inputs = {k: v for k, v in fingerprints.items() if k != NEWEST_IMAGE}
    text = json.dumps({'flags': flags, 'inputs': inputs, 'neighbour_table': neighbour_table.version},
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def finished_score(record, key):
    """A finished trial's best validation accuracy, where its record (trial.json) is whole and of
    these flags."""
    acc = record.get('best_val_acc') if record.get('key') == key and record.get('finished') else None
    return float(acc) if isinstance(acc, (int, float)) and 0 <= acc <= 1 else None


def go_on(folder, run_dir):
    """How a run stopped while choosing k continues."""
    return (f'the trials so far are in {os.path.dirname(folder)}: run the same command with --run_name '
            f'{os.path.basename(run_dir)} to go on from there')


def run_trial(cfg, k, data, splits, run_dir, start_trainer):
    """Train the k trial (or reuse it) and return its best validation accuracy. `start_trainer(cfg,
    data, folder, resumable)` builds a fresh Trainer, restored from the folder's last.pt where
    `resumable` (the key matches)."""
    folder = trial_folder(run_dir, k)
    trial = trial_config(cfg, k)
    key = trial_key(trial, data.info['input_fingerprints'])
    record_path = os.path.join(folder, 'trial.json')
    record = load_json(record_path)
    score = finished_score(record, key)
    if score is not None:
        print(f'--k_select model: k {k} trial already finished in {folder} (validation {100 * score:.2f}%)')
        return score
    trainer = start_trainer(trial, data.with_k(k, trial.candidates, trial.candidate_weights), folder,
                            resumable=record.get('key') == key)
    if distributed.is_main():
        save_json({'k': k, 'key': key, 'finished': False, 'epochs': trial.nepoch}, record_path)
    print(f'--k_select model: k {k}, {trial.nepoch} trial epochs in {folder}')
    try:
        trainer.fit(splits)
    except Interrupted as stop:
        raise Interrupted(f'interrupted while choosing k (the k {k} trial); {go_on(folder, run_dir)}', stop.signum) \
            from None
    score = trainer.best['val_acc']
    if distributed.is_main():
        save_json({'k': k, 'key': key, 'finished': True, 'epochs': trial.nepoch, 'best_val_acc': score,
                   'best_epoch': trainer.best['epoch']}, record_path)
    # a signal in the trial's last epoch, or after it, reached some ranks: they stop together, or the others
    # would wait for the ones that stopped in the broadcast below
    stopped_by = distributed.agreed_stop(trainer.stopped_by, trainer.device)
    del trainer  # held in reference cycles (bound methods, graphs): freed with its device memory before the next
    free_memory()
    if stopped_by:  # in the trial's last epoch: the trial is whole, the choosing stops
        raise Interrupted(f'{signal.Signals(stopped_by).name} after the k {k} trial; {go_on(folder, run_dir)}',
                          stopped_by)
    return distributed.broadcast_object(score)


def trial_folder(run_dir, k):
    return os.path.join(run_dir, 'k_trials', f'k{k}')


def choose_k_by_training(cfg, data, splits, run_dir, start_trainer):
    """The k of --k_choices whose trial reaches the best validation accuracy (ties to the smaller k),
    and the record config.json keeps of the trials. The other trials' weights are removed; the chosen
    one's stay for the run to go on from."""
    started = time.time()
    scores = {k: run_trial(cfg, k, data, splits, run_dir, start_trainer) for k in sorted(set(cfg.k_choices))}
    best = max(scores, key=lambda k: (scores[k], -k))
    if distributed.is_main():
        for k in scores:
            if k != best:
                remove_files(trial_folder(run_dir, k), ('best.pt', 'last.pt'))
    print(f'--k_select model: best validation accuracy of {trial_epochs(cfg)}-epoch trials ' +
          ', '.join(f'k {k} {100 * a:.2f}%' for k, a in scores.items()) + f'; k = {best}')
    n_val = len(splits.labels('val'))
    if too_close(scores, n_val):
        print(f'note: the best two trials are within two standard errors on {n_val} validation images; '
              f'longer trials (--k_trial_epochs) or more validation images would choose more surely')
    return best, {'epochs': trial_epochs(cfg), 'best_val_acc': {str(k): a for k, a in scores.items()},
                  'seconds': round(time.time() - started, 2)}  # this invocation's (reused trials cost nothing)


def takeable(folder, cfg):
    """The trial's last.pt and best.pt where they are whole and of this version: of the trial's last
    epoch, every evaluation with its test accuracy (an earlier version's trials scored validation only);
    else None."""
    try:
        last, best = load_run(folder), load_run(folder, 'best.pt')
    except SetupError:
        return None
    whole = last['epoch'] == trial_epochs(cfg) - 1 and not last.get('partial_epoch')
    scored = all(record.get('test_acc') is not None for record in last['history']) and \
        best['best'].get('test_acc') is not None
    return (last, best) if whole and scored else None


def take_over_trial(cfg, info, run_dir, k):
    """The chosen trial's last checkpoint as the run's own: the trial is the run's first epochs with this
    k (its evaluations included), so its best.pt and last.pt move into the run folder, recorded with the
    run's flags and data facts, and the run goes on from there. None where the trial's weights are gone
    or not takeable (a trial made by an earlier version): the run then starts afresh. Rank 0 decides;
    which of the two happened is recorded in info['k_trials']."""
    folder = trial_folder(run_dir, k)
    main = distributed.is_main()
    found = takeable(folder, cfg) if main else None
    goes_on = info['k_trials']['run_goes_on_from_trial'] = distributed.broadcast_object(found is not None)
    last = None
    if goes_on:
        last = found[0] if main else load_run(folder)
        distributed.barrier()  # every rank has read it before it moves
        if main:
            # best.pt first: a run folder holding last.pt is resumed, and a resume needs its best.pt (a stray
            # best.pt without last.pt is cleared by the same command run again)
            for name, ckpt in (('best.pt', found[1]), ('last.pt', found[0])):
                save_torch({**ckpt, 'config': vars(cfg), 'data_info': info}, os.path.join(run_dir, name))
            print(f'--k_select model: the run goes on from its k {k} trial (epochs 0 to {last["epoch"]} are '
                  f'that trial)')
    if main:  # the run's now, or of no use
        remove_files(folder, ('best.pt', 'last.pt'))
    return last


def settle_k(cfg, data, splits, run_dir, ckpt, start_trainer, log=print):
    """The run's k and the candidates it makes, and the checkpoint the run goes on from: --k (or the k a
    resumed run chose), the vote of --k_choices, or with --k_select model the best of short training
    trials, whose checkpoint the run then goes on from (`start_trainer`: how a trial's Trainer is made).
    Returns (the configuration with its k, the data with its candidates, the checkpoint or None)."""
    start = ckpt
    if cfg.k_choices and ckpt is None:
        warn_noisy_choice(splits, log)
        by_model = cfg.k_select == 'model'
        k, scores = select_k(data.features, data.noisy_labels, splits.val_labels, cfg.k_choices, data.n_class, log,
                             choosing=not by_model, **search_options(cfg))
        data.info['k_selection'] = {str(choice): a for choice, a in scores.items()}
        if by_model:
            k, data.info['k_trials'] = choose_k_by_training(cfg, data, splits, run_dir, start_trainer)
        cfg = cfg.replace(k=k)
    data = use_k(cfg, data, splits, log)
    if 'k_trials' in data.info and ckpt is None:
        start = take_over_trial(cfg, data.info, run_dir, cfg.k)
    return cfg, data, start
