"""The published inputs of the paper's tables, fetched by name and verified by git's blob hash.

Noise files (type I from the authors, types II and III from PLC), the authors' SimCLR encoders, the
Clothing1M classifier and sample selection, and the ILSVRC2012 validation labels the authors' WebVision
test reads are public files in two GitHub repositories. Each is
pinned here to a commit and to the blob hash `git hash-object` prints for it, so a file is the
published one exactly or is refused. A name is the file's name without its extension
(`cifar10-1-0.35`, `SimCLR_128_cifar10`, `CC_net`, `cc_select_img`).

Files live flat in one folder: `--inputs_dir`, else $LRA_DIFFUSION_HOME, else
$XDG_CACHE_HOME/lra_diffusion (~/.cache/lra_diffusion). A file already there is used after the same
verification (offline machines copy the folder in); otherwise it is downloaded from
https://raw.githubusercontent.com/<repo>/<commit>/<path> ($LRA_DIFFUSION_BASE_URL replaces the host
part, for mirrors and tests).
"""
import contextlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass

from utils.errors import PublishedInputError
from utils.storage.fingerprints import git_blob_sha1_of_file
from utils.storage.saving import atomic_write

DEFAULT_BASE_URL = 'https://raw.githubusercontent.com'
AUTHORS = ('puar-playground/LRA-diffusion', '231e587f3569ce413d40d96b9cce5a3c08ee361f')
PLC = ('pxiangwu/PLC', '8c2bcfd25e538fdcdb637a820ac340e9ee084e59')
TIMEOUT_S = 60


@dataclass(frozen=True)
class Published:
    repo: str
    commit: str
    path: str   # inside the repository
    blob: str   # git blob sha1 of the published file

    @property
    def file_name(self):
        return os.path.basename(self.path)


def _files(source, folder, blobs):
    repo, commit = source
    return {os.path.splitext(f)[0]: Published(repo, commit, f'{folder}/{f}', b) for f, b in blobs.items()}


PUBLISHED = {
    **_files(AUTHORS, 'noise_label', {
        'cifar10-1-0.35.npy': '744d3755ea73318bf8181a78313b60428441f80f',
        'cifar10-1-0.35_A_0.3.npy': '27f7aeca14e7e56fda54f30d84759ed0ec221389',
        'cifar10-1-0.35_U_0.3.npy': 'd72073f138818a4b83dc889cd1b3753c3cfab305',
        'cifar10-1-0.35_U_0.6.npy': 'ade36c604250fa05747dfb56964de4eb755bafb5',
        'cifar10-1-0.40.npy': 'fc53d276337161ff690f8e276a9d038c70de6188',
        'cifar10-1-0.45.npy': 'c505309e4bd1ed67311f1aff898b2a9e9996aeac',
        'cifar10-1-0.50.npy': '3c91b98278d1d49606a4a6a7d7af1425e8ff87b9',
        'cifar10-1-0.55.npy': 'ad2c4c71b3495a6a7a0fdbf4b40b16d11551477c',
        'cifar10-1-0.60.npy': '00b2117addeeb43bdeac136f21301df3b21ef9df',
        'cifar10-1-0.65.npy': '1f767423935827e7785b3afeab3307528be4b5b0',
        'cifar10-1-0.70.npy': '4bbd76577ceadb7de162b5eaee2e6cb5464dd7ed',
        'cifar100-1-0.35.npy': '340fb234be96a8f2b1205c50dff489cc7ee5b927',
        'cifar100-1-0.35_A_0.3.npy': 'abd7b25ef0acdc42ed0eb12a9ad44a9030fcd841',
        'cifar100-1-0.35_U_0.3.npy': 'a69f758c3cb5e41bc049dadd56ba79b24304716a',
        'cifar100-1-0.35_U_0.6.npy': '66f898aa6d880a69f7cea3d336770d9fef6be16f',
        'cifar100-1-0.70.npy': '52b2ba94b4f5288bab4c5fb07448e19235f573fb',
    }),
    **_files(PLC, 'cifar/noisy_labels', {
        'cifar10-2-0.35.npy': '66c3e6cdc9545440a058a9f6f7acc8d1b128f683',
        'cifar10-2-0.70.npy': '6be095a5ffcf939bf6477fc843b4a437e6f79311',
        'cifar10-3-0.35.npy': '379546940a7ecd801c15f0694b1d7f1e996a0c5a',
        'cifar10-3-0.70.npy': '2d06b8a7df37c9254666372d8056fce60c80d9ca',
        'cifar100-2-0.35.npy': 'c955cbbea5c880527fe11b667e48d22a7ddb25aa',
        'cifar100-2-0.70.npy': '6ac9d27cdd6814d153c8b1a0efa2614e36400bfc',
        'cifar100-3-0.35.npy': 'dc869d450aed89b167178473c72fc4c34223781c',
        'cifar100-3-0.70.npy': '650c4ee3716f93647a478cd388af3b23ed3d9283',
    }),
    **_files(AUTHORS, 'model', {
        'SimCLR_128_cifar10.pt': '5eef805ebfe1a51e0492dc525eb2248ed852e71f',
        'SimCLR_128_cifar100.pt': '76d94c335c3e68b3a64c51c3b6e867d4807ab4b7',
        'CC_net.pt': '4770f727cc0555f6a192fee48b70ba8d286e00ed',
    }),
    **_files(AUTHORS, 'Clothing1M/annotations', {
        'cc_select_img.txt': 'b9f4e82cbac0935a376895e0037f112fe94789cf',
        'cc_select_label.txt': '4ad612cecb5b4e553a36239c5d17ca91914a8604',
    }),
    # the ILSVRC2012 validation labels (<file> <class index> <WordNet id>), their WebVision test split's
    **_files(AUTHORS, 'ILSVRC2012', {
        'ILSVRC2012_val_label.txt': '17bfb6011ec475b901604e9a2416f2890f3320fa',
    }),
}

# What fetch() resolved while a recording() was open: name → where it came from and its hash.
_recordings = []
_looking_only = []  # looking_only() blocks entered and not left


def inputs_dir(override=None):
    """The folder published files are kept in: the flag, then $LRA_DIFFUSION_HOME, then the user cache."""
    if override:
        return os.path.abspath(os.path.expanduser(override))
    if os.environ.get('LRA_DIFFUSION_HOME'):
        return os.path.abspath(os.path.expanduser(os.environ['LRA_DIFFUSION_HOME']))
    cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(cache, 'lra_diffusion')


def url_of(entry):
    base = os.environ.get('LRA_DIFFUSION_BASE_URL') or DEFAULT_BASE_URL
    return f'{base.rstrip("/")}/{entry.repo}/{entry.commit}/{entry.path}'


def lookup(name):
    """The registry entry of a name (the file name with its extension is accepted too)."""
    stem = os.path.splitext(name)[0] if name not in PUBLISHED else name
    entry = PUBLISHED.get(stem)
    if entry is None or (stem != name and entry.file_name != name):
        raise PublishedInputError(f'{name!r} is not a published input; known names: {", ".join(PUBLISHED)}')
    return stem, entry


def is_published(name):
    return name in PUBLISHED


@contextlib.contextmanager
def recording():
    """Collect {name: {url, path, git_blob_sha1}} of every input fetch() resolves inside the block."""
    record = {}
    _recordings.append(record)
    try:
        yield record
    finally:
        _recordings.remove(record)


@contextlib.contextmanager
def looking_only():
    """Inside the block fetch() downloads nothing: an absent input is a PublishedInputError naming where
    a run would fetch it from (a dry run, whichever reader asks for the input)."""
    _looking_only.append(True)
    try:
        yield
    finally:
        _looking_only.pop()


def fetch(name, folder=None, log=print):
    """The local path of published input `name`, verified by its git blob hash, downloaded if absent
    (not inside looking_only())."""
    name, entry = lookup(name)
    try:
        path, url = _fetched(name, entry, inputs_dir(folder), log)
    except PublishedInputError as exc:
        exc.input = name  # which input stopped a reader that asked for several (benchmarks.paper says it once)
        raise
    for record in _recordings:
        record[name] = {'url': url, 'path': path, 'git_blob_sha1': entry.blob}
    return path


def recognise(path):
    """The published input a file given by path is, by its git blob hash (None where it is none), recorded
    as fetch() records one: a run given the authors' file by --fp_checkpoint read the published file, and
    its record says so. Hashing a ResNet-50's 100 MB takes a fraction of a second."""
    blob = git_blob_sha1_of_file(path)
    name = next((name for name, entry in PUBLISHED.items() if entry.blob == blob), None)
    if name is not None:
        for record in _recordings:
            record[name] = {'url': url_of(PUBLISHED[name]), 'path': os.path.abspath(path), 'git_blob_sha1': blob}
    return name


def copy_in(name, sources, folder=None, log=print):
    """The local path of published input `name`, taken from a local copy where the network is not at hand:
    from the first of `sources` holding it, either as a checkout of its repository (<source>/<its path
    there>, e.g. a clone of the authors' LRA-diffusion for noise_label/cifar10-1-0.35.npy) or by its file
    name. The copy is verified by its git blob hash before it is kept in the inputs folder; a file already
    there is verified where it is and not copied."""
    name, entry = lookup(name)
    target = os.path.join(inputs_dir(folder), entry.file_name)
    if not os.path.isfile(target):
        found = local_copy(entry, sources)
        if found is None:
            raise PublishedInputError(
                f'{name}: no {entry.path} (a checkout of {entry.repo}) nor {entry.file_name} in {", ".join(sources)}; '
                f'give --from the folder holding it, or fetch it online without --from')
        got = git_blob_sha1_of_file(found)
        if got != entry.blob:
            raise PublishedInputError(
                f'{found} is not the published {name}: its git blob sha1 is {got}, the published file\'s is '
                f'{entry.blob} ({entry.repo} at commit {entry.commit[:7]}); check that commit out, or fetch it online')
        log(f'copying {found} → {target}')
        with open(found, 'rb') as source:
            atomic_write(target, lambda f: shutil.copyfileobj(source, f), flag='--inputs_dir')
        os.chmod(target, 0o644)
    return fetch(name, folder, log)  # verified where it is kept, and recorded as any fetch is


def local_copy(entry, sources):
    """Where the first of `sources` holds the entry's file: at its path in a checkout, else by its name."""
    places = [os.path.join(source, *entry.path.split('/')) for source in sources]
    places += [os.path.join(source, entry.file_name) for source in sources]
    return next((place for place in places if os.path.isfile(place)), None)


def _fetched(name, entry, folder, log):
    """(path, url) of a verified published file, downloaded where absent and allowed."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise PublishedInputError(f'{folder} is a file, not a folder to keep published inputs in; choose another '
                                  f'--inputs_dir')
    path = os.path.join(folder, entry.file_name)
    url = url_of(entry)
    if os.path.isfile(path):
        found = git_blob_sha1_of_file(path)
        if found != entry.blob:
            raise PublishedInputError(
                f'{path} is not the published {name}: its git blob sha1 is {found}, the published file\'s '
                f'is {entry.blob}; delete it to download {url} again, or copy the published file there')
    elif not _looking_only:
        offline = f'run `python -m noisy_label.fetch {name} --from CLONE` (CLONE: a clone of {entry.repo})'
        download(url, path, entry.blob, offline, log)
    else:
        raise PublishedInputError(f'{path} absent: a run downloads it from {url}; offline, copy that file there')
    return path, url


def download(url, path, blob, offline, log=print):
    """Stream `url` to a temporary file beside `path`; keep it as `path` only if its blob hash is `blob`.
    `offline`: the other way to get the file, which a failed download names."""
    def check(tmp):
        got = git_blob_sha1_of_file(tmp)
        if got != blob:
            raise PublishedInputError(f'download of {url} has git blob sha1 {got}, expected {blob}: refused '
                                      f'and deleted (a changed mirror, a proxy or a truncated transfer)')

    log(f'downloading {url} → {path}')
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            atomic_write(path, lambda f: _copy_stream(response, f), check=check, flag='--inputs_dir')
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # offline, 404, cut off, timeout
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, 'reason', exc)
        raise PublishedInputError(
            f'could not download {url} ({reason}); offline, copy that file to {path}, or {offline}') from exc
    os.chmod(path, 0o644)  # readable by everyone sharing the folder (the temporary file was private)
    return path


def _copy_stream(response, f, chunk=1 << 20):
    while block := response.read(chunk):
        f.write(block)


def cc_net_path(folder=None):
    """The authors' Clothing1M "Centrality and Consistency" classifier (f_p of their Clothing1M runs)."""
    return fetch('CC_net', folder)


def cc_select_paths(folder=None):
    """(images, labels) text files of the authors' cc_select subset of Clothing1M's noisy training set."""
    return fetch('cc_select_img', folder), fetch('cc_select_label', folder)
