"""Small generated image trees in the official layouts of Food-101N/Food-101, Clothing1M and
WebVision/ILSVRC2012, and a researcher's own layout: what the tests and the speed benchmarks run on.

    python -m benchmarks.layouts FOLDER    # a small noisy dataset of your own to try
"""
import os
import shutil
import sys

import numpy as np
from PIL import Image


def jpeg(path, label, rng, size=40):
    """A JPEG whose colour depends on its class, with noise: learnable, but not trivially."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    base = np.array([(label * 67) % 256, (label * 131) % 256, (label * 29) % 256], dtype=np.float64)
    pixels = np.clip(base + rng.normal(0, 40, (size, size + 8, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def food101n(root, classes=('apple_pie', 'bibimbap', 'churros'), per_class=24, seed=0):
    rng = np.random.default_rng(seed)
    n_root, f_root = os.path.join(root, 'Food-101N_release'), os.path.join(root, 'food-101')
    keys, verified = [], []
    for c, name in enumerate(classes):
        for i in range(per_class):
            # a quarter of each folder shows another class: the noisy labels
            shown = (c + 1) % len(classes) if i % 4 == 3 else c
            key = f'{name}/{name}_{i:03d}.jpg'
            jpeg(os.path.join(n_root, 'images', key), shown, rng)
            keys.append(key)
            if i < 4:
                verified.append(f'{key}\t{int(shown == c)}')
        for i in range(8):
            jpeg(os.path.join(f_root, 'images', f'{name}/{1000 + i}.jpg'), c, rng)
    write(os.path.join(n_root, 'meta', 'classes.txt'), ['class_name', *classes])
    write(os.path.join(n_root, 'meta', 'imagelist.tsv'), ['class_name/key', *keys])
    write(os.path.join(n_root, 'meta', 'verified_val.tsv'), ['class_name/key\tverification_label', *verified])
    write(os.path.join(n_root, 'meta', 'verified_train.tsv'), ['class_name/key\tverification_label'])
    write(os.path.join(f_root, 'meta', 'classes.txt'), list(classes))
    write(os.path.join(f_root, 'meta', 'test.txt'), [f'{name}/{1000 + i}' for name in classes for i in range(8)])
    return n_root, f_root


def clothing1m(root, n_class=4, n_train=96, n_val=16, n_test=16, size=40, select_every=6, seed=0):
    """Every fifth training label flipped to the next class; the cc_select subset leaves out every
    `select_every`-th training image (none when 0)."""
    rng = np.random.default_rng(seed)
    noisy, clean, lists = [], [], {'noisy_train': [], 'clean_val': [], 'clean_test': [], 'clean_train': []}
    for i in range(n_train + n_val + n_test):
        label = i % n_class
        key = f'images/{i % 3}/{i % 7:02d}/{i:05d}.jpg'
        jpeg(os.path.join(root, key), label, rng, size)
        if i < n_train:
            noisy.append(f'{key} {(label + 1) % n_class if i % 5 == 0 else label}')
            lists['noisy_train'].append(key)
        else:
            clean.append(f'{key} {label}')
            lists['clean_val' if i < n_train + n_val else 'clean_test'].append(key)
    write(os.path.join(root, 'noisy_label_kv.txt'), noisy)
    write(os.path.join(root, 'clean_label_kv.txt'), clean)
    for name, keys in lists.items():
        write(os.path.join(root, f'{name}_key_list.txt'), keys or [''])
    write(os.path.join(root, 'category_names_eng.txt'), [f'category {c}' for c in range(n_class)])
    # the authors' selected subset, as in their annotations/ folder: keys, and labels line by line (here
    # the true ones, so they differ from noisy_label_kv.txt where that label was flipped)
    selected = [i for i in range(n_train) if not select_every or i % select_every != select_every - 1]
    write(os.path.join(root, 'annotations', 'cc_select_img.txt'), [lists['noisy_train'][i] for i in selected])
    write(os.path.join(root, 'annotations', 'cc_select_label.txt'), [str(i % n_class) for i in selected])
    return root


ILSVRC_LABEL_FORMS = ('authors', 'val.txt', 'wnid', 'kaggle', 'devkit')


def webvision(root, imagenet_root, n_class=3, extra_class=True, per_class=20, seed=0, flat=None):
    """WebVision's info/ lists and images, and ILSVRC2012 validation images of the first n_class classes
    (5 each) in WordNet-id folders, or with `flat` (one of ILSVRC_LABEL_FORMS) in one official flat
    folder, numbered among images of a class beyond them, with a label file in that form beside it."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    labels = range(n_class + 1) if extra_class else range(n_class)   # a class beyond the first n_class
    for c in labels:
        for i in range(per_class):
            rel = f'google/q{c + 1:04d}/{i:04d}.jpg'
            jpeg(os.path.join(root, rel), c, rng)
            train.append(f'{rel} {c}')
        for i in range(5):
            name = f'WebVision_val_{c}_{i}.jpg'
            jpeg(os.path.join(root, 'val_images_256', name), c, rng)
            val.append(f'{name} {c}')
    wnids = [f'n{1440764 + c:08d}' for c in range(n_class + 1)]
    if flat:
        flat_ilsvrc(imagenet_root, wnids, n_class, flat, rng)
    else:
        for c in range(n_class):
            for i in range(5):
                jpeg(os.path.join(imagenet_root, wnids[c], f'ILSVRC2012_val_{c:03d}{i:02d}.JPEG'), c, rng)
    write(os.path.join(root, 'info', 'train_filelist_google.txt'), train)
    write(os.path.join(root, 'info', 'val_filelist.txt'), val)
    write(os.path.join(root, 'info', 'synsets.txt'), [f'{w} class {i}' for i, w in enumerate(wnids)])
    return root, imagenet_root


def flat_ilsvrc(folder, wnids, n_class, form, rng, per_class=5):
    """Images ILSVRC2012_val_00000001.JPEG ... in one folder, classes interleaved (the last is a class
    beyond the first n_class), labelled in `form`: the authors' '<file> <index> <wnid>', Caffe's val.txt
    '<file> <index>', '<file> <wnid>', Kaggle's LOC_val_solution.csv, or the devkit's ground truth
    (ILSVRC2012_IDs in reverse order of the WordNet ids) with its meta.mat."""
    classes = [c for _ in range(per_class) for c in range(n_class + 1)]
    names = [f'ILSVRC2012_val_{i:08d}.JPEG' for i in range(1, len(classes) + 1)]
    for name, c in zip(names, classes):
        jpeg(os.path.join(folder, name), c, rng)
    devkit_id = {w: len(wnids) - i for i, w in enumerate(wnids)}  # not the class index: meta.mat is needed
    if form == 'kaggle':
        write(os.path.join(folder, 'LOC_val_solution.csv'), ['ImageId,PredictionString'] + [
            f'{n[:-5]},{wnids[c]} 1 2 30 40 {wnids[c]} 5 6 20 30' for n, c in zip(names, classes)])
    elif form == 'devkit':
        data = os.path.join(folder, 'ILSVRC2012_devkit_t12', 'data')
        write(os.path.join(data, 'ILSVRC2012_validation_ground_truth.txt'), [str(devkit_id[wnids[c]]) for c in classes])
        from scipy.io import savemat
        table = np.zeros(len(wnids), dtype=[('ILSVRC2012_ID', 'O'), ('WNID', 'O')])
        for i, w in enumerate(wnids):
            table[i] = (devkit_id[w], w)
        savemat(os.path.join(data, 'meta.mat'), {'synsets': table.reshape(-1, 1)})
    else:
        line = {'authors': lambda n, c: f'{n} {c} {wnids[c]}', 'val.txt': lambda n, c: f'{n} {c}',
                'wnid': lambda n, c: f'{n} {wnids[c]}'}[form]
        name = {'authors': 'ILSVRC2012_val_label.txt', 'val.txt': 'val.txt', 'wnid': 'labels.txt'}[form]
        write(os.path.join(folder, name), [line(n, c) for n, c in zip(names, classes)])
    return names, classes


def own_data(root, classes=('cat', 'dog', 'fox', 'owl'), per_class=30, n_eval=6, every=5, seed=0):
    """A researcher's own data in both forms: labels.csv (path,label, paths relative to root) and
    train/<label>/ class folders hold the same training images, every `every`-th one labelled as the
    next class; val/<class>/ and test/<class>/ are clean. Returns the set of mislabelled image names."""
    rng = np.random.default_rng(seed)
    rows, corrupted = ['path,label'], set()
    for c, name in enumerate(classes):
        for i in range(per_class):
            label = classes[(c + 1) % len(classes)] if i % every == every - 1 else name
            image = f'{name}_{i:03d}.jpg'
            jpeg(os.path.join(root, 'images', image), c, rng)
            os.makedirs(os.path.join(root, 'train', label), exist_ok=True)
            shutil.copyfile(os.path.join(root, 'images', image), os.path.join(root, 'train', label, image))
            rows.append(f'images/{image},{label}')
            if label != name:
                corrupted.add(image)
        for split in ('val', 'test'):
            for i in range(n_eval):
                jpeg(os.path.join(root, split, name, f'{split}_{name}_{i}.jpg'), c, rng)
    write(os.path.join(root, 'labels.csv'), rows)
    return corrupted


if __name__ == '__main__':
    import argparse
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folder', help='where the small noisy dataset is written')
    folder = p.parse_args().folder
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        # its labels.csv, images/, train/, val/ and test/ would be written over whatever is there
        print(f'error: {folder} exists and is not an empty folder; name a new one', file=sys.stderr)
        raise SystemExit(2)
    print(f'{len(own_data(folder))} mislabelled training images written under {folder}')
