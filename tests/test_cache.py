"""Caches keyed by the very arguments of the computation they hold."""
import os

import numpy as np
import pytest
import torch

from utils.encoders.cache import argument_identity, cached, computation_key
from utils.errors import DatasetMissing
from utils.storage.fingerprints import sampled_files_digest


def test_a_cached_computation_runs_once_per_distinct_arguments(tmp_path):
    calls = []

    def table(features, k, metric='euclidean'):
        calls.append((k, metric))
        return torch.arange(len(features) * k).view(len(features), k)

    features = torch.randn(6, 3)
    first = cached(table, dict(features=features, k=2), str(tmp_path), 'table', log=lambda m: None)
    again = cached(table, dict(features=features, k=2), str(tmp_path), 'table', log=lambda m: None)
    assert torch.equal(first, again) and calls == [(2, 'euclidean')]
    cached(table, dict(features=features, k=3), str(tmp_path), 'table', log=lambda m: None)
    # a new option passed to the computation is part of its key by construction: no stale reuse
    cached(table, dict(features=features, k=2, metric='cosine'), str(tmp_path), 'table', log=lambda m: None)
    cached(table, dict(features=features + 1, k=2), str(tmp_path), 'table', log=lambda m: None)
    assert calls == [(2, 'euclidean'), (3, 'euclidean'), (2, 'cosine'), (2, 'euclidean')]


def test_settings_that_do_not_change_the_value_are_not_in_the_key(tmp_path):
    calls = []

    def encode(x, batch_size=1):
        calls.append(batch_size)
        return x * 2

    x = torch.ones(4)
    cached(encode, dict(x=x), str(tmp_path), 'enc', log=lambda m: None, batch_size=2)
    cached(encode, dict(x=x), str(tmp_path), 'enc', log=lambda m: None, batch_size=64)
    assert calls == [2]
    assert computation_key(encode, dict(x=x)) != computation_key(encode, dict(x=x + 1))
    # a computation whose value changed (its `version`) is computed again, not read from an old cache
    before = computation_key(encode, dict(x=x))
    encode.version = 2
    assert computation_key(encode, dict(x=x)) != before
    cached(encode, dict(x=x), str(tmp_path), 'enc', log=lambda m: None, batch_size=3)
    assert calls == [2, 3]
    from utils.prepare import neighbour_table
    assert computation_key(neighbour_table, dict(x=x))['computation'] == 'utils.cache.neighbour_table@2'


def test_a_new_search_option_reaches_every_search_and_the_neighbour_cache_key(tmp_path, digits, monkeypatch):
    """A search option added in utils/retrieval.py (search_options and knn) needs no other file: it
    reaches the cached neighbour table (and its key) and the f_p check."""
    from test_engine import digits_cfg

    import utils.prepare
    import utils.retrieval
    from conftest import subset
    seen, exact = [], utils.retrieval.knn

    def knn_with_option(queries, keys, k, chunk_size=None, progress=False, shrink=1.0):
        seen.append(shrink)
        return exact(queries * shrink, keys * shrink, k, chunk_size, progress)
    small = subset(digits, 150, 40)
    cfg = digits_cfg(tmp_path, '--nepoch', '1')
    utils.prepare.prepare(cfg, small, torch.device('cpu'), log=lambda m: None)
    files = set(os.listdir(tmp_path / 'cache'))
    for module in (utils.retrieval, utils.prepare):  # the neighbour table's search, the f_p check's
        monkeypatch.setattr(module, 'knn', knn_with_option)
    monkeypatch.setattr(utils.prepare, 'search_options', lambda cfg: {'shrink': 0.5})
    data = utils.prepare.prepare(cfg, small, torch.device('cpu'), log=lambda m: None)
    utils.prepare.use_k(cfg, data, small, log=lambda m: None)
    assert seen == [0.5, 0.5]  # the neighbour table, then the f_p check
    new = set(os.listdir(tmp_path / 'cache')) - files
    assert [n for n in new if n.startswith('neighbours_')]  # another key: the old table is not reused


def test_file_feature_keys_name_a_view_or_filter_only_where_they_differ_from_the_centre_crop(tmp_path,
                                                                                             tiny_clip_path):
    from benchmarks import layouts
    from utils.data.image_files import Decoding
    from utils.encoders.cache import cached_file_features, encode_file_view
    from utils.encoders.clip import load_clip
    from utils.storage.loading import load_torch
    rng = np.random.default_rng(0)
    paths = [str(tmp_path / f'{i}.jpg') for i in range(3)]
    for i, path in enumerate(paths):
        layouts.jpeg(path, i, rng)
    encoder = load_clip(tiny_clip_path, 'cpu')
    cache = tmp_path / 'cache'
    for resample in ('bilinear', 'bicubic'):
        for rounding in ('legacy', 'authors'):
            cached_file_features([encoder], paths, 'x', 'train', str(cache), Decoding(32, resample, rounding=rounding),
                                 2, 0, log=lambda m: None)
    keys = sorted((load_torch(str(cache / f))['key'] for f in os.listdir(cache)),
                  key=lambda k: ('resample' in k, 'rounding' in k))
    # the centre crops resized bilinear, rounded the legacy way: the key of caches made before views,
    # filters and roundings were named
    assert keys[0] == computation_key(encode_file_view, dict(encoder=encoder, paths=paths, size=32))
    assert keys[1] == computation_key(encode_file_view, dict(encoder=encoder, paths=paths, size=32,
                                                             rounding='authors'))
    assert keys[2] == computation_key(encode_file_view, dict(encoder=encoder, paths=paths, size=32,
                                                             resample='bicubic'))
    assert keys[3] == computation_key(encode_file_view, dict(encoder=encoder, paths=paths, size=32,
                                                             resample='bicubic', rounding='authors'))


def test_image_files_are_keyed_within_their_folder_and_told_apart_by_their_bytes(tmp_path):
    """A copy that keeps the times (cp -a) shares the key; another folder whose files agree in names,
    sizes and times (archives unpacked with one normalised time) does not."""
    def folder(name, pixels):
        paths = []
        for i, byte in enumerate(pixels):
            path = tmp_path / name / 'train' / 'cat' / f'{i}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes([byte]) * 100)
            os.utime(path, ns=(0, 10 ** 18 + i))
            paths.append(str(path))
        return paths
    original = argument_identity(folder('a', [1, 2, 3]))
    assert argument_identity(folder('copy', [1, 2, 3])) == original
    assert argument_identity(folder('other', [1, 9, 3])) != original  # the middle file's bytes differ
    folder('gone', [1, 2, 3])
    middle = tmp_path / 'gone' / 'train' / 'cat' / '1.jpg'
    middle.unlink()
    middle.mkdir()  # stats, but cannot be read as a file: a one-line refusal, not a traceback
    with pytest.raises(DatasetMissing, match=f'image {middle} cannot be read'):
        sampled_files_digest([str(p) for p in sorted((tmp_path / 'gone' / 'train' / 'cat').iterdir())])
