"""Apply a run's best checkpoint to a dataset split or a folder of images (predict.py)."""
import csv
import io
import os

import numpy as np
import torch
from PIL import Image

from model_diffusion import Diffusion
from utils.averaging import evaluated_weights
from utils.data.image_files import IMAGE_SUFFIXES, Decoding, check_images, image_files_in, open_image
from utils.diff_encoders import build_model, diff_encoder_input
from utils.encoders.base import encode_all
from utils.encoders.cache import encode_files
from utils.errors import ResumeRefused, SetupError, quoted_error
from utils.evaluate import SplitInputs, predict_labels
from utils.prepare import build_encoders, decoded_as_recorded, decoding_of, features_of_split, recorded_decoding
from utils.runs.folders import RunClaim, check_may_write_over, check_same_script, load_run, prediction_config
from utils.runs.outputs import PREDICTION_FILES, save_npy
from utils.runtime.devices import resolve_device
from utils.storage.fingerprints import paths_fingerprint, tensor_fingerprint, within_common_folder
from utils.storage.loading import load_json
from utils.storage.saving import atomic_write, remove_files, save_json


# The file datasets and the filter each one's reader resizes its images with (FileSplits.resample, set by
# the readers in utils/data/; tests/test_image_inputs.py pins this table to them): a folder is decoded
# as the run decoded its evaluation splits, without reading the dataset.
FILE_DATASET_RESAMPLE = {'clothing1m': 'bilinear', 'food101n': 'bicubic', 'webvision': 'bicubic',
                         'imagefolder': 'bilinear'}


def folder_decoding(saved, info):
    """How a run of a file dataset decoded its evaluation images (Decoding: the shorter side resized, the
    centre cropped, at the run's --image_size, turned by their EXIF tag and rounded as the run recorded:
    decoded_as_recorded); None for an in-memory dataset (CIFAR, digits)."""
    resample = FILE_DATASET_RESAMPLE.get(info['dataset'])
    if resample is None:
        return None
    return Decoding(saved.image_size, resample, **recorded_decoding(info))


def image_folder_paths(folder):
    """Every image under `folder`, sorted; refused where it is no folder, holds none or one that cannot
    be read (before any is encoded, as a dataset's split is)."""
    if not os.path.isdir(folder):
        raise SetupError(f'--folder {folder} is not a folder')
    paths = image_files_in(folder)
    if not paths:
        raise SetupError(f'--folder {folder} holds no images ({", ".join(IMAGE_SUFFIXES)})')
    check_images(paths, f'--folder {folder}', listed=False)
    return paths


def load_image_folder(paths, image_shape):
    """The images as uint8 tensors resized to an in-memory dataset's image shape (its images have no
    decoding of their own to repeat), turned upright as a user's photos are shown."""
    _, h, w = image_shape
    arrays = [np.asarray(open_image(p, upright=True).resize((w, h), Image.BICUBIC)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def write_predictions_csv(path, paths, predicted, class_names=None):
    """path,label[,class] per image: the class index, and its name where the run recorded names. The
    paths absolute, as train_label_ranking.csv writes them (a --folder given relative would otherwise
    name files only from the folder the command ran in); lines end as that file's do."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(['path', 'label'] + (['class'] if class_names else []))
    for p, label in zip(paths, predicted.tolist()):
        writer.writerow([os.path.abspath(p), label] + ([class_names[label]] if class_names else []))
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def save_predictions(prefix, predicted, probs, about, paths=None, class_names=None):
    """PREFIX_labels.npy, PREFIX_probs.npy where probabilities were sampled, PREFIX.csv where the images are
    files (their `paths`), and PREFIX.json: which images (`about`: the folder, or the split and its images'
    identity; check_same_folder, check_same_images). Returns the paths written. Within a claim of the run
    folder, an earlier prediction's file this one does not write again (its probabilities, say) is removed:
    nothing stale beside the new labels."""
    remove_files(os.path.dirname(prefix), [os.path.basename(prefix) + suffix for suffix in PREDICTION_FILES])
    save_npy(predicted, prefix + '_labels.npy')
    written = [prefix + '_labels.npy']
    if probs is not None:
        save_npy(probs.cpu().numpy().astype(np.float32), prefix + '_probs.npy')
        written.append(prefix + '_probs.npy')
    if paths is not None:
        write_predictions_csv(prefix + '.csv', paths, predicted, class_names)
        written.append(prefix + '.csv')
    save_json(about, prefix + '.json')
    return written + [prefix + '.json']


def split_identity(splits, split):
    """Which images `split` holds, in order: a hash of their pixels (in memory) or of their files' paths
    within the folder they share (the dataset flags given to predict.py may name other files, or carve another
    held-out part; the same files moved, or named by another path, are the same images)."""
    if splits.in_memory:
        return tensor_fingerprint(splits.images(split))
    return paths_fingerprint(within_common_folder([os.path.abspath(p) for p in splits.paths(split)]))


def check_same_images(prefix, about):
    """Refuse, before any image is encoded, to label a split where the run folder holds the labels predicted
    for another set of that split's images (PREFIX.json says which): they would be replaced unnoticed. Labels
    written before PREFIX.json was: as before."""
    earlier = load_json(prefix + '.json')
    if earlier.get('identity') in (None, about['identity']) or not os.path.exists(prefix + '_labels.npy'):
        return
    name = os.path.basename(prefix)
    raise SetupError(f'{os.path.dirname(prefix)} holds the labels predicted for another {about["split"]} split '
                     f'({earlier.get("images", "?")} images), and labelling this one ({about["images"]} images: other '
                     f'files or an order of its own, from the dataset flags given) would replace them: move {name}.* '
                     f'out of the run folder to keep them, then run again')


def check_same_folder(prefix, folder):
    """Refuse, before any work, to label `folder` where the run folder holds the labels of another folder
    (PREFIX.json says which): they would be replaced, and a second folder's labels are no reason to lose
    the first's. The same folder again is labelled anew. Labels written before PREFIX.json was: as before."""
    earlier = load_json(prefix + '.json').get('folder')
    if earlier and earlier != os.path.abspath(folder) and os.path.exists(prefix + '_labels.npy'):
        raise SetupError(f'{os.path.dirname(prefix)} holds the labels predicted for {earlier} '
                         f'({os.path.basename(prefix)}_labels.npy, .csv), and labelling --folder {folder} would replace '
                         f'them: move {os.path.basename(prefix)}.* out of the run folder to keep them, then run again')


def check_fits_run(splits, split, info, run_dir):
    """The split read for prediction is of the dataset the run was trained on: its name, classes and
    (images in memory) image size; else refused, before a tensor op fails on it."""
    problems = []
    if splits.name != info['dataset']:
        problems.append(f'the run was trained on {info["dataset"]}, this command reads {splits.name}')
    if splits.n_class != info['n_class']:
        problems.append(f'the run has {info["n_class"]} classes, the data {splits.n_class}')
    elif info.get('class_names') and list(splits.class_names or []) != list(info['class_names']):
        theirs = [f'{a!r} here, {b!r} in the run' for a, b in zip(splits.class_names or [], info['class_names'])
                  if a != b][:2]
        problems.append(f'the classes differ ({"; ".join(theirs) or "other names"})')
    if splits.in_memory and list(splits.images(split).shape[1:]) != list(info['image_shape']):
        problems.append(f'its images are {tuple(splits.images(split).shape[1:])}, the run\'s '
                        f'{tuple(info["image_shape"])}')
    if problems:
        raise SetupError(f'predict.py {run_dir}: {"; ".join(problems)}; predict with data of the dataset the run was '
                         f'trained on')


def predict(cfg, load_splits, run_dir, split='test', folder=None):
    """Label `split` of the run's dataset (read by `load_splits(config)`) or every image under `folder`
    with RUN_DIR's best checkpoint, as the run was trained; `cfg`: this command's flags (where the data
    lies, how to compute, --n_samples). Writes RUN_DIR/predict_<split|folder>_*; returns what it did."""
    ckpt = load_run(run_dir, 'best.pt')
    check_same_script(cfg, ckpt['config'], run_dir, 'predict.py')
    saved = prediction_config(cfg, ckpt, run_dir, folder)
    prefix = os.path.join(run_dir, f'predict_{"folder" if folder else split}')
    # before any work: no file there that no run wrote, no CSV the user edited (utils/runs/folders.py)
    check_may_write_over(run_dir, [os.path.relpath(prefix + suffix, run_dir) for suffix in PREDICTION_FILES],
                         'predict.py')
    about = {}
    if folder:
        check_same_folder(prefix, folder)
        about.update(folder=os.path.abspath(folder))

    def same_images(name, splits):  # a split's images are known once the dataset is read
        about.update(split=name, images=splits.size(name), identity=split_identity(splits, name))
        check_same_images(prefix, about)
    # the folder claimed before any work (a run training there refuses it now, not after the prediction);
    # the claim records the files written
    claim = RunClaim(run_dir, fresh=False, other='run folder', resume_flag='the run folder')
    try:
        name, predicted, probs, paths, labels = label_images(cfg, load_splits, run_dir, ckpt, saved, split, folder,
                                                             before_encoding=same_images)
        if folder:
            about['images'] = len(paths)
        written = save_predictions(prefix, predicted, probs, about, paths, ckpt['data_info'].get('class_names'))
    finally:
        claim.release()
    result = {'split': name, 'n': len(predicted), 'epoch': ckpt['epoch'], 'written': written,
              'run_finished': os.path.isfile(os.path.join(run_dir, 'summary.json'))}
    if labels is not None:
        result['accuracy'] = float(np.mean(predicted == labels.numpy()))
    print(prediction_line(result))
    return result


def fitted_model(saved, info, ckpt, run_dir, device):
    """The run's networks with the weights it evaluates with, or a refusal where they do not fit."""
    model = build_model(saved, info['n_class'], info['fp_dim'], tuple(info['image_shape'])).to(device)
    try:
        model.load_state_dict(evaluated_weights(ckpt))
    except RuntimeError as exc:  # a weight missing, unexpected or of another shape
        raise ResumeRefused(f'{os.path.join(run_dir, "best.pt")} does not fit the networks its configuration builds '
                            f'({quoted_error(exc)}); it is damaged or was edited: predict with another run') \
            from None
    return model


def check_same_fp(encoder, saved, info, run_dir):
    """The f_p encoder loaded now has the weights the run was trained with (the fingerprint its data_info
    recorded; a resume checks the same). A file replaced since (a pre-training's --resume exports over its
    encoder file; a features file rewritten) would give the denoiser other features than it learned
    from, and labels no better than chance with no error."""
    then = info.get('fp_weights')
    if then is not None and encoder.fingerprint != then:
        where = f' --fp_checkpoint {saved.fp_checkpoint}' if saved.fp_checkpoint else ''
        now = encoder.fingerprint or 'none'
        raise SetupError(f'predict.py {run_dir}: the f_p encoder (--fp_encoder {saved.fp_encoder}{where}) is not '
                         f'the one the run was trained with (weights {now} now, {then} then); put the run\'s encoder '
                         f'back there, or train a run with this one')


def label_images(cfg, load_splits, run_dir, ckpt, saved, split, folder, sample_eta=1.0, before_encoding=None):
    """The checkpoint's labels of the split or folder: (name, labels, probabilities or None, the image files'
    paths or None (images in memory), the split's clean labels or None). `sample_eta`: utils/evaluate.
    predict_labels'. `before_encoding(name, splits)` is called once a split is read, before any work."""
    info = ckpt['data_info']
    device = resolve_device(cfg.device)
    encoders = build_encoders(saved, info['dataset'], info['image_shape'], tuple(info['mean']), tuple(info['std']),
                              device)
    check_same_fp(encoders[0], saved, info, run_dir)
    diff_input = diff_encoder_input(saved.diff_encoder, saved.diff_backbone)
    model = fitted_model(saved, info, ckpt, run_dir, device)  # before any image is encoded
    images, files, decoding, paths = None, None, None, None
    if folder:
        paths, labels, name = image_folder_paths(folder), None, 'folder'
        decoding = folder_decoding(saved, info)
        if decoding is None:
            images = load_image_folder(paths, info['image_shape'])
            features = [encode_all(e, images, saved.encode_batch_size) for e in encoders]
        else:  # as features_of_split encodes a file split's centre crops, and streamed as its pixels are
            files, decoding = {name: paths}, {name: decoding}
            features = encode_files(encoders, paths, saved.encode_batch_size, saved.num_workers, decoding[name],
                                    'features folder')
    else:
        splits, name = decoded_as_recorded(load_splits(saved), info), split
        check_fits_run(splits, name, info, run_dir)
        if before_encoding is not None:
            before_encoding(name, splits)
        labels = splits.labels(name)
        features = features_of_split(saved, splits, name, encoders)
        if splits.in_memory:
            images = splits.images(name)
        else:
            paths = splits.paths(name)
            files, decoding = {name: paths}, {name: decoding_of(saved, splits, name)}
    model.bf16_embed = device.type == 'cuda' and saved.precision == 'bf16'
    pixels = {name: images.to(device)} if diff_input == 'image' and images is not None else {}
    inputs = SplitInputs(diff_input, {name: features[0]}, pixels, {name: features[1]} if diff_input == 'cached' else None,
                         tuple(info['mean']), tuple(info['std']), files, decoding, saved.num_workers)
    diffusion = Diffusion(saved.n_timesteps, saved.beta_schedule).to(device)
    # normalised as the run's evaluations were: with batch statistics, in one part per device it trained on
    predicted, probs = predict_labels(model, diffusion, inputs.batches(name, saved.eval_batch_size), saved.ddim_n_step,
                                      saved.eval_bn, saved.n_samples, saved.seed, shares=ckpt.get('eval_bn_shares', 1),
                                      sample_eta=sample_eta)
    return name, predicted.cpu().numpy(), probs, paths, labels


def prediction_line(result):
    """One readable line: what was labelled, how well where labels are known, and where it went."""
    what = 'the images of the folder' if result['split'] == 'folder' else f"the {result['split']} split"
    score = f", accuracy {100 * result['accuracy']:.2f}%" if 'accuracy' in result else ''
    so_far = '' if result.get('run_finished', True) else ' so far (the run is unfinished; a --resume that trains ' \
        'on removes these predictions)'
    return (f"predicted {what}: {result['n']} images with the epoch-{result['epoch']} best checkpoint{so_far}{score}; "
            f"wrote {', '.join(result['written'])}")
