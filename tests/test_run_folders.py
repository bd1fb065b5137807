"""A run writes only inside what it owns, and nothing stale is served: run folders record what their
runs wrote, a fresh run refuses anything else and a refused run leaves every folder as it found it;
image-file caches and the resume check see an image rewritten in place."""
import dataclasses
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
from test_trust import cfg_for

import demo_digits
import predict
import train_CIFAR
import train_ImageFolder
from benchmarks import layouts
from conftest import subset
from utils import engine
from utils.engine import run
from utils.errors import DatasetMissing, NoiseError, SetupError
from utils.runs.cli import run_cli
from utils.runs.folders import (LOCK_NAME, RECORD_NAME, RunClaim, dataset_fingerprints, default_run_name, read_record,
                                write_run_file)
from utils.storage.loading import load_json, load_torch
from utils.storage.saving import save_torch
from utils.trainer import Trainer


def snapshot(folder):
    """Every file under `folder` with its bytes: what "left as found" compares."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, 'rb') as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


SHORT = ('--nepoch', '2', '--warmup_epochs', '1', '--n_samples', '0')


@pytest.fixture
def small(digits):
    return subset(digits, 200, 50)


def test_a_finished_run_whose_last_checkpoint_was_removed_is_never_touched(tmp_path, small):
    """The issue's case: a fresh run of the same name, with a bad noise file or a good one, is refused
    and the finished run's best.pt, log.jsonl and summary.json stay as they were."""
    _, run_dir = run(cfg_for(tmp_path, *SHORT), lambda c: small)
    os.remove(os.path.join(run_dir, 'last.pt'))  # to save space
    before = snapshot(run_dir)
    assert {'best.pt', 'log.jsonl', 'summary.json', RECORD_NAME} <= set(before) and LOCK_NAME not in before
    np.save(tmp_path / 'bad.npy', np.full(len(small.train_clean), 12))
    for noise in (str(tmp_path / 'bad.npy'), 'digits-U-0.4'):
        with pytest.raises(SetupError, match=f'{run_dir} holds a finished run \\(summary.json; its last.pt was '
                                             f'removed\\); choose another --run_name'):
            run(cfg_for(tmp_path, *SHORT, '--noise_type', noise), lambda c: small)
        assert snapshot(run_dir) == before


def test_a_folder_holding_files_no_run_wrote_is_refused_before_anything_changes(tmp_path, small):
    run_dir = tmp_path / 'runs' / 'r'
    run_dir.mkdir(parents=True)
    (run_dir / 'notes.txt').write_text('mine')
    (run_dir / 'log.jsonl').write_text('{"epoch": 99}\n')  # a name runs write, but no run recorded writing it
    before = snapshot(run_dir)
    with pytest.raises(SetupError, match=r'holds files no run of this package recorded writing there \(log.jsonl, '
                                         r'notes.txt\); a run writes only in a folder of its own'):
        run(cfg_for(tmp_path, *SHORT), lambda c: small)
    assert snapshot(run_dir) == before and sorted(os.listdir(run_dir)) == ['log.jsonl', 'notes.txt']


def test_a_refused_run_leaves_a_folder_it_did_not_make_as_it_found_it(tmp_path, small, monkeypatch):
    run_dir = tmp_path / 'runs' / 'r'
    run_dir.mkdir(parents=True)  # made by the user: a run may write in it
    np.save(tmp_path / 'bad.npy', np.zeros(3, np.int64))
    with pytest.raises(NoiseError, match='expected 200 labels'):  # refused before the claim
        run(cfg_for(tmp_path, *SHORT, '--noise_type', str(tmp_path / 'bad.npy')), lambda c: small)
    assert os.listdir(run_dir) == []

    def fails_after_the_claim(cfg, *args, **kwargs):
        assert os.listdir(tmp_path / 'runs' / cfg.run_name) == [LOCK_NAME]  # claimed: the lock is all there is
        raise SetupError('stopped after the claim')
    monkeypatch.setattr(engine, 'prepare', fails_after_the_claim)
    with pytest.raises(SetupError, match='stopped after the claim'):
        run(cfg_for(tmp_path, *SHORT), lambda c: small)
    assert os.listdir(run_dir) == []  # no lock left in a folder the run did not make
    with pytest.raises(SetupError, match='stopped after the claim'):
        run(cfg_for(tmp_path, *SHORT, '--run_name', 'new'), lambda c: small)
    assert os.listdir(tmp_path / 'runs') == ['r']  # the folder it made is gone again


def killed_before_its_first_checkpoint(tmp_path, small, monkeypatch, nepoch):
    """A run killed in epoch 2 of `nepoch`, before its first last.pt (its log and best.pt written); returns
    its flags and Trainer.train_epoch as it was (the test puts it back to run again)."""
    original = Trainer.train_epoch

    def dies_in_epoch_2(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt  # a kill, as far as the folder can tell
        return original(self, epoch)
    monkeypatch.setattr(Trainer, 'train_epoch', dies_in_epoch_2)
    flags = ('--nepoch', nepoch, '--warmup_epochs', '1', '--eval_every', '1', '--checkpoint_every', '5',
             '--n_samples', '0')
    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(tmp_path, *flags), lambda c: small)
    return flags, original


def test_a_run_that_died_before_its_first_checkpoint_is_cleared_only_when_the_new_run_writes(tmp_path, small,
                                                                                           monkeypatch):
    flags, original = killed_before_its_first_checkpoint(tmp_path, small, monkeypatch, '4')
    run_dir = tmp_path / 'runs' / 'r'
    (run_dir / '.best.pt.x1y2z3w4.lra-partial').write_bytes(b'half a checkpoint')  # a write the kill interrupted
    assert {'log.jsonl', 'best.pt', 'config.json'} <= read_record(str(run_dir)) and not (run_dir / 'last.pt').exists()
    before = snapshot(run_dir)
    np.save(tmp_path / 'bad.npy', np.zeros(3, np.int64))
    with pytest.raises(NoiseError):
        run(cfg_for(tmp_path, *flags, '--noise_type', str(tmp_path / 'bad.npy')), lambda c: small)
    assert snapshot(run_dir) == before  # refused: the dead run's files stay
    monkeypatch.setattr(Trainer, 'train_epoch', original)
    run(cfg_for(tmp_path, *flags), lambda c: small)
    assert [json.loads(line)['epoch'] for line in open(run_dir / 'log.jsonl')] == [1, 2, 3]  # never appended to
    assert not list(run_dir.glob('.*.lra-partial')) and (run_dir / 'last.pt').exists() and not (run_dir / LOCK_NAME).exists()
    assert read_record(str(run_dir)) >= {'last.pt', 'summary.json', 'train_denoised_labels.npy', 'accuracy.png'}


def test_sweeps_remove_only_the_package_s_own_partial_writes(tmp_path):
    """A shared cache and a resumed run's folder are swept of writes a killed run left; a user's .*.tmp
    files there (an editor's, another program's) are not the package's to delete."""
    from utils.storage.saving import atomic_write, partial_write_of, sweep_partial_writes
    def dies(f):
        f.write(b'half')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / 'features.pt'), dies)
    assert not os.listdir(tmp_path)  # an interrupted write cleans up after itself ...
    mine = tmp_path / '.features.pt.ab_9xyz0.lra-partial'  # ... unless the process is killed mid-write
    mine.write_bytes(b'half')
    theirs = ['.notes.tmp', '.features.pt.ab_9xyz0.tmp', 'features.pt.ab_9xyz0.lra-partial', '.x.short.lra-partial']
    for name in theirs:
        (tmp_path / name).write_bytes(b'keep')
    assert partial_write_of(mine.name) == 'features.pt'
    assert sweep_partial_writes(str(tmp_path)) == [str(mine)]
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)


def test_a_fresh_run_of_another_kind_never_takes_a_stopped_run_s_folder(tmp_path, small, monkeypatch):
    """A training run stopped before its first last.pt (its best.pt and log are what it has) is not a
    leftover for a fresh SimCLR pre-training, nor is a finished one: either is refused, nothing changed."""
    flags, original = killed_before_its_first_checkpoint(tmp_path, small, monkeypatch, '3')
    run_dir = tmp_path / 'runs' / 'r'
    assert (run_dir / 'best.pt').exists() and not (run_dir / 'last.pt').exists()
    before = snapshot(run_dir)
    with pytest.raises(SetupError, match='holds what a training run wrote before it stopped'):
        RunClaim(str(run_dir), fresh=True, checkpoint='state.pt', other='--out_dir')
    assert snapshot(run_dir) == before
    monkeypatch.setattr(Trainer, 'train_epoch', original)
    run(cfg_for(tmp_path, *flags), lambda c: small)  # the same kind of run takes it over, as before
    before = snapshot(run_dir)
    with pytest.raises(SetupError, match=r'holds a training run \(last.pt\)'):
        RunClaim(str(run_dir), fresh=True, checkpoint='state.pt', other='--out_dir')
    assert snapshot(run_dir) == before


@pytest.mark.parametrize('target', ['absent', 'present'])
def test_a_link_under_a_recorded_name_is_never_written_through(tmp_path, small, target):
    """A dangling link named log.jsonl in a folder whose record names log.jsonl: a run had appended its log
    through it, creating a file outside the folder."""
    run_dir = tmp_path / 'runs' / 'r'
    write_run_file(['--flags'], str(run_dir), 'log.jsonl')  # the record names log.jsonl
    os.remove(run_dir / 'log.jsonl')
    outside = tmp_path / 'outside.txt'
    if target == 'present':
        outside.write_text('a user\'s file\n')
    os.symlink(outside, run_dir / 'log.jsonl')
    before = sorted(os.listdir(run_dir))
    with pytest.raises(SetupError, match=r'holds files no run of this package recorded writing there \(log\.jsonl\)'):
        run(cfg_for(tmp_path, *SHORT), lambda c: small)
    assert sorted(os.listdir(run_dir)) == before and os.path.islink(run_dir / 'log.jsonl')
    assert outside.read_text() == 'a user\'s file\n' if target == 'present' else not outside.exists()


def test_a_file_written_into_the_folder_before_the_run_is_the_run_s_when_recorded(tmp_path, small):
    run_dir = str(tmp_path / 'runs' / 'r')
    write_run_file(['--flags', 'that started it'], run_dir, 'benchmark_flags.json')  # benchmarks.accuracy
    run(cfg_for(tmp_path, *SHORT), lambda c: small)
    assert json.load(open(os.path.join(run_dir, 'benchmark_flags.json'))) == ['--flags', 'that started it']


def test_a_lock_left_by_a_killed_run_is_used_and_left_and_a_claim_removes_the_lock_it_made(tmp_path):
    run_dir = tmp_path / 'r'
    run_dir.mkdir()
    (run_dir / LOCK_NAME).write_bytes(b'')  # a killed run's
    claim = RunClaim(str(run_dir), fresh=True)
    with pytest.raises(SetupError, match='in use by another run right now; wait for it to finish, or choose another '
                                         '--run_name$'):
        RunClaim(str(run_dir), fresh=True)
    with pytest.raises(SetupError, match='in use by another run right now; wait for it to finish$'):  # a resume
        RunClaim(str(run_dir), fresh=False)
    claim.release()
    assert os.listdir(run_dir) == [LOCK_NAME]
    os.remove(run_dir / LOCK_NAME)
    claim = RunClaim(str(run_dir), fresh=True)
    again = None
    try:
        claim.release()  # removes its lock file while holding it; the next claim makes its own
        again = RunClaim(str(run_dir), fresh=True)
        assert os.listdir(run_dir) == [LOCK_NAME]
    finally:
        if again is not None:
            again.release()
    assert os.listdir(run_dir) == []


# ---- image files: keyed on what they are ---------------------------------------------------------

def own_flags(tmp_path, *more):
    return ['--fp_encoder', 'raw', '--diff_encoder', 'fp_mlp', '--image_size', '8', '--k', '5', '--batch_size', '16',
            '--feature_dim', '32', '--warmup_epochs', '1', '--lr_horizon', '2', '--eval_every', '1', '--num_workers',
            '0', '--n_samples', '0', '--device', 'cpu', '--out_dir', str(tmp_path / 'runs'), '--cache_dir',
            str(tmp_path / 'cache'), '--run_name', 'own', *more]


def test_images_rewritten_in_place_are_never_served_stale_nor_resumed(tmp_path):
    root = str(tmp_path / 'own')
    layouts.own_data(root, per_class=8, n_eval=2)
    train = ['--train', os.path.join(root, 'labels.csv'), '--val', os.path.join(root, 'val')]
    _, run_dir = train_ImageFolder.main([*train, *own_flags(tmp_path, '--nepoch', '1')])
    cfg = train_ImageFolder.config([*train, *own_flags(tmp_path)])

    def features(log):
        return engine.prepare(cfg, train_ImageFolder.load_splits(cfg), engine.torch.device('cpu'), log=log).features
    old = features(print)
    rng = np.random.default_rng(7)
    for folder, _, names in os.walk(root):  # every image rewritten in place, with other pixels
        for name in names:
            if name.endswith('.jpg'):
                layouts.jpeg(os.path.join(folder, name), int(rng.integers(4)), rng)
    cache, folder = snapshot(cfg.cache_dir), snapshot(run_dir)
    with pytest.raises(SetupError, match='the image files differ from those the run was made with'):
        train_ImageFolder.main([*train, '--resume', run_dir, '--nepoch', '2'])
    assert snapshot(cfg.cache_dir) == cache and snapshot(run_dir) == folder  # refused before any extraction
    said = []
    new = features(said.append)
    assert not any(np.allclose(old[s].numpy(), new[s].numpy()) for s in ('train', 'val', 'test'))
    assert not [line for line in said if 'rebuilding' in line]  # another key: a cache of its own
    with pytest.raises(SetupError, match=f'the run was made by train_ImageFolder.py, not train_CIFAR.py; run that '
                                         f'script instead \\(python train_ImageFolder.py --resume {run_dir}'):
        train_CIFAR.main(['--resume', run_dir])


def test_a_folder_recorded_before_runs_named_their_kind_is_read_by_its_files(tmp_path, small, monkeypatch):
    """The record of an older version names no kind and its partial writes end in .tmp: the files it
    names still tell a stopped training run, which a pre-training may not take and a training run may."""
    flags, original = killed_before_its_first_checkpoint(tmp_path, small, monkeypatch, '3')
    run_dir = tmp_path / 'runs' / 'r'
    record = json.loads((run_dir / RECORD_NAME).read_text())
    del record['kind']
    (run_dir / RECORD_NAME).write_text(json.dumps(record))
    (run_dir / '.best.pt.x1y2z3w4.tmp').write_bytes(b'half a checkpoint')  # an older version's partial write
    before = snapshot(run_dir)
    with pytest.raises(SetupError, match='holds what a training run wrote before it stopped'):
        RunClaim(str(run_dir), fresh=True, checkpoint='state.pt', other='--out_dir')
    assert snapshot(run_dir) == before
    monkeypatch.setattr(Trainer, 'train_epoch', original)
    run(cfg_for(tmp_path, *flags), lambda c: small)  # the same kind takes it over, its old partial write swept
    assert (run_dir / 'last.pt').exists() and not (run_dir / '.best.pt.x1y2z3w4.tmp').exists()


# ---- outputs a user edited are never written over ------------------------------------------------

def test_labels_predicted_for_one_folder_are_not_replaced_by_another_folders(tmp_path, capsys):
    """predict --folder B where the run holds A's predicted labels is refused naming A; A again is labelled
    anew, and B is labelled once A's are moved away."""
    root = str(tmp_path / 'own')
    layouts.own_data(root, per_class=8, n_eval=2)
    _, run_dir = train_ImageFolder.main(['--train', os.path.join(root, 'labels.csv'),
                                         *own_flags(tmp_path, '--nepoch', '1')])
    a, b = os.path.join(root, 'test'), os.path.join(root, 'val')
    predict.main([run_dir, '--folder', a, '--device', 'cpu'])
    predict.main([run_dir, '--folder', a, '--device', 'cpu'])  # the same folder again: labelled anew
    before, _ = snapshot(run_dir), capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run_cli(predict.main, [run_dir, '--folder', b, '--device', 'cpu'])
    assert refused.value.code == 2 and capsys.readouterr().err == (
        f'error: {run_dir} holds the labels predicted for {a} (predict_folder_labels.npy, .csv), and labelling '
        f'--folder {b} would replace them: move predict_folder.* out of the run folder to keep them, then run '
        f'again\n')
    assert snapshot(run_dir) == before
    os.makedirs(tmp_path / 'kept')
    for name in os.listdir(run_dir):
        if name.startswith('predict_folder'):
            shutil.move(os.path.join(run_dir, name), tmp_path / 'kept' / name)
    assert predict.main([run_dir, '--folder', b, '--device', 'cpu'])['n'] == 8
    assert load_json(os.path.join(run_dir, 'predict_folder.json')) == {'folder': b, 'images': 8}


def test_an_edited_label_ranking_or_prediction_csv_is_never_written_over(tmp_path, capsys):
    """The CSVs a user corrects by hand (the label ranking, a folder's predicted labels): a resume or a
    prediction that would write them again is refused in one line while they differ from what the
    package wrote; moved away, the run goes on."""
    import predict
    root = str(tmp_path / 'own')
    layouts.own_data(root, per_class=8, n_eval=2)
    train = ['--train', os.path.join(root, 'labels.csv'), '--val', os.path.join(root, 'val')]
    _, run_dir = train_ImageFolder.main([*train, *own_flags(tmp_path, '--nepoch', '1')])
    folder = ['--folder', os.path.join(root, 'test'), '--device', 'cpu']
    predict.main([run_dir, *folder])
    predict.main([run_dir, *folder])  # its own earlier output is written over
    for name, again in (('predict_folder.csv', lambda: run_cli(predict.main, [run_dir, *folder])),
                        ('train_label_ranking.csv',
                         lambda: run_cli(train_ImageFolder.main, [*train, '--resume', run_dir, '--nepoch', '2']))):
        path = os.path.join(run_dir, name)
        with open(path, 'a') as f:
            f.write('my correction\n')
        before, _ = snapshot(run_dir), capsys.readouterr()
        with pytest.raises(SystemExit) as refused:
            again()
        # a resume that trains on removes the ranking at once (its end writes it again); predict.py writes over
        loses = 'predict.py would write over' if name.startswith('predict') else f'--resume {run_dir} would remove'
        assert refused.value.code == 2 and capsys.readouterr().err == (
            f'error: {path} was edited after this package wrote it, and {loses} it: move it out of the run folder '
            f'to keep your edits, then run again\n')
        assert snapshot(run_dir) == before
        os.rename(path, tmp_path / (name + '.mine'))  # kept outside the run folder
    predict.main([run_dir, '--split', 'test', '--device', 'cpu'])  # writes no CSV: the edited one is no matter
    summary, _ = train_ImageFolder.main([*train, '--resume', run_dir, '--nepoch', '2'])
    assert summary['epochs'] == 2 and os.path.isfile(os.path.join(run_dir, 'train_label_ranking.csv'))
    # a record an earlier version wrote keeps no digests: an edit cannot be told, so nothing is written over
    record = json.loads((tmp_path / 'runs' / 'own' / RECORD_NAME).read_text())
    del record['digests']
    (tmp_path / 'runs' / 'own' / RECORD_NAME).write_text(json.dumps(record))
    before, _ = snapshot(run_dir), capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run_cli(train_ImageFolder.main, [*train, '--resume', run_dir, '--nepoch', '3'])
    assert refused.value.code == 2 and capsys.readouterr().err == (
        f'error: {run_dir}/train_label_ranking.csv was written before this package kept digests of its CSVs, so '
        f'whether you edited it cannot be told, and --resume {run_dir} would remove it: move it out of the '
        f'run folder to keep it, then run again\n')
    assert snapshot(run_dir) == before
    # and a file of that name that no run wrote is refused as a resume's too
    os.rename(os.path.join(run_dir, 'train_label_ranking.csv'), tmp_path / 'kept.csv')
    with open(os.path.join(run_dir, 'train_label_ranking.csv'), 'w') as f:
        f.write('mine\n')
    record['files'].remove('train_label_ranking.csv')
    (tmp_path / 'runs' / 'own' / RECORD_NAME).write_text(json.dumps(record))
    with pytest.raises(SetupError, match=r'holds files no run of this package recorded writing there '
                                         r'\(train_label_ranking.csv\), and --resume'):
        train_ImageFolder.main([*train, '--resume', run_dir, '--nepoch', '3'])


def test_a_run_made_with_relative_paths_resumes_and_predicts_from_another_folder(tmp_path, monkeypatch):
    """A new run records where its inputs lie as absolute paths: from another working folder it resumes and
    is predicted with no data flag, and its ranking CSV names images that are there. A run recorded with a
    relative path (before) is named anew from there: the CSV's image paths are read relative to the CSV,
    and the fingerprints check that they are the same images."""
    layouts.own_data(str(tmp_path / 'here' / 'own'), per_class=8, n_eval=2)
    monkeypatch.chdir(tmp_path / 'here')
    train = ['--train', 'own/labels.csv', '--val', 'own/val']
    _, run_dir = train_ImageFolder.main([*train, *own_flags(tmp_path, '--nepoch', '1')])
    assert load_json(os.path.join(run_dir, 'config.json'))['train'] == str(tmp_path / 'here' / 'own' / 'labels.csv')
    os.makedirs(tmp_path / 'elsewhere')
    monkeypatch.chdir(tmp_path / 'elsewhere')
    summary, _ = train_ImageFolder.main(['--resume', run_dir, '--nepoch', '2'])
    assert summary['epochs'] == 2
    with open(os.path.join(run_dir, 'train_label_ranking.csv')) as f:
        assert all(os.path.isfile(row.split(',')[0]) for row in f.read().splitlines()[1:])
    assert predict.main([run_dir, '--split', 'test'])['n'] == 8
    for name in ('last.pt', 'best.pt'):  # as a run recorded before: the relative spelling it was given
        ckpt = load_torch(os.path.join(run_dir, name))
        ckpt['config']['train'] = 'own/labels.csv'
        save_torch(ckpt, os.path.join(run_dir, name))
    with pytest.raises(DatasetMissing, match='training images not found: own/labels.csv'):
        train_ImageFolder.main(['--resume', run_dir, '--nepoch', '3'])
    summary, _ = train_ImageFolder.main(['--resume', run_dir, '--nepoch', '3', '--train', '../here/own/labels.csv'])
    assert summary['epochs'] == 3
    # config.json keeps the run's first record, and says what each resume gave
    resumes = load_json(os.path.join(run_dir, 'config.json'))['resumes']
    assert resumes[-1]['given'] == {'nepoch': 3, 'resume': run_dir, 'train': '../here/own/labels.csv'}


def test_a_resume_that_trains_on_first_removes_what_the_run_made_of_its_earlier_best(tmp_path, small, monkeypatch,
                                                                                       capsys):
    """A finished run trained on (a larger --nepoch) and stopped again: its summary.json, which tools take for a
    finished run, and the outputs and predictions of the earlier best.pt stood beside a run of more epochs."""
    from test_engine import run_interrupted_at
    from utils.predict import predict as predict_run
    _, run_dir = run(cfg_for(tmp_path, *SHORT), lambda c: small)
    predict_run(demo_digits.config([]), lambda c: small, run_dir)
    run(demo_digits.config(['--resume', run_dir]), lambda c: small)  # trains nothing: its outputs again, and kept
    made = {'summary.json', 'train_denoised_labels.npy', 'train_noisy_labels.npy', 'accuracy.png',
            'confusion_noisy_vs_denoised.png', 'confusion_clean_vs_denoised.png', 'confusion_clean_vs_noisy.png',
            'predict_test_labels.npy'}
    assert made <= set(os.listdir(run_dir))
    # a resume refused by a check made once the data is prepared (here the checkpoint's) removes nothing
    monkeypatch.setattr(engine, 'resume_trainer', lambda *a, **k: (_ for _ in ()).throw(SetupError('refused')))
    with pytest.raises(SetupError, match='refused'):
        run(demo_digits.config(['--resume', run_dir, '--nepoch', '5']), lambda c: small)
    monkeypatch.undo()
    assert made <= set(os.listdir(run_dir))
    capsys.readouterr()
    run_interrupted_at(monkeypatch, 3, demo_digits.config(['--resume', run_dir, '--nepoch', '5']), small)
    assert not made & set(os.listdir(run_dir)) and {'best.pt', 'last.pt', 'log.jsonl'} <= set(os.listdir(run_dir))
    assert '--resume: the run trains on from epoch 2, so what its best checkpoint so far made is removed ' \
           '(summary.json, train_denoised_labels.npy' in capsys.readouterr().out
    predict_run(demo_digits.config([]), lambda c: small, run_dir)  # of the stopped run: said so, and removed
    assert 'best checkpoint so far (the run is unfinished; a --resume that trains on removes these predictions)' \
        in capsys.readouterr().out
    summary, _ = run(demo_digits.config(['--resume', run_dir]), lambda c: small)
    assert summary['epochs'] == 5 and load_json(os.path.join(run_dir, 'summary.json'))['epochs'] == 5
    assert not os.path.exists(os.path.join(run_dir, 'predict_test_labels.npy'))


def test_a_path_given_again_on_a_resume_is_the_place_it_names_not_its_spelling(tmp_path, small, monkeypatch):
    """A new run records --inputs_dir absolute; the same folder typed relative again is not a change, another
    folder is (a flag a resume may not change)."""
    monkeypatch.chdir(tmp_path)
    summary, run_dir = run(cfg_for(tmp_path, *SHORT, '--inputs_dir', 'inputs'), lambda c: small)
    assert load_json(os.path.join(run_dir, 'config.json'))['inputs_dir'] == str(tmp_path / 'inputs')
    summary, _ = run(demo_digits.config(['--resume', run_dir, '--nepoch', '3', '--inputs_dir', 'inputs']),
                     lambda c: small)
    assert summary['epochs'] == 3
    with pytest.raises(SetupError, match=r"cannot change --inputs_dir 'elsewhere' \(the run has '.*/inputs'\)"):
        run(demo_digits.config(['--resume', run_dir, '--nepoch', '4', '--inputs_dir', 'elsewhere']), lambda c: small)


def test_a_run_folder_of_a_version_before_records_resumes_and_is_recorded(tmp_path, small):
    """No .written.json (a run of a version before records): a resume takes the files it holds for the
    run's own, and the record its first write makes names them, so a second resume goes on."""
    summary, run_dir = run(cfg_for(tmp_path, *SHORT), lambda c: small)
    os.remove(os.path.join(run_dir, RECORD_NAME))
    held = set(os.listdir(run_dir))
    for nepoch in ('3', '4'):
        summary, _ = run(demo_digits.config(['--resume', run_dir, '--nepoch', nepoch]), lambda c: small)
        assert summary['epochs'] == int(nepoch) and held <= read_record(run_dir)
    # a record half written when its writer was killed is the run's own, not a stranger's file
    with open(os.path.join(run_dir, '.' + RECORD_NAME + '.abcd1234.lra-partial'), 'w') as f:
        f.write('{"writ')
    summary, _ = run(demo_digits.config(['--resume', run_dir, '--nepoch', '5']), lambda c: small)
    assert summary['epochs'] == 5


def test_a_damaged_record_is_refused_by_a_resume_and_by_predict(tmp_path, small, capsys):
    """Read as empty, a damaged .written.json made the run's own files foreign to a resume, and predict.py wrote
    a record of its own two files over it: the damage made permanent. Deleted, the folder is one from before
    records."""
    _, run_dir = run(cfg_for(tmp_path, '--nepoch', '2', '--warmup_epochs', '1', '--n_samples', '0'), lambda c: small)
    record = os.path.join(run_dir, RECORD_NAME)
    with open(record, 'w') as f:
        f.write('{"files": 5')
    before = snapshot(run_dir)
    says = f'{record} is damaged (it does not read as the record of the files this package wrote there); delete it'
    with pytest.raises(SetupError, match=re.escape(says)):
        run(demo_digits.config(['--resume', run_dir, '--nepoch', '3']), lambda c: small)
    with pytest.raises(SystemExit) as exited:
        run_cli(predict.main, [run_dir, '--n_samples', '0'])
    assert exited.value.code == 2 and says in capsys.readouterr().err and snapshot(run_dir) == before
    os.remove(record)
    summary, _ = run(demo_digits.config(['--resume', run_dir, '--nepoch', '3']), lambda c: small)
    assert summary['epochs'] == 3 and 'best.pt' in read_record(run_dir)
    stopped = tmp_path / 'stopped'  # no checkpoint: deleting the record would leave its files foreign, not adopted
    stopped.mkdir()
    (stopped / 'log.jsonl').write_text('')
    (stopped / RECORD_NAME).write_text('{"files": 5')
    with pytest.raises(SetupError, match='is damaged .*; the folder holds no checkpoint to go on from: move it away '
                                         'and start anew'):
        RunClaim(str(stopped), fresh=True)


def test_a_resume_with_the_classes_renamed_is_refused(tmp_path):
    """Index labels with a --classes file: the same indices under other names would rename what the run
    learned (its label ranking, its predictions); the fingerprints see only the indices."""
    root = tmp_path / 'own'
    layouts.own_data(str(root), classes=('cat', 'dog'), per_class=8, n_eval=2)
    rows = (root / 'labels.csv').read_text().splitlines()
    (root / 'index.csv').write_text('\n'.join([rows[0], *[r.replace(',cat', ',0').replace(',dog', ',1')
                                                          for r in rows[1:]]]) + '\n')
    (root / 'a.txt').write_text('cat\ndog\n')
    (root / 'b.txt').write_text('dog\ncat\n')
    train = ['--train', str(root / 'index.csv')]
    _, run_dir = train_ImageFolder.main([*train, '--classes', str(root / 'a.txt'), *own_flags(tmp_path, '--nepoch', '1')])
    with pytest.raises(SetupError, match=r"the classes differ from the run's \('dog' here, 'cat' in the run; 'cat' here, "
                                         r"'dog' in the run\)"):
        train_ImageFolder.main([*train, '--resume', run_dir, '--nepoch', '2', '--classes', str(root / 'b.txt')])
    summary, _ = train_ImageFolder.main([*train, '--resume', run_dir, '--nepoch', '2'])
    assert summary['epochs'] == 2


def test_a_resume_whose_images_this_version_normalises_otherwise_is_refused(tmp_path, small):
    """Clothing1M's runs made before its own statistics were used learned on ImageNet-normalised pixels: a
    resume would go on with other inputs to the same networks."""
    summary, run_dir = run(cfg_for(tmp_path, *SHORT), lambda c: small)
    other = dataclasses.replace(small, mean=(0.6959, 0.6537, 0.6371), std=(0.3113, 0.3192, 0.3214))
    with pytest.raises(SetupError, match=r'--resume .*: the run normalised its images with mean \(0\.3052, 0\.3052, '
                                         r'0\.3052\) and std \(.*\); this version normalises digits-sub200 with mean '
                                         r'\(0\.6959, 0\.6537, 0\.6371\) .*: '
                                         r'start a new run') as refused:
        run(demo_digits.config(['--resume', run_dir, '--nepoch', '3']), lambda c: other)
    assert '\n' not in str(refused.value)
    summary, _ = run(demo_digits.config(['--resume', run_dir, '--nepoch', '3']), lambda c: small)
    assert summary['epochs'] == 3


def test_a_label_ranking_of_a_run_before_records_is_kept_not_taken_for_a_strangers(tmp_path):
    """No record: the ranking is the run's, but whether it was edited cannot be told, so a resume that would
    write it again asks for it to be moved first (not called a stranger's file)."""
    root = str(tmp_path / 'own')
    layouts.own_data(root, per_class=8, n_eval=2)
    train = ['--train', os.path.join(root, 'labels.csv'), '--val', os.path.join(root, 'val')]
    _, run_dir = train_ImageFolder.main([*train, *own_flags(tmp_path, '--nepoch', '1')])
    os.remove(os.path.join(run_dir, RECORD_NAME))
    with pytest.raises(SetupError, match='train_label_ranking.csv was written before this package kept digests'):
        train_ImageFolder.main([*train, '--resume', run_dir, '--nepoch', '2'])
    os.rename(os.path.join(run_dir, 'train_label_ranking.csv'), tmp_path / 'ranking.csv')
    summary, _ = train_ImageFolder.main([*train, '--resume', run_dir, '--nepoch', '2'])
    assert summary['epochs'] == 2


def test_class_folders_named_by_a_relative_path_or_moved_resume_and_other_images_do_not(tmp_path, monkeypatch):
    """The fingerprints name each image within its split's folder: class folders given by a relative path
    resume from another working folder, and a dataset copied elsewhere (a node's local disk; mtimes kept)
    resumes from there; an image changed in the copy is refused. Before, both were refused as other images."""
    layouts.own_data(str(tmp_path / 'here' / 'own'), per_class=8, n_eval=2)
    monkeypatch.chdir(tmp_path / 'here')
    train = ['--train', 'own/train', '--val', 'own/val']
    _, run_dir = train_ImageFolder.main([*train, *own_flags(tmp_path, '--nepoch', '1')])
    monkeypatch.chdir(tmp_path)
    summary, _ = train_ImageFolder.main(['--resume', run_dir, '--nepoch', '2', '--train', 'here/own/train',
                                         '--val', 'here/own/val'])
    assert summary['epochs'] == 2
    shutil.copytree(tmp_path / 'here' / 'own', tmp_path / 'scratch' / 'own')  # copy2: mtimes kept
    moved = ['--train', str(tmp_path / 'scratch' / 'own' / 'train'), '--val', str(tmp_path / 'scratch' / 'own' / 'val')]
    cache = snapshot(tmp_path / 'cache')
    summary, _ = train_ImageFolder.main(['--resume', run_dir, '--nepoch', '3', *moved])
    assert summary['epochs'] == 3 and snapshot(tmp_path / 'cache') == cache  # the copy's features: from the cache
    # copied without the modification times (cp -r): refused, saying so
    shutil.copytree(tmp_path / 'here' / 'own', tmp_path / 'plain' / 'own', copy_function=shutil.copy)
    plain = ['--train', str(tmp_path / 'plain' / 'own' / 'train'), '--val', str(tmp_path / 'plain' / 'own' / 'val')]
    with pytest.raises(SetupError, match=r'the image files differ from those the run was made with \(the same files '
                                         r'by name and size, with other modification times: a copy that did not keep '
                                         r'them, as cp -r makes; copy with cp -a or rsync -a'):
        train_ImageFolder.main(['--resume', run_dir, '--nepoch', '4', *plain])
    touched = sorted((tmp_path / 'scratch' / 'own' / 'train' / 'dog').iterdir())[0]
    times = touched.stat().st_atime_ns, touched.stat().st_mtime_ns
    touched.touch()  # the same size, a new time: named, not taken for a copy
    with pytest.raises(SetupError, match=re.escape(f'(1 image modified after the run recorded them: {touched})')):
        train_ImageFolder.main(['--resume', run_dir, '--nepoch', '4', *moved])
    os.utime(touched, ns=times)
    changed = next((tmp_path / 'scratch' / 'own' / 'train' / 'cat').iterdir())
    changed.write_bytes(changed.read_bytes() + b'\0')
    with pytest.raises(SetupError, match=re.escape('the image files differ from those the run was made with (1 image '
                                                   f'modified after the run recorded them: {changed}); resume')):
        train_ImageFolder.main(['--resume', run_dir, '--nepoch', '4', *moved])
    os.utime(changed, ns=(0, 0))  # changed, with a time before the run's: the refusal cannot name it
    with pytest.raises(SetupError, match='the image files differ from those the run was made with; resume'):
        train_ImageFolder.main(['--resume', run_dir, '--nepoch', '4', *moved])


def test_a_run_whose_fingerprints_named_files_as_given_resumes_in_place_and_stays_so(tmp_path):
    """Runs recorded before 'file paths' hashed each image's path as given: they resume where they are
    (checked in their own form, which their checkpoints keep) and are refused where moved, as before."""
    own = str(tmp_path / 'own')
    layouts.own_data(own, per_class=8, n_eval=2)
    train = ['--train', os.path.join(own, 'train'), '--val', os.path.join(own, 'val')]
    _, run_dir = train_ImageFolder.main([*train, *own_flags(tmp_path, '--nepoch', '1')])
    splits = train_ImageFolder.load_splits(train_ImageFolder.config([*train, *own_flags(tmp_path)]))
    as_given = dataset_fingerprints(splits, saved={'dataset': 'recorded before file paths'})
    assert 'file paths' not in as_given and as_given['dataset'] != dataset_fingerprints(splits)['dataset']
    for name in ('last.pt', 'best.pt'):
        ckpt = load_torch(os.path.join(run_dir, name))
        fingerprints = ckpt['data_info']['input_fingerprints']
        fingerprints.pop('file paths')
        fingerprints.update(as_given)
        save_torch(ckpt, os.path.join(run_dir, name))
    summary, _ = train_ImageFolder.main(['--resume', run_dir, '--nepoch', '2'])
    assert summary['epochs'] == 2
    kept = load_torch(os.path.join(run_dir, 'last.pt'))['data_info']['input_fingerprints']
    assert 'file paths' not in kept and kept['dataset'] == as_given['dataset']
    shutil.copytree(own, str(tmp_path / 'moved'))
    with pytest.raises(SetupError, match='the dataset and the image files differ'):
        train_ImageFolder.main(['--resume', run_dir, '--nepoch', '3', '--train', str(tmp_path / 'moved' / 'train'),
                                '--val', str(tmp_path / 'moved' / 'val')])


def test_a_default_run_name_taken_in_the_same_second_gets_a_number(tmp_path, monkeypatch):
    """Two commands started in one second: the second was refused, told to choose another --run_name, a name
    the user never chose."""
    monkeypatch.setattr(time, 'strftime', lambda fmt, *a: '20261207-220000')
    cfg = demo_digits.config(['--out_dir', str(tmp_path)])
    first = default_run_name(cfg)
    assert first == 'digits-U-0.4_raw_fp_mlp_s123_20261207-220000'
    (tmp_path / first).mkdir()
    assert default_run_name(cfg) == first + '-2'
    (tmp_path / (first + '-2')).write_text('a file takes the name too')
    assert default_run_name(cfg) == first + '-3'
