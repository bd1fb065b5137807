"""Data preparation, done once per run: noisy labels → frozen f_p features (cached) → neighbour table
(cached) → candidate labels, and the tensors a training step reads, resident on the device."""
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from utils.data.image_files import KEYS_VIEW_EPOCH, Decoding
from utils.data.noise import (
    OWN_LABELS,
    check_label_range,
    noise_dataset_problem,
    noise_rate,
    resolve_noisy_labels,
)
from utils.data.sampling import per_class_count
from utils.diff_encoders import cached_backbone_arch, diff_encoder_input, tunes_backbone
from utils.encoders.cache import cached, cached_features, cached_file_features
from utils.encoders.factory import build_fp_encoder
from utils.encoders.imagenet import load_imagenet_resnet, torchvision_weights
from utils.errors import SetupError
from utils.retrieval import CandidateLabels, knn, majority_vote, neighbour_table, neighbours_to_search

SPLITS = ('train', 'val', 'test')
# The augmented view whose f_p features are cached as keys (--fp_cache_view augmented) is one fixed view,
# the same for every --seed: the authors computed their keys under one fixed seed (123, also --seed's
# default) and Food-101N's once into a file every run read. So runs of other seeds share the cache
# instead of re-encoding the training set (Food-101N: 310k images).
KEYS_VIEW_SEED = 123


def search_options(cfg):
    """The flags that shape the neighbour search beyond k, as keyword arguments of utils/retrieval.knn:
    the one place a new search option (a distance, say) is read from the flags. Every search receives
    them (the cached neighbour table, whose cache key they enter by construction, the per-step retrieval
    and the f_p check), so such an option is a change to knn, this function and a flag in
    utils/runs/config.py. The paper's search, exact Euclidean, has none."""
    return {}


@dataclass
class Prepared:
    """Everything training needs, resident on the device."""
    n_class: int
    noisy_labels: torch.Tensor
    features: dict          # f_p features per split
    candidates: CandidateLabels
    images: dict            # uint8 images per split, only when a step reads pixels
    mean: tuple
    std: tuple
    fp_encoder: object      # kept only when training re-encodes augmented images
    info: dict
    backbone_features: dict = None  # frozen-backbone features per split, for the 'cached' diffusion encoders
    files: dict = None      # image paths per split, where a diffusion encoder reads image files (decoded per batch)
    decoding: dict = None   # and how each split is decoded (Decoding)
    neighbours: torch.Tensor = None  # the neighbour table the candidates come from (N × searched)

    def with_k(self, k, rule, weights):
        """The same data with the candidates of k neighbours (the table holds at least that many)."""
        count = neighbours_to_search(k, rule)
        return replace(self, candidates=CandidateLabels(self.neighbours[:, :count], self.noisy_labels, rule, weights))


def clean_train_labels(splits):
    """The clean labels of the training images as a numpy array, or None where unknown."""
    clean = splits.labels('train')
    return None if clean is None else clean.numpy()


def check_split_labels(splits):
    """Every label a dataset brings, in [0, n_class): an out-of-range validation or test label would
    score 0% silently, an out-of-range training label crash training after an epoch."""
    given = {'val': splits.labels('val'), 'test': splits.labels('test'), 'train clean': clean_train_labels(splits)}
    if splits.own_noisy_labels is not None:
        given['train'] = splits.own_noisy_labels
    for split, labels in given.items():
        if labels is not None:
            check_label_range(labels, splits.n_class, f'{splits.name} {split} labels')


def check_noise_is_for(noise_type, dataset):
    problem = noise_dataset_problem(noise_type, dataset)
    if problem:
        raise SetupError(problem)


def training_labels(cfg, splits):
    """The noisy training labels: the dataset's own (--noise_type own), or resolved from --noise_type."""
    clean = clean_train_labels(splits)
    if cfg.noise_type == OWN_LABELS:
        if splits.own_noisy_labels is None:
            raise SetupError(f'--noise_type {OWN_LABELS} means the dataset\'s own noisy labels, which {splits.name} does '
                             f'not have: name a noise (e.g. {splits.name}-U-0.4 or a .npy file)')
        return np.asarray(splits.own_noisy_labels), f'{splits.name} labels', clean
    check_noise_is_for(cfg.noise_type, splits.name)
    n = splits.size('train')
    labels, source = resolve_noisy_labels(cfg.noise_type, n, clean, splits.n_class, seed=cfg.noise_seed,
                                          coarse_of_class=getattr(splits, 'coarse_of_class', None),
                                          cifar_n_dirs=[cfg.cifar_n_dir] if cfg.cifar_n_dir else [],
                                          inputs_dir=getattr(cfg, 'inputs_dir', None))
    check_noise_seed_used(cfg, source)
    return labels, source, clean


def check_noise_seed_used(cfg, source):
    """--noise_seed draws generated noise; a noise read from a file (a name with a file in noisy_label/,
    a published or CIFAR-N one) or the clean labels would silently ignore it: refused."""
    given = 'noise_seed' in getattr(cfg, 'command_line_flags', ()) and not cfg.resume
    if given and '(seed ' not in source:
        raise SetupError(f'--noise_seed {cfg.noise_seed} draws generated noise, and --noise_type {cfg.noise_type} is '
                         f'read as it is ({source}): drop --noise_seed, or name noise drawn here (a file of another '
                         f'seed from noisy_label.make_noise ends in -s<seed>)')


def build_encoders(cfg, dataset, image_shape, mean, std, device):
    """The frozen encoders a run reads features from: f_p, plus the backbone of a 'cached'
    diffusion encoder."""
    encoders = [build_fp_encoder(cfg.fp_encoder, device, dataset=dataset, image_shape=image_shape, mean=mean, std=std,
                                 checkpoint=cfg.fp_checkpoint, clip_type=cfg.CLIP_type,
                                 clip_download_root=cfg.clip_download_root, clip_tower=cfg.clip_tower,
                                 arch=getattr(cfg, 'fp_arch', 'resnet50'), model=cfg.fp_model,
                                 pretrained=cfg.fp_pretrained, inputs_dir=cfg.inputs_dir,
                                 bf16=cfg.precision == 'bf16')]
    if diff_encoder_input(cfg.diff_encoder, cfg.diff_backbone) == 'cached':
        encoders.append(load_imagenet_resnet(cached_backbone_arch(cfg.diff_encoder), cfg.diff_encoder_weights,
                                             device, seed=cfg.seed))
        encoders[-1].bf16 = cfg.precision == 'bf16'
    return encoders


def decoding_of(cfg, splits, split):
    """How a split of a file dataset is decoded: at --image_size, with its loader's resize."""
    return Decoding(cfg.image_size, splits.resample_of(split), splits.upright, splits.rounding)


def decoded_as_recorded(splits, info):
    """A file dataset's splits decoded as the run whose data_info is `info` decoded them (what the run's
    features, and so what it learned, are of): turned by their EXIF tag only where the run recorded it
    was, and rounded as the authors' loaders only where it recorded that. A run made before either was
    recorded decoded the legacy way, WebVision's test images with its other splits' resize."""
    if splits.in_memory:
        return splits
    recorded = recorded_decoding(info)
    test_resample = splits.test_resample if recorded['rounding'] == 'authors' else None
    return replace(splits, **recorded, test_resample=test_resample)


def recorded_decoding(info):
    """The Decoding fields a run's data_info records (upright, rounding); the legacy ones where it records
    none (a run made before they were recorded)."""
    return {'upright': info.get('upright') is True,
            'rounding': 'authors' if info.get('rounding') == 'authors' else 'legacy'}


def features_of_split(cfg, splits, split, encoders, log=print):
    """Every encoder's cached features of one split (image files or in-memory images). The training
    split's f_p view follows --fp_cache_view; evaluation splits are always the clean images."""
    view = cfg.fp_cache_view if split == 'train' else 'clean'
    if not splits.in_memory:
        def files(group, augment=None):
            return cached_file_features(group, splits.paths(split), splits.name, split, cfg.cache_dir,
                                        decoding_of(cfg, splits, split), cfg.encode_batch_size, cfg.num_workers,
                                        log, augment)
        if view == 'augmented':  # f_p of the fixed key view; a diffusion backbone reads the centre crops
            keys = files(encoders[:1], (KEYS_VIEW_SEED, KEYS_VIEW_EPOCH))
            return keys + (files(encoders[1:]) if len(encoders) > 1 else [])
        return files(encoders)
    return [cached_features(e, splits.images(split), splits.name, split, cfg.cache_dir, view=view if i == 0 else 'clean',
                            seed=KEYS_VIEW_SEED, batch_size=cfg.encode_batch_size, log=log)
            for i, e in enumerate(encoders)]


def split_features(cfg, splits, encoders, log):
    """Per encoder, its cached features of every split: {split: tensor}."""
    out = [{} for _ in encoders]
    for split in SPLITS:
        for o, f in zip(out, features_of_split(cfg, splits, split, encoders, log)):
            o[split] = f
    return out


def check_input_size(encoder, image_size, log):
    """Image files are decoded at --image_size for every network; a hub model made for larger inputs
    (DINOv2: 518 px) then sees upsampled crops. Say so and name the fix (which also changes what a
    streamed diffusion encoder reads, so it is not done silently)."""
    wanted = max(getattr(encoder, 'input_size', None) or (0,))
    if wanted > image_size:
        log(f'note: {encoder.name} was trained on {wanted}-px inputs; the images are decoded at --image_size '
            f'{image_size} and upsampled for it: pass --image_size {wanted} for its full resolution')
    return wanted > image_size


K_SELECTION_IMAGES = 5000  # validation images --k_choices scores each k on


def neighbour_majority_accuracy(features, noisy, val_labels, ks, n_class, limit, **search):
    """For each k: how often the majority noisy label of a clean validation image's k training
    neighbours is its true label, on up to `limit` validation images (one search for every k)."""
    queries = features['val'][:limit]
    _, idx = knn(queries, features['train'], max(ks), **search)
    truth = torch.as_tensor(val_labels[:len(queries)]).to(idx.device)
    return {k: float((majority_vote(noisy[idx[:, :k]], n_class) == truth).float().mean()) for k in sorted(ks)}


def check_retrieval(features, noisy, val_labels, k, n_class, noisy_accuracy, log, limit=1000, measured=None,
                    chosen=False, noisy_val=False, **search):
    """The f_p check: the neighbour-majority accuracy at k (`measured`: already taken on the first `limit`
    validation images, by --k_choices; `chosen`: k came from --k_choices; `noisy_val`: the validation
    labels are noisy ones, so the figure is agreement with them). Below the noisy labels' own
    accuracy, f_p's neighbourhoods are too impure for retrieval to help, and the run will end below the
    noisy labels: say so."""
    accuracy = measured if measured is not None else \
        neighbour_majority_accuracy(features, noisy, val_labels, [k], n_class, limit, **search)[k]
    n = min(limit, len(val_labels))
    found = (f'agrees with the label of {100 * accuracy:.1f}% of {n} validation images (held out with their noisy '
             f'labels: no --val)') if noisy_val else f'is right for {100 * accuracy:.1f}% of {n} clean validation images'
    line = f'f_p check: the majority noisy label of {k} training neighbours {found}'
    if noisy_accuracy is not None:
        line += f' (the noisy training labels: {100 * noisy_accuracy:.1f}% right)'
    log(line)
    if noisy_accuracy is not None and accuracy < noisy_accuracy:
        log('warning: f_p neighbourhoods are less pure than the noisy labels themselves, so label retrieval '
            'is unlikely to help; use a stronger --fp_encoder' +
            ('' if chosen else ', or let --k_choices 1 10 50 --k_select model choose k by validation accuracy '
                                 '(k 1: the least retrieval)'))
    return accuracy


def select_k(features, noisy, val_labels, choices, n_class, log, limit=K_SELECTION_IMAGES, choosing=True,
             **search):
    """--k_choices: the k with the best neighbour-majority accuracy on the clean validation images
    (ties to the smaller k). Model selection on the validation split, as every other choice; the test
    split is never read. `choosing` False (--k_select model): the scores are only logged."""
    scores = neighbour_majority_accuracy(features, noisy, val_labels, choices, n_class, limit, **search)
    best = max(scores, key=lambda k: (scores[k], -k))
    log('--k_choices: validation neighbour-majority accuracy ' +
        ', '.join(f'k {k} {100 * a:.1f}%' for k, a in scores.items()) +
        (f'; k = {best}' if choosing else '; k is chosen by training trials (--k_select model)'))
    return best, scores


def warn_noisy_choice(splits, log):
    """--k_choices scored on validation labels that are noisy (own images without --val): say what that
    choice is worth. Under noise that depends on the class or the image, a model (or a vote) that
    reproduces the noise scores well on such labels."""
    if splits.noisy_val:
        log('warning: k is chosen among --k_choices on validation images held out with their noisy labels (no '
            '--val given): where the noise depends on the class or the image, that favours the k whose '
            'predictions reproduce it; pass --val with clean labels for a choice scored against clean labels')


def check_counts(cfg, n_train):
    """--k (or each --k_choices) below the training set's size, --per_class not negative."""
    flag = '--k_choices' if cfg.k_choices else '--k'
    for k in cfg.k_choices or [cfg.k]:
        if k >= n_train:
            raise SetupError(f'{flag} {k} is not smaller than the training set ({n_train} samples); lower {flag}')
    if cfg.per_class < 0:
        raise SetupError(f'--per_class {cfg.per_class}: give a count of samples per class, or 0 for every sample')


def data_info(splits, noise_source, n_train, encoder, image_shape, started):
    """What the run records about its data and f_p (config.json, and every checkpoint: --predict reads it)."""
    return {'noise_source': noise_source, 'n_train': n_train, 'n_val': len(splits.val_labels),
            'n_test': len(splits.test_labels), 'fp_dim': encoder.dim, 'fp_weights': encoder.fingerprint,
            'dataset': splits.name, 'n_class': splits.n_class, 'image_shape': list(image_shape),
            'mean': list(splits.mean), 'std': list(splits.std), 'class_names': list(splits.class_names or []),
            'prepare_s': round(time.time() - started, 2),
            **({} if splits.in_memory else {'upright': splits.upright, 'rounding': splits.rounding})}


@dataclass
class CheckedInputs:
    """What check_inputs read and checked: the training labels, their source, the clean ones where
    known, the frozen encoders and the image shape they read."""
    labels: np.ndarray
    noise_source: str
    clean: object
    encoders: list
    image_shape: tuple
    started: float


def check_inputs(cfg, splits, device, log=print):
    """Everything that can be refused before a run claims its folder, in seconds: every label, the noise
    (name or file), --k against the training set, the recipe, the encoders (a features file's rows
    against the splits)."""
    started = time.time()
    check_split_labels(splits)
    labels, noise_source, clean = training_labels(cfg, splits)
    check_counts(cfg, len(labels))
    image_shape = tuple(splits.train_images.shape[1:]) if splits.in_memory else (3, cfg.image_size, cfg.image_size)
    encoders = build_encoders(cfg, splits.name, image_shape, splits.mean, splits.std, device)
    fetch_tuned_backbone(cfg)
    if hasattr(encoders[0], 'split_rows'):  # a features file: one row per image of every split
        for split in SPLITS:
            encoders[0].split_rows(split, splits.size(split))
    if not splits.in_memory:
        check_input_size(encoders[0], cfg.image_size, log)
    return CheckedInputs(labels, noise_source, clean, encoders, image_shape, started)


def fetch_tuned_backbone(cfg):
    """The ImageNet weights a fresh run's tuned backbone starts from, fetched with the other inputs: where
    several ranks check them, rank 0 first (engine's main_first), not every rank at once when its trainer
    is made; a failed download is refused before the run folder is claimed."""
    fresh = not cfg.resume  # a resumed run's weights are its checkpoint's
    if fresh and tunes_backbone(cfg.diff_encoder, cfg.diff_backbone) and cfg.diff_encoder_weights == 'imagenet':
        torchvision_weights(cached_backbone_arch(cfg.diff_encoder))


def prepare(cfg, splits, device, log=print, checked=None):
    """Noisy labels → f_p features (cached) → neighbours (cached) → candidate labels; `checked`: what
    check_inputs returned, where the caller checked the inputs first."""
    checked = checked or check_inputs(cfg, splits, device, log)
    labels, noise_source, clean, encoders = checked.labels, checked.noise_source, checked.clean, checked.encoders
    started, image_shape, encoder = checked.started, checked.image_shape, checked.encoders[0]
    in_memory = splits.in_memory
    diff_input = diff_encoder_input(cfg.diff_encoder, cfg.diff_backbone)
    augmented_fp = cfg.fp_train_view == 'augmented'
    features, *backbone_features = split_features(cfg, splits, encoders, log)
    noisy = torch.from_numpy(labels).to(device)
    # one table serves every k the run may use (--k_choices: the largest; a search for k is the first k
    # columns of any larger one)
    searched = max(cfg.k_choices or [cfg.k])
    neighbours = cached_neighbours(features['train'], neighbours_to_search(searched, cfg.candidates), cfg.cache_dir,
                                   log=log, **search_options(cfg))
    needs_pixels = diff_input == 'image' or augmented_fp
    # in memory: the pixels resident on the device; files: decoded batch by batch (the paths are kept)
    images = {s: splits.images(s).to(device) for s in SPLITS} if needs_pixels and in_memory else {}
    files = {s: splits.paths(s) for s in SPLITS} if needs_pixels and not in_memory else None
    info = data_info(splits, noise_source, len(labels), encoder, image_shape, started)
    if cfg.per_class:  # the balanced draw's per-class count, lowered to the smallest class where needed
        info['per_class_drawn'] = per_class_count(noisy, cfg.per_class)
    if clean is not None:
        info['noisy_label_accuracy'] = 1.0 - noise_rate(labels, clean)
    data = Prepared(splits.n_class, noisy, features, None, images, splits.mean, splits.std,
                    encoder if augmented_fp else None, info, backbone_features[0] if backbone_features else None,
                    files, None if in_memory else {s: decoding_of(cfg, splits, s) for s in SPLITS}, neighbours)
    return data  # its k (and so its candidates) is settled by utils/runs/k_trials.settle_k


def use_k(cfg, data, splits, log=print):
    """The data with the candidates of the run's k (cfg.k), and the retrieval facts the run records,
    measured at that k."""
    k = cfg.k
    data = replace(data.with_k(k, cfg.candidates, cfg.candidate_weights), neighbours=None)  # the table is done
    info, clean = data.info, clean_train_labels(splits)
    if clean is not None:
        info['retrieval_majority_accuracy'] = float((data.candidates.majority().cpu().numpy() == clean).mean())
    scores = info.get('k_selection') or {}
    measured = {'limit': K_SELECTION_IMAGES, 'measured': scores[str(k)]} if str(k) in scores else {}
    info['val_neighbour_majority_accuracy'] = check_retrieval(data.features, data.noisy_labels, splits.val_labels, k,
                                                              data.n_class, info.get('noisy_label_accuracy'), log,
                                                              **measured, chosen=bool(cfg.k_choices),
                                                              noisy_val=splits.noisy_val,
                                                              **search_options(cfg))
    return data


def cached_neighbours(features, k, cache_dir, log=print, **search):
    """utils/retrieval.neighbour_table, cached; `search` (search_options) enters the key like k."""
    valid = lambda idx: idx.dtype == torch.int64 and idx.shape == (features.shape[0], k) and int(idx.min()) >= 0 \
        and int(idx.max()) < features.shape[0]  # noqa: E731
    return cached(neighbour_table, dict(features=features, k=k, **search), cache_dir, f'neighbours_k{k}', valid,
                  log).to(features.device)
