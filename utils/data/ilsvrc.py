"""The ILSVRC2012 validation set as published: one flat folder of ILSVRC2012_val_00000001.JPEG ...
and a label file, read directly (no sorting into class folders).

The label files in common use, each recognised by its content:
- `ILSVRC2012_val_label.txt` (the LRA-diffusion authors' file, published beside their code):
  `<file> <class index> <WordNet id>` lines;
- `val.txt` (Caffe's ilsvrc12 auxiliary files): `<file> <class index>` lines, the index counting the
  1000 classes in WordNet-id order, which is the order of WebVision's info/synsets.txt;
- `<file> <WordNet id>` lines;
- `LOC_val_solution.csv` (Kaggle's ImageNet localisation challenge): `ImageId,PredictionString`, the
  first token of the string the WordNet id;
- the devkit's `data/ILSVRC2012_validation_ground_truth.txt`: one ILSVRC2012_ID (1..1000) a line for
  image 1, 2, ...; the ids are the devkit's own numbering, mapped to WordNet ids by the devkit's
  `data/meta.mat` beside it (read with scipy.io.loadmat: a MATLAB file, no code in it is run).

Every form resolves to {file name: WordNet id}; WebVision's first n classes are the first n WordNet ids
of its info/synsets.txt.
"""
import csv
import os
import re

from utils.errors import DatasetMissing

# the names the label file goes by, looked for in the image folder and the folder above it
KNOWN_NAMES = ('ILSVRC2012_val_label.txt', 'val.txt', 'LOC_val_solution.csv',
               'ILSVRC2012_validation_ground_truth.txt',
               os.path.join('ILSVRC2012_devkit_t12', 'data', 'ILSVRC2012_validation_ground_truth.txt'))
IMAGE_FOLDER = 'ILSVRC2012_img_val'  # the authors' layout: ILSVRC2012/{ILSVRC2012_val_label.txt, ILSVRC2012_img_val/}
VAL_IMAGE = re.compile(r'^ILSVRC2012_val_(\d{8})\.jpe?g$', re.IGNORECASE)
WNID = re.compile(r'^n\d{8}$')


def val_images(folder):
    """{file name: path} of the ILSVRC2012 validation images directly in `folder`."""
    return {n: os.path.join(folder, n) for n in os.listdir(folder) if VAL_IMAGE.match(n)}


def flat_image_folder(root):
    """The folder holding the flat validation images: `root` itself or its ILSVRC2012_img_val/; None
    when neither holds any."""
    for folder in (root, os.path.join(root, IMAGE_FOLDER)):
        if os.path.isdir(folder) and val_images(folder):
            return folder
    return None


def find_label_file(image_folder, root):
    """The first label file of a known name beside the images, in the root, or one folder up."""
    for folder in dict.fromkeys((image_folder, root, os.path.dirname(os.path.abspath(root)))):
        for name in KNOWN_NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


def _rows(path):
    with open(path, newline='') as f:
        return [line.strip() for line in f if line.strip()]


def read_val_labels(path, synsets):
    """({file name: WordNet id}, the form's name) of a label file in any of the forms above; `synsets`
    are the 1000 WordNet ids in class-index order (WebVision's info/synsets.txt)."""
    lines = _rows(path)
    if not lines:
        raise DatasetMissing(f'{path} is empty; expected the ILSVRC2012 validation labels')
    if lines[0].replace(' ', '').lower().startswith('imageid,predictionstring'):
        return _kaggle_solution(path), 'LOC_val_solution.csv (ImageId, WordNet id)'
    if all(line.isdigit() for line in lines[:10]):
        return _devkit_ground_truth(path, lines), 'devkit ground truth with meta.mat'
    return _named_lines(path, lines, synsets)


def _named_lines(path, lines, synsets):
    labels, forms = {}, set()
    for number, line in enumerate(lines, 1):
        parts = line.split()
        name = os.path.basename(parts[0])
        wnid = next((p for p in parts[1:] if WNID.match(p)), None)
        if wnid is not None:
            forms.add('<file> [<index>] <WordNet id>')
        elif len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < len(synsets):
            wnid = synsets[int(parts[1])]
            forms.add('<file> <index> (val.txt; index in info/synsets.txt order)')
        else:
            raise DatasetMissing(f'{path}, line {number}: expected "<file> <class index>" (index below '
                                 f'{len(synsets)}), "<file> <WordNet id>" or "<file> <index> <WordNet id>", '
                                 f'found {line!r}')
        labels[name] = wnid
    return labels, ' and '.join(sorted(forms))


def _kaggle_solution(path):
    labels = {}
    with open(path, newline='') as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            image = (row.get('ImageId') or '').strip()
            tokens = (row.get('PredictionString') or '').split()
            if not image or not tokens or not WNID.match(tokens[0]):
                raise DatasetMissing(f'{path}, row {number}: expected "ILSVRC2012_val_NNNNNNNN,<WordNet id> ..."')
            labels[image + '.JPEG'] = tokens[0]
    return labels


def _devkit_ground_truth(path, lines):
    """Image i (1-based) is ILSVRC2012_val_0000000i.JPEG; its line is its ILSVRC2012_ID."""
    meta = os.path.join(os.path.dirname(path), 'meta.mat')
    if not os.path.isfile(meta):
        raise DatasetMissing(f'{path} holds devkit class ids (ILSVRC2012_ID); they name WordNet ids only through '
                             f'the devkit\'s meta.mat, not found at {meta}: copy the devkit\'s data/ folder whole, '
                             f'or pass another label file')
    wnid_of = devkit_wnids(meta)
    labels = {}
    for number, line in enumerate(lines, 1):
        if not line.isdigit() or int(line) not in wnid_of:
            raise DatasetMissing(f'{path}, line {number}: {line!r} is not an ILSVRC2012_ID of {meta}')
        labels[f'ILSVRC2012_val_{number:08d}.JPEG'] = wnid_of[int(line)]
    return labels


def devkit_wnids(meta):
    """{ILSVRC2012_ID: WordNet id} from the devkit's meta.mat."""
    from scipy.io import loadmat  # scikit-learn's dependency; reads MATLAB v5 files, runs nothing
    try:
        synsets = loadmat(meta, squeeze_me=True)['synsets']
        return {int(i): str(w) for i, w in zip(synsets['ILSVRC2012_ID'], synsets['WNID'])}
    except (ValueError, KeyError, TypeError, OSError, NotImplementedError) as exc:
        raise DatasetMissing(f'{meta} is not the devkit\'s meta.mat (a "synsets" table with ILSVRC2012_ID and WNID): '
                             f'{exc}') from exc


def flat_validation(image_folder, label_file, synsets, n_class):
    """(paths, labels) of the images of the first n_class WebVision classes in a flat folder, in file
    order, and the label file's form; an image the labels name but the folder lacks is refused."""
    wnid_labels, form = read_val_labels(label_file, synsets)
    index = {w: c for c, w in enumerate(synsets[:n_class])}
    present = val_images(image_folder)
    # the label file may spell the extension .JPEG or .jpeg; match names case-insensitively
    by_lower = {n.lower(): p for n, p in present.items()}
    kept = sorted((name, index[w]) for name, w in wnid_labels.items() if w in index)
    if not kept:
        raise DatasetMissing(f'{label_file} labels no image with one of the first {n_class} WebVision classes '
                             f'(info/synsets.txt); is it an ILSVRC2012 validation label file?')
    missing = [name for name, _ in kept if name.lower() not in by_lower]
    if missing:
        raise DatasetMissing(f'{image_folder} lacks {len(missing)} of the {len(kept)} validation images of the first '
                             f'{n_class} classes that {label_file} lists (first: {missing[0]}); copy the whole '
                             f'ILSVRC2012 validation folder')
    return [by_lower[name.lower()] for name, _ in kept], [c for _, c in kept], form
