"""What every dataset script calls: the checks, the run folder, the data prepared once, the k, the
trainer (utils/trainer.py holds the loop and the training step) and the run's outputs.

Data flows one way, once: images → frozen f_p → cached features → cached neighbour table →
training on the device (where the recipe has f_p re-encode each augmented training batch and search
its neighbours anew, as the authors' SimCLR path does, the step does that: Trainer.retrieved_labels).
Evaluation runs the DDIM sampler on the cached validation/test features
(the authors re-encoded those images at every evaluation; the features are identical).

A run folder holds config.json, log.jsonl (one line per evaluation), best.pt and last.pt
(checkpoint dicts) and summary.json.
"""
import json
import os
import signal
import sys
import time

import torch

from utils.averaging import evaluated_weights
from utils.errors import CorruptFile, Interrupted, SetupError, UnsafeFile
from utils.prepare import check_inputs, clean_train_labels, decoded_as_recorded, prepare
from utils.runs.checks import check_config
from utils.runs.config import recorded_config
from utils.runs.folders import (
    RunClaim,
    check_may_write_over,
    check_no_foreign_files,
    check_resume_flags,
    check_resume_inputs,
    check_same_classes,
    check_same_normalisation,
    check_same_script,
    check_writable,
    dataset_fingerprints,
    default_run_name,
    input_fingerprints,
    load_run,
    plan_run_dir,
    resumed_config,
    sweep_stale_cache_writes,
)
from utils.runs.k_trials import settle_k
from utils.runs.outputs import LABEL_RANKING, plot_accuracy, rank_file_labels, stale_outputs, write_training_outputs
from utils.runtime import distributed
from utils.runtime.devices import device_description, resolve_device
from utils.runtime.randomness import seed_everything
from utils.storage.loading import load_json
from utils.storage.published import recording
from utils.storage.saving import remove_files, save_json, sweep_partial_writes
from utils.trainer import new_trainer, resume_trainer

# ---- entry point used by the dataset scripts -------------------------------------------------------

OOM_ADVICE = ('out of GPU memory: lower --batch_size (training), --eval_batch_size (evaluation) or '
              '--encode_batch_size (feature extraction), or use a smaller --diff_encoder')


def main(cfg, load_splits):
    """What every dataset script runs: train, or resume. With several --gpu_devices this process only
    launches one process per device and returns (None, None)."""
    given = cfg.device if 'device' in cfg.command_line_flags else None
    device, status = distributed.use_gpu_devices(cfg.gpu_devices, given, refuse,
                                                 lambda: (launched_script(cfg, load_splits), cfg.argv))
    if status is not None:
        if status:
            raise SystemExit(status)
        return None, None
    result = run(cfg.replace(device=device) if device else cfg, load_splits)
    distributed.leave()
    return result


def refuse(message):
    raise SetupError(message)


def launched_script(cfg, load_splits):
    """The script each process of several --gpu_devices runs, with the arguments main was given: the one
    that defines `load_splits` (an edited copy of a script included), else the package's script whose
    defaults table the run has (main called from a notebook, or with a function of its own)."""
    module = sys.modules.get(getattr(load_splits, '__module__', None))
    path = getattr(module, '__file__', None)
    if path and getattr(module, 'load_splits', None) is load_splits:
        return path
    if not cfg.script:
        refuse('several --gpu_devices run a script file once per device, and this run names none: call main from '
               'a script that defines load_splits, or give a defaults table a script')
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), cfg.script)


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
        if os.path.isfile(os.path.join(cfg.resume, 'best.pt')):  # the outputs are made from it, after the training:
            load_run(cfg.resume, 'best.pt')                      # a damaged one refused now, before any work
        cfg = resumed_config(cfg, ckpt)
        check_config(cfg)
    distributed.init_from_env(cfg.device)
    distributed.quiet_unless_main()
    device = distributed.local_device(resolve_device(cfg.device))
    if not cfg.resume:  # one name for every rank (the default one carries a time stamp)
        cfg = cfg.replace(run_name=distributed.broadcast_object(cfg.run_name or default_run_name(cfg)))
    run_dir = plan_run_dir(cfg)
    check_writable(cfg.cache_dir, '--cache_dir')
    check_writable(run_dir, '--resume' if cfg.resume else '--out_dir')
    stale = []  # what the run's earlier end (and predict.py) made of a best.pt the training goes on from
    if cfg.resume:  # the run's outputs are written again when it finishes
        check_no_foreign_files(run_dir, f'--resume {run_dir}')
        stale = stale_outputs(run_dir) if cfg.nepoch > ckpt['epoch'] + 1 else []
        # what training on removes now, and the ranking a finishing run writes over at its end
        check_may_write_over(run_dir, stale, f'--resume {run_dir}', 'remove')
        check_may_write_over(run_dir, [LABEL_RANKING] if LABEL_RANKING not in stale else [], f'--resume {run_dir}')
    seed_everything(cfg.seed)
    # the dataset's published inputs too (e.g. Clothing1M's cc_select lists); rank 0 downloads first
    with recording() as published_inputs, distributed.main_first():
        splits = load_splits(cfg)
        if ckpt is not None:
            splits = decoded_as_recorded(splits, ckpt['data_info'])
        checked = check_inputs(cfg, splits, device)
    saved = ckpt['data_info'].get('input_fingerprints') if ckpt is not None else None
    dataset = dataset_fingerprints(splits, saved)  # in the form the run recorded them
    if ckpt is not None:  # images or classes changed since: refused before any feature is extracted or cached
        check_resume_inputs(saved, dataset, run_dir, splits)
        check_same_classes(splits, ckpt['data_info'], run_dir)
        check_same_normalisation(splits, ckpt['data_info'], run_dir)
    claim = RunClaim(run_dir, fresh=not cfg.resume) if distributed.is_main() else None
    try:
        sweep_stale_cache_writes(cfg.cache_dir)
        return _run(cfg, splits, checked, published_inputs, device, run_dir, ckpt, dataset, stale)
    except torch.cuda.OutOfMemoryError as exc:
        raise SetupError(f'{OOM_ADVICE} ({str(exc).splitlines()[0]})') from exc
    finally:
        if claim is not None:
            claim.release()


def remove_stale_outputs(run_dir, names, epochs):
    """A finished run trained on (a larger --nepoch), or a stopped one predicted from: its summary.json and the
    outputs and predictions of its best.pt so far would stand beside a run that goes on, as if it had ended
    there (tools take summary.json for a finished run). summary.json goes first: a stop in between leaves an
    unfinished run."""
    remove_files(run_dir, names)
    print(f'--resume: the run trains on from epoch {epochs}, so what its best checkpoint so far made is removed '
          f'({", ".join(names)}); its end writes the outputs again, predict.py the predictions')


def _run(cfg, splits, checked, published_inputs, device, run_dir, ckpt, dataset, stale):
    for name, note in getattr(splits, 'notes', {}).items():  # what the summary says of the splits, said first
        print(f'note ({name.replace("_", " ")}): {note}')
    data = prepare(cfg, splits, device, checked=checked)
    data.info['inputs'] = published_inputs  # name → url, path, git blob sha1 of every published input
    data.info['input_fingerprints'] = input_fingerprints(dataset, data)
    if ckpt is not None:
        before = ckpt['data_info']
        data.info['prepare_total_s'] = round(before.get('prepare_total_s', before['prepare_s']) + data.info['prepare_s'], 2)
        if 'k_trials' in before:  # the trials that chose the run's k, run by its first invocation
            data.info['k_trials'] = before['k_trials']
        check_resume_inputs(ckpt['data_info'].get('input_fingerprints'), data.info['input_fingerprints'], run_dir)
    main = distributed.is_main()
    if main:
        os.makedirs(run_dir, exist_ok=True)
    # the run's k, and the checkpoint it goes on from: the one resumed, or its chosen --k_select model trial's
    cfg, data, start = settle_k(cfg, data, splits, run_dir, ckpt, trial_trainer(splits, device))
    trainer = new_trainer(cfg, data, splits, run_dir, device, start)
    if start is not None:
        resume_trainer(trainer, start, run_dir, main, quiet=ckpt is None)
    if main:
        write_config(run_dir, cfg, data.info, device, ckpt)
    print(f'{splits.name}: {data.info["n_train"]} noisy training samples ({data.info["noise_source"]}), '
          f'f_p {cfg.fp_encoder} ({data.info["fp_dim"]}-d), diffusion encoder {cfg.diff_encoder}, '
          f'device {device_description(device)}; run folder {run_dir}')
    if main and stale:  # the resume refused nothing: it trains on now
        remove_stale_outputs(run_dir, stale, ckpt['epoch'] + 1)
    wall = trainer.fit(splits)
    stopped = distributed.agreed_stop(trainer.stopped_by, device)  # a signal in the last epoch, on any rank
    if stopped:  # every epoch is trained and in last.pt; the outputs (minutes on a large dataset) wait for a resume
        raise Interrupted(f'{signal.Signals(stopped).name} after epoch {cfg.nepoch - 1}, the last; '
                          f'{os.path.join(run_dir, "last.pt")} holds it, the outputs are not written. Continue with '
                          f'--resume {run_dir}', stopped)
    if not main:
        return None, run_dir
    summary = run_summary(cfg, trainer, data.info, device, wall)
    started = time.time()
    summary.update(finish_outputs(trainer, data, splits, run_dir))
    summary['seconds']['outputs'] = round(time.time() - started, 2)
    save_json(summary, os.path.join(run_dir, 'summary.json'))
    print('summary: ' + json.dumps(printed_summary(summary)) + f' (in full: {os.path.join(run_dir, "summary.json")})')
    return summary, run_dir


def printed_summary(summary):
    """The summary as the log line shows it: without each epoch's seconds (a line of kilobytes at 200 epochs),
    which summary.json keeps."""
    seconds = {k: v for k, v in summary.get('seconds', {}).items() if k != 'per_epoch'}
    return {**summary, 'seconds': seconds} if 'seconds' in summary else summary


def trial_trainer(splits, device):
    """How utils/runs/k_trials starts a trial: a fresh Trainer in the trial's folder, continuing the folder's
    last.pt where `resumable`."""
    def start(cfg, data, folder, resumable):
        main = distributed.is_main()
        if main:
            os.makedirs(folder, exist_ok=True)
        ckpt = None
        if resumable and os.path.isfile(os.path.join(folder, 'last.pt')):
            try:
                ckpt = load_run(folder)
            except (SetupError, CorruptFile, UnsafeFile) as exc:  # damaged, refused, of an older format
                print(' '.join(str(exc).split()) + f'; the k trial in {folder} starts over')
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
    run recorded and adds one entry per resume (where it continued, on which device, the flags given)."""
    path = os.path.join(run_dir, 'config.json')
    here = {'device_name': device_description(device), 'world_size': distributed.world_size()}
    config = {**recorded_config(cfg), **info, **here}
    if ckpt is not None:
        original = load_json(path)  # unreadable: the fresh record replaces it
        if original:
            before = original.get('resumes')
            given = getattr(cfg, 'command_line_flags', None)
            # with their values: a resume may name its data anew (a moved dataset), which last.pt now holds
            values = {name: value for name, value in recorded_config(cfg).items() if name in (given or ())}
            this = {'after_epoch': ckpt['epoch'], **here, 'command_line_flags': given, 'given': values}
            config = {**original, 'resumes': (before if isinstance(before, list) else []) + [this]}
    save_json(config, path)


def finish_outputs(trainer, data, splits, run_dir):
    """With the best-validation weights: denoised training labels, probabilities, plots."""
    trainer.evaluated_model.load_state_dict(evaluated_weights(load_run(run_dir, 'best.pt')))
    denoised, probs = trainer.predict('train', n_samples=trainer.cfg.n_samples, progress='denoising the training labels')
    clean = clean_train_labels(splits)
    noisy, denoised = data.noisy_labels.cpu().numpy(), denoised.cpu().numpy()
    probs = probs.cpu().numpy() if probs is not None else None
    facts = write_training_outputs(run_dir, noisy, denoised, probs, splits.n_class, clean, splits.class_names)
    if not splits.in_memory:  # image files: the likely mislabelled ones by path, the splits' notes
        facts.update(rank_file_labels(run_dir, splits, noisy, denoised, probs, data.candidates.candidates,
                                      trainer.cfg.n_samples), **splits.notes)
    plot_accuracy(trainer.history, os.path.join(run_dir, 'accuracy.png'), data.info.get('noisy_label_accuracy'),
                  'validation (noisy labels)' if splits.noisy_val else 'validation (clean)')
    return facts
