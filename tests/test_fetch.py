"""Published inputs fetched by name and verified by git blob hash, against a local HTTP server standing
in for raw.githubusercontent.com; and the authors' documented command run on inputs served that way."""
import dataclasses
import functools
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from test_data import write_cifar10

import train_CIFAR
from noisy_label import make_noise
from utils.data.cifar import load_cifar
from utils.data.noise import resolve_noisy_labels
from utils.encoders.factory import build_fp_encoder, default_simclr_path
from utils.encoders.simclr import load_simclr
from utils.errors import EncoderError, NoiseError, PublishedInputError, SetupError
from utils.storage import published
from utils.storage.fingerprints import git_blob_sha1, git_blob_sha1_of_file
from utils.storage.published import PUBLISHED, copy_in, fetch, recording
from utils.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """Files laid out as <repo>/<commit>/<path> under `root`, served on 127.0.0.1; records each request."""

    def __init__(self, root):
        self.root, self.requests = root, []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=root))
        self.base_url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True).start()

    def put(self, name, data):
        """Serve `data` at the place the registry's entry for `name` is downloaded from."""
        entry = PUBLISHED[name]
        path = os.path.join(self.root, entry.repo, entry.commit, entry.path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data)
        return f'{self.base_url}/{entry.repo}/{entry.commit}/{entry.path}'


@pytest.fixture
def server(tmp_path, monkeypatch):
    s = Server(str(tmp_path / 'served'))
    monkeypatch.setenv('LRA_DIFFUSION_BASE_URL', s.base_url)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def publish_as(monkeypatch, name, data):
    """Make the registry expect `data` for `name` (the real published files are not available offline)."""
    monkeypatch.setitem(PUBLISHED, name, dataclasses.replace(PUBLISHED[name], blob=git_blob_sha1(data)))


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


LABELS = np.random.default_rng(0).integers(0, 10, 300)


def test_git_blob_sha1_is_what_git_hash_object_prints(tmp_path):
    data = npy_bytes(LABELS)
    (tmp_path / 'f.npy').write_bytes(data)
    assert git_blob_sha1(b'') == 'e69de29bb2d1d6434b8b29ae775ad8c2e48c5391'  # git's empty blob
    if shutil.which('git') is None:
        pytest.skip('git is not installed')
    printed = subprocess.run(['git', 'hash-object', str(tmp_path / 'f.npy')], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert git_blob_sha1(data) == git_blob_sha1_of_file(str(tmp_path / 'f.npy')) == printed


def test_download_is_verified_kept_and_recorded(server, tmp_path, monkeypatch):
    data = npy_bytes(LABELS)
    url = server.put('cifar10-1-0.35', data)
    publish_as(monkeypatch, 'cifar10-1-0.35', data)
    folder = tmp_path / 'inputs'
    with recording() as record:
        path = fetch('cifar10-1-0.35', str(folder), log=lambda m: None)
    assert path == str(folder / 'cifar10-1-0.35.npy') and open(path, 'rb').read() == data
    assert os.listdir(folder) == ['cifar10-1-0.35.npy']  # no temporary file left
    assert record == {'cifar10-1-0.35': {'url': url, 'path': path, 'git_blob_sha1': git_blob_sha1(data)}}
    assert fetch('cifar10-1-0.35.npy', str(folder)) == path  # the file name works too; verified, not fetched again
    assert len(server.requests) == 1


def test_the_published_file_given_by_path_is_recorded_as_read(simclr18_path, tmp_path, monkeypatch):
    """--fp_checkpoint naming the authors' file (a clone's model/SimCLR_128_cifar10.pt): the run records that it
    read the published input, known by its git blob hash; another file is no published input."""
    publish_as(monkeypatch, 'SimCLR_128_cifar10', open(simclr18_path, 'rb').read())
    given = tmp_path / 'clone' / 'model' / 'SimCLR_128_cifar10.pt'
    given.parent.mkdir(parents=True)
    shutil.copy(simclr18_path, given)
    with recording() as record:
        build_fp_encoder('SimCLR', checkpoint=str(given))
    assert record == {'SimCLR_128_cifar10': {'url': published.url_of(PUBLISHED['SimCLR_128_cifar10']),
                                             'path': str(given), 'git_blob_sha1': git_blob_sha1_of_file(simclr18_path)}}
    with open(given, 'ab') as f:
        f.write(b'\0')  # another file: a pickle reads to its STOP opcode, so it still loads
    with recording() as record:
        build_fp_encoder('SimCLR', checkpoint=str(given))
    assert record == {}


def test_corrupted_download_is_refused_and_removed(server, tmp_path, monkeypatch):
    published_data, served = npy_bytes(LABELS), npy_bytes((LABELS + 1) % 10)
    url = server.put('cifar10-2-0.35', served)
    publish_as(monkeypatch, 'cifar10-2-0.35', published_data)
    folder = tmp_path / 'inputs'
    with pytest.raises(PublishedInputError) as refused:
        fetch('cifar10-2-0.35', str(folder), log=lambda m: None)
    message = str(refused.value)
    assert url in message and git_blob_sha1(served) in message and git_blob_sha1(published_data) in message
    assert '\n' not in message and os.listdir(folder) == []


def test_offline_names_the_url_and_where_to_copy_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv('LRA_DIFFUSION_BASE_URL', f'http://127.0.0.1:{closed_port()}')
    folder = tmp_path / 'inputs'
    with pytest.raises(PublishedInputError) as refused:
        fetch('SimCLR_128_cifar100', str(folder), log=lambda m: None)
    message = str(refused.value)
    entry = PUBLISHED['SimCLR_128_cifar100']
    assert published.url_of(entry) in message and f'copy that file to {folder / "SimCLR_128_cifar100.pt"}' in message
    assert entry.commit in published.url_of(entry) and '\n' not in message

    (tmp_path / 'a_file').write_text('mine\n')
    with pytest.raises(PublishedInputError, match=f'{tmp_path}/a_file is a file, not a folder to keep published '
                                                  f'inputs in; choose another --inputs_dir'):
        fetch('SimCLR_128_cifar100', str(tmp_path / 'a_file'), log=lambda m: None)
    assert (tmp_path / 'a_file').read_text() == 'mine\n'


def test_local_file_is_used_without_download_and_a_wrong_one_is_refused(server, tmp_path, monkeypatch):
    data = npy_bytes(LABELS)
    publish_as(monkeypatch, 'cifar100-3-0.70', data)
    monkeypatch.setenv('LRA_DIFFUSION_HOME', str(tmp_path / 'copied'))  # the environment variable moves it
    os.makedirs(tmp_path / 'copied')
    (tmp_path / 'copied' / 'cifar100-3-0.70.npy').write_bytes(data)
    assert fetch('cifar100-3-0.70') == str(tmp_path / 'copied' / 'cifar100-3-0.70.npy')
    wrong = npy_bytes(LABELS[::-1])
    (tmp_path / 'copied' / 'cifar100-3-0.70.npy').write_bytes(wrong)
    with pytest.raises(PublishedInputError, match='delete it') as refused:
        fetch('cifar100-3-0.70')
    assert all(s in str(refused.value) for s in (str(tmp_path / 'copied' / 'cifar100-3-0.70.npy'),
                                                 git_blob_sha1(wrong), git_blob_sha1(data)))
    assert server.requests == []


def test_published_noise_names_mean_the_published_files(server, tmp_path, monkeypatch):
    base, hybrid = LABELS, (LABELS + 3) % 10
    for name, labels in (('cifar100-1-0.35_U_0.3', hybrid), ('cifar10-2-0.35', base)):
        server.put(name, npy_bytes(labels))
        publish_as(monkeypatch, name, npy_bytes(labels))
    noise_dir = tmp_path / 'noisy_label'
    os.makedirs(noise_dir)
    got, source = resolve_noisy_labels('cifar100-1-0.35_U_0.3', 300, LABELS, 100, noise_dir=str(noise_dir))
    assert np.array_equal(got, hybrid) and 'published' in source  # the file, not noise drawn on the fly
    # a hybrid that is not published is drawn on top of the published base
    got, _ = resolve_noisy_labels('cifar10-2-0.35_U_0.3', 300, LABELS, 10, noise_dir=str(noise_dir))
    assert 0.2 < np.mean(got != base) < 0.4
    # a file of ours under a published name never stands in for the published one
    np.save(noise_dir / 'cifar10-2-0.35.npy', hybrid)
    with pytest.raises(NoiseError, match='rename it'):
        resolve_noisy_labels('cifar10-2-0.35', 300, LABELS, 10, noise_dir=str(noise_dir))


def test_files_made_here_never_take_a_published_name():
    made = [make_noise.pmd_name(d, t, r, s) for d in ('cifar10', 'cifar100') for t in (1, 2, 3)
            for r in (0.35, 0.7) for s in (0, 1)]
    assert not any(published.is_published(n) for n in made) and 'cifar10-1-0.35-s0' in made
    with pytest.raises(SetupError, match='is a published file'):
        make_noise.main(['hybrid', '--dataset', 'digits', '--base', 'cifar10-1-0.35', '--kind', 'U', '--rate', '0.3'])


def test_no_published_simclr_for_other_datasets_names_the_flag():
    with pytest.raises(EncoderError, match='--fp_checkpoint'):
        default_simclr_path('digits')


def test_inputs_are_taken_from_a_local_checkout_or_folder_verified_and_never_downloaded(server, tmp_path,
                                                                                         monkeypatch, capsys):
    """Offline with a clone of the authors' repository (or a folder of the files): --from takes each file
    from its path in the checkout, or by its name, and keeps it only if it is the published one."""
    from noisy_label import fetch as fetch_command
    ours, plc = npy_bytes(LABELS), npy_bytes((LABELS + 3) % 10)
    publish_as(monkeypatch, 'cifar10-1-0.35', ours)
    publish_as(monkeypatch, 'cifar10-3-0.70', plc)
    checkout, flat, inputs = tmp_path / 'LRA-diffusion', tmp_path / 'files', tmp_path / 'inputs'
    (checkout / 'noise_label').mkdir(parents=True)
    (checkout / 'noise_label' / 'cifar10-1-0.35.npy').write_bytes(ours)
    flat.mkdir()
    (flat / 'cifar10-3-0.70.npy').write_bytes(plc)
    assert fetch_command.main(['cifar10-1-0.35', 'cifar10-3-0.70', '--from', str(checkout), '--from', str(flat),
                               '--inputs_dir', str(inputs)]) == 0
    assert (inputs / 'cifar10-1-0.35.npy').read_bytes() == ours and (inputs / 'cifar10-3-0.70.npy').read_bytes() == plc
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ['cifar10-1-0.35', 'cifar10-3-0.70']
    assert sorted(os.listdir(inputs)) == ['cifar10-1-0.35.npy', 'cifar10-3-0.70.npy']  # no temporary file
    # a file of another commit is refused, and nothing is kept; one absent everywhere is named
    (checkout / 'noise_label' / 'cifar10-1-0.35.npy').write_bytes(plc)
    with pytest.raises(PublishedInputError, match='is not the published cifar10-1-0.35: its git blob sha1 is '
                                                  f'{git_blob_sha1(plc)}') as refused:
        copy_in('cifar10-1-0.35', [str(checkout)], str(tmp_path / 'other'), log=lambda m: None)
    assert '\n' not in str(refused.value) and not (tmp_path / 'other' / 'cifar10-1-0.35.npy').exists()
    with pytest.raises(PublishedInputError, match='no cifar/noisy_labels/cifar10-2-0.35.npy \\(a checkout of '
                                                  'pxiangwu/PLC\\) nor cifar10-2-0.35.npy in'):
        copy_in('cifar10-2-0.35', [str(checkout), str(flat)], str(inputs), log=lambda m: None)
    # a file already in the inputs folder is verified there and not copied again
    assert copy_in('cifar10-1-0.35', [str(checkout)], str(inputs), log=lambda m: None) == str(inputs / 'cifar10-1-0.35.npy')
    assert (inputs / 'cifar10-1-0.35.npy').read_bytes() == ours and server.requests == []
    with pytest.raises(PublishedInputError, match=f'--from {tmp_path}/nowhere: no such folder'):
        fetch_command.main(['cifar10-1-0.35', '--from', str(tmp_path / 'nowhere')])
    # what one clone holds is copied, what it does not is named (the other repository's clone comes next)
    capsys.readouterr()
    with pytest.raises(PublishedInputError, match=f'not in {flat}: cifar10-2-0.35; give --from the checkouts of '
                                                  'pxiangwu/PLC'):
        fetch_command.main(['cifar10-2-0.35', 'cifar10-3-0.70', '--from', str(flat), '--inputs_dir', str(tmp_path / 'x')])
    assert capsys.readouterr().out.split()[0] == 'cifar10-3-0.70' and (tmp_path / 'x' / 'cifar10-3-0.70.npy').is_file()


def run_python(args, env):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})


def test_fetch_command(server, tmp_path):
    env = {'LRA_DIFFUSION_BASE_URL': server.base_url, 'LRA_DIFFUSION_HOME': str(tmp_path / 'home')}
    unknown = run_python(['-m', 'noisy_label.fetch', 'cifar10-9-0.35'], env)
    assert unknown.returncode == 2 and 'known names: cifar10-1-0.35' in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and 'Traceback' not in unknown.stderr
    # the module run as a program, with the registry expecting the served bytes, into --inputs_dir
    server.put('cifar10-3-0.35', npy_bytes(LABELS))
    blob = git_blob_sha1(npy_bytes(LABELS))
    as_published = ('import dataclasses, runpy; from utils.storage.published import PUBLISHED as P; '
                    f'P["cifar10-3-0.35"] = dataclasses.replace(P["cifar10-3-0.35"], blob="{blob}"); '
                    'runpy.run_module("noisy_label.fetch", run_name="__main__", alter_sys=True)')
    done = run_python(['-c', as_published, 'cifar10-3-0.35', '--inputs_dir', str(tmp_path / 'dir')], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ['cifar10-3-0.35', str(tmp_path / 'dir' / 'cifar10-3-0.35.npy'), 'git', 'blob',
                                   'sha1', blob, 'verified']


def test_authors_command_runs_on_served_inputs_to_the_first_step(server, tmp_path, monkeypatch, simclr18_path):
    """`python train_CIFAR.py --noise_type cifar10-1-0.35 --fp_encoder SimCLR --nepoch 1000 --warmup_epochs 20`
    with the noise file and the SimCLR encoder fetched by name (on CPU: a 100-image training split, batch 20)."""
    n_train = 100
    write_cifar10(str(tmp_path / 'data'), n_per_batch=30)
    monkeypatch.setattr(train_CIFAR, 'load_cifar', functools.partial(load_cifar, n_train=n_train))
    noise = npy_bytes(np.random.default_rng(1).integers(0, 10, n_train))
    simclr = open(simclr18_path, 'rb').read()
    urls = {'cifar10-1-0.35': server.put('cifar10-1-0.35', noise),
            'SimCLR_128_cifar10': server.put('SimCLR_128_cifar10', simclr)}
    publish_as(monkeypatch, 'cifar10-1-0.35', noise)
    publish_as(monkeypatch, 'SimCLR_128_cifar10', simclr)

    class FirstStepDone(Exception):
        pass

    def first_step_only(self, idx, *decoded):
        loss = train_step(self, idx, *decoded)
        raise FirstStepDone(float(loss))
    train_step = Trainer.train_step
    monkeypatch.setattr(Trainer, 'train_step', first_step_only)
    inputs = tmp_path / 'inputs'
    with pytest.raises(FirstStepDone) as done:
        train_CIFAR.main(['--noise_type', 'cifar10-1-0.35', '--fp_encoder', 'SimCLR', '--nepoch', '1000',
                          '--warmup_epochs', '20', '--device', 'cpu', '--batch_size', '20',
                          '--data_root', str(tmp_path / 'data'),
                          '--no-download', '--inputs_dir', str(inputs), '--out_dir', str(tmp_path / 'runs'),
                          '--run_name', 'r', '--cache_dir', str(tmp_path / 'cache')])
    assert np.isfinite(float(done.value.args[0]))
    config = json.load(open(tmp_path / 'runs' / 'r' / 'config.json'))
    assert config['fp_train_view'] == 'augmented' and config['fp_weights'] == load_simclr(simclr18_path).fingerprint
    assert str(inputs / 'cifar10-1-0.35.npy') in config['noise_source'] and config['n_train'] == n_train
    assert config['inputs'] == {
        name: {'url': urls[name], 'path': str(inputs / PUBLISHED[name].file_name),
               'git_blob_sha1': git_blob_sha1(data)} for name, data in (('cifar10-1-0.35', noise),
                                                                         ('SimCLR_128_cifar10', simclr))}
    assert sorted(os.listdir(inputs)) == ['SimCLR_128_cifar10.pt', 'cifar10-1-0.35.npy']
