"""Image files as they come: 16- and 32-bit grayscale, EXIF-rotated photos, linked class folders, folders
where a file belongs; and predict.py --folder decoding images as the run decoded its evaluation split."""
import os
import re
import shutil
import subprocess
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import train_ImageFolder
from benchmarks import layouts
from utils.data.clothing1m import read_clothing1m
from utils.data.food101n import read_food101n
from utils.data.image_files import ImageFiles, image_files_in, open_image, read_lines
from utils.data.own_images import read_image_folder
from utils.data.webvision import read_webvision
from utils.errors import DatasetMissing
from utils.predict import FILE_DATASET_RESAMPLE
from utils.runs.cli import run_cli

ORIENTATION = 0x0112  # the EXIF tag


def pixels(path, upright=False):
    return np.asarray(open_image(str(path), upright))


# ---- decoding ----------------------------------------------------------------------------------

def test_ordinary_images_decode_exactly_as_before(tmp_path):
    """The authors' pipeline (PIL open, convert('RGB')) for every 8-bit mode, EXIF without a turn included."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = rgb.getexif()
    exif[ORIENTATION] = 1  # upright: nothing to turn
    rgb.save(tmp_path / 'plain.jpg', quality=90)
    rgb.save(tmp_path / 'upright.jpg', quality=90, exif=exif.tobytes())
    rgb.convert('RGBA').save(tmp_path / 'rgba.png')
    rgb.convert('L').save(tmp_path / 'gray.png')
    rgb.convert('P').save(tmp_path / 'palette.png')
    rgb.save(tmp_path / 'plain.bmp')
    rgb.save(tmp_path / 'plain.webp')
    for path in sorted(tmp_path.iterdir()):
        with Image.open(path) as image:
            before = np.asarray(image.convert('RGB'))
        assert np.array_equal(pixels(path), before), path.name


def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    levels = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)  # 8-bit 0, 1, 128, 255
    Image.fromarray(levels).save(tmp_path / 'scan.png')
    assert Image.open(tmp_path / 'scan.png').mode == 'I;16'
    decoded = pixels(tmp_path / 'scan.png')
    assert decoded.shape == (4, 4, 3) and np.array_equal(decoded[0, :, 0], [0, 1, 128, 255])
    assert np.array_equal(decoded[..., 0], decoded[..., 2])  # gray
    # ImageFiles (the features, the training views) reads it the same way: not a white square
    crop = ImageFiles([str(tmp_path / 'scan.png')])[0]
    assert crop.min() < 100 < crop.max()


def test_32_bit_integer_images_are_scaled_by_their_bit_depth(tmp_path):
    """Pillow holds 16-bit data as mode 'I' too (some PNGs, TIFFs): values within 0..255 stay as they are,
    within 0..65535 scale as 16 bits, larger ones as 32-bit data (negative ones are black)."""
    sixteen = np.array([[0, 257, 65535]], dtype=np.int32)
    Image.fromarray(sixteen).save(tmp_path / 'sixteen.tif')
    wide = np.array([[-5, 0, 2 ** 30, 2 ** 31 - 1]], dtype=np.int32)
    Image.fromarray(wide).save(tmp_path / 'wide.tif')
    assert Image.open(tmp_path / 'wide.tif').mode == 'I'
    assert pixels(tmp_path / 'sixteen.tif')[0, :, 1].tolist() == [0, 1, 255]
    assert pixels(tmp_path / 'wide.tif')[0, :, 1].tolist() == [0, 0, 128, 255]
    eight = np.array([[0, 7, 128, 255]], dtype=np.int32)  # 8-bit values held as 32-bit: decoded as before
    Image.fromarray(eight).save(tmp_path / 'eight.tif')
    with Image.open(tmp_path / 'eight.tif') as image:
        assert np.array_equal(pixels(tmp_path / 'eight.tif'), np.asarray(image.convert('RGB')))
    assert pixels(tmp_path / 'eight.tif')[0, :, 0].tolist() == [0, 7, 128, 255]


def test_float_images_are_refused_naming_the_file_not_clipped(tmp_path):
    """Float pixels (0..1, or a sensor's range) have no range to scale by: convert('RGB') made them black
    and white. Refused up front and when decoded, naming the file and the fix."""
    from utils.data.image_files import check_images
    path = tmp_path / 'float.tif'
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32)).save(path)
    assert Image.open(path).mode == 'F'
    says = f'{path} (32-bit float pixels, which have no fixed range: save it as an 8- or 16-bit image)'
    with pytest.raises(DatasetMissing, match=re.escape(f'my list: 1 of 1 images cannot be read (first: {says})')):
        check_images([str(path)], 'my list')
    with pytest.raises(DatasetMissing, match=re.escape(f'cannot read image {says}')):
        open_image(str(path))


def turned_photo(path, orientation, white=15):
    """A 60×30 photo stored unturned, white in its `white` left columns, with the EXIF Orientation tag."""
    stored = np.zeros((30, 60, 3), dtype=np.uint8)
    stored[:, :white] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, quality=95, exif=exif.tobytes())


def test_an_exif_orientation_is_applied_to_a_users_photos_as_viewers_show_it(tmp_path):
    turned_photo(tmp_path / 'cw.jpg', 6)  # 6: shown turned 90° clockwise: the white quarter on top
    upright = pixels(tmp_path / 'cw.jpg', upright=True)
    assert upright.shape == (60, 30, 3)
    assert upright[:15].mean() > 200 and upright[20:].mean() < 50
    turned_photo(tmp_path / 'mirrored.jpg', 2)  # 2: mirrored left to right
    assert pixels(tmp_path / 'mirrored.jpg', upright=True)[:, 50:].mean() > 200
    # the authors' datasets are decoded as their loaders do, the tag unread
    assert pixels(tmp_path / 'cw.jpg').shape == (30, 60, 3)


def test_own_images_are_decoded_upright_and_cached_apart(tmp_path):
    from utils.prepare import decoding_of
    layouts.own_data(str(tmp_path / 'own'), per_class=3, n_eval=1)
    own = read_image_folder(str(tmp_path / 'own' / 'train'), str(tmp_path / 'own' / 'val'), log=lambda line: None)
    cfg = SimpleNamespace(image_size=32)
    assert decoding_of(cfg, own, 'train').key() == {'size': 32, 'upright': True, 'rounding': 'authors'}
    stored = np.zeros((30, 60, 3), dtype=np.uint8)
    stored[:, :30] = 255  # the left half white: the top half once turned (orientation 6)
    photo = Image.fromarray(stored)
    exif = photo.getexif()
    exif[ORIENTATION] = 6
    photo.save(tmp_path / 'cw.jpg', quality=95, exif=exif.tobytes())
    image = ImageFiles([str(tmp_path / 'cw.jpg')], decoding_of(cfg, own, 'train'))[0].float()  # the centre crop
    assert image[:, :8].mean() > 200 and image[:, 24:].mean() < 50  # white above, black below  # the white quarter on top, after the centre crop


def test_a_run_is_resumed_and_predicted_with_the_decoding_it_recorded(tmp_path, monkeypatch):
    """A run records whether its photos were turned by their EXIF tag; one made before the tag was read
    recorded nothing and is resumed and predicted unturned, as it was trained (turned, a turned
    training photo would change its f_p features and refuse the resume; evaluation photos would
    silently change)."""
    import dataclasses
    import json
    from utils.storage.loading import load_torch
    from utils.storage.saving import save_torch
    root = tmp_path / 'own'
    layouts.own_data(str(root), classes=('cat', 'dog'), per_class=6, n_eval=2)
    turned_photo(root / 'train' / 'cat' / 'cat_000.jpg', 6, white=30)
    turned_photo(root / 'test' / 'dog' / 'test_dog_0.jpg', 8, white=30)  # its centre crop half white
    flags = ['--train', str(root / 'train'), '--val', str(root / 'val'), '--test', str(root / 'test'),
             '--fp_encoder', 'raw', '--diff_encoder', 'fp_mlp', '--image_size', '8', '--k', '3', '--batch_size', '4',
             '--feature_dim', '16', '--warmup_epochs', '1', '--num_workers', '0', '--n_samples', '0', '--device',
             'cpu', '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache')]
    _, fresh = train_ImageFolder.main([*flags, '--nepoch', '1', '--run_name', 'fresh'])
    assert json.load(open(os.path.join(fresh, 'config.json')))['upright'] is True
    read = train_ImageFolder.load_splits  # a run as an earlier version made it: unturned, nothing recorded
    monkeypatch.setattr(train_ImageFolder, 'load_splits', lambda cfg: dataclasses.replace(read(cfg), upright=False))
    _, old = train_ImageFolder.main([*flags, '--nepoch', '1', '--run_name', 'old'])
    monkeypatch.setattr(train_ImageFolder, 'load_splits', read)
    for name in ('last.pt', 'best.pt'):
        ckpt = load_torch(os.path.join(old, name))
        del ckpt['data_info']['upright']
        save_torch(ckpt, os.path.join(old, name))
    summary, _ = train_ImageFolder.main(['--resume', old, '--nepoch', '2'])
    assert summary['epochs'] == 2
    for run_dir in (fresh, old):
        # samples the runs did not draw (--n_samples 0): probabilities compare the decoding closely
        predict.main([run_dir, '--split', 'test', '--device', 'cpu', '--n_samples', '10'])
        predict.main([run_dir, '--folder', str(root / 'test'), '--device', 'cpu', '--n_samples', '10'])
        probs = {name: np.load(os.path.join(run_dir, f'predict_{name}_probs.npy')) for name in ('test', 'folder')}
        np.testing.assert_allclose(probs['folder'], probs['test'], atol=1e-6)
    def decoded(run_dir):  # the test split's centre crops as predict.py decodes them for the run
        from utils.predict import folder_decoding
        from utils.runs.folders import load_run, resumed_config
        ckpt = load_run(run_dir, 'best.pt')
        saved = resumed_config(train_ImageFolder.config(['--resume', run_dir]), ckpt)
        paths = [str(root / 'test' / 'dog' / 'test_dog_0.jpg')]
        return ImageFiles(paths, folder_decoding(saved, ckpt['data_info']))[0]
    assert not np.array_equal(decoded(fresh).numpy(), decoded(old).numpy())


def raw_pixel_argv(root, tmp_path):
    """train_ImageFolder.py on the own-images layout at `root`, on raw pixels: seconds of work once checked."""
    return ['--train', str(root / 'train'), '--val', str(root / 'val'), '--fp_encoder', 'raw', '--diff_encoder',
            'fp_mlp', '--image_size', '8', '--device', 'cpu', '--out_dir', str(tmp_path / 'runs'), '--cache_dir',
            str(tmp_path / 'cache')]


def test_an_image_cut_short_is_refused_before_any_work(tmp_path, capsys):
    """A JPEG or PNG whose copy stopped part-way parses its header; it is found by its missing end marker
    and refused up front, not hours into extraction. Whole files with padding after the marker pass."""
    root = tmp_path / 'own'
    layouts.own_data(str(root), classes=('cat', 'dog'), per_class=6, n_eval=2)
    padded = root / 'train' / 'dog' / 'dog_001.jpg'
    padded.write_bytes(padded.read_bytes() + b'\0' * 16)
    Image.open(root / 'train' / 'cat' / 'cat_002.jpg').save(root / 'train' / 'cat' / 'whole.png')
    cut = root / 'train' / 'cat' / 'cat_001.jpg'
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) * 2 // 3])
    argv = raw_pixel_argv(root, tmp_path)
    with pytest.raises(SystemExit) as refused:
        run_cli(train_ImageFolder.main, argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count('\n') == 1
    assert err.startswith(f'error: {root / "train"}: 1 of 13 images cannot be read (first: {cut} (image file is '
                          f'truncated')
    assert err.endswith('move them out of the folder or replace the files\n')  # a folder is no list
    assert not (tmp_path / 'runs').exists() and not (tmp_path / 'cache').exists()
    cut.write_bytes(data)
    Image.open(root / 'train' / 'cat' / 'whole.png').save(root / 'train' / 'cat' / 'cut.png')
    png = (root / 'train' / 'cat' / 'cut.png').read_bytes()
    (root / 'train' / 'cat' / 'cut.png').write_bytes(png[:len(png) // 2])
    with pytest.raises(SystemExit):
        run_cli(train_ImageFolder.main, argv)
    assert f'(first: {root / "train" / "cat" / "cut.png"} (image file is truncated' in capsys.readouterr().err


def test_a_pipe_listed_as_an_image_is_refused_not_waited_on(tmp_path, capsys):
    """Opening a FIFO waits for a writer, in a worker thread a Ctrl-C does not reach: the run had hung for
    ever. It is refused up front as not a regular file, and so is decoding it."""
    root = tmp_path / 'own'
    layouts.own_data(str(root), classes=('cat', 'dog'), per_class=6, n_eval=2)
    pipe = root / 'train' / 'cat' / 'cat_009.jpg'
    os.mkfifo(pipe)
    argv = raw_pixel_argv(root, tmp_path)
    with pytest.raises(SystemExit) as refused:
        run_cli(train_ImageFolder.main, argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count('\n') == 1
    assert f'(first: {pipe} (not a regular file but a pipe, device or socket))' in err
    assert not (tmp_path / 'runs').exists()
    with pytest.raises(DatasetMissing, match='not a regular file'):
        open_image(str(pipe))
    folder = root / 'train' / 'cat' / 'cat_010.jpg'  # a folder named like an image: called one, it was a pipe
    folder.mkdir()
    with pytest.raises(DatasetMissing, match=r'cat_010\.jpg \(a folder, not an image file\)'):
        open_image(str(folder))


def test_a_multi_picture_jpeg_or_a_bmp_cut_short_is_found_up_front(tmp_path):
    """Pillow names a JPEG holding several pictures (phones, cameras) MPO; a BMP has no end marker."""
    from utils.data.image_files import check_images
    rng = np.random.default_rng(3)
    frames = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(2)]
    frames[0].save(tmp_path / 'multi.jpg', format='MPO', save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / 'plain.bmp')
    assert Image.open(tmp_path / 'multi.jpg').format == 'MPO'
    for name in ('multi.jpg', 'plain.bmp'):
        path = tmp_path / name
        check_images([str(path)], 'whole')
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 3])
        with pytest.raises(DatasetMissing, match=re.escape(f'cut: 1 of 1 images cannot be read (first: {path} (')):
            check_images([str(path)], 'cut')


def authors_resize(image, short):
    """The authors' resize() of WebVision and Food-101N images (their data utils): both sides scaled and
    rounded half up, bicubic."""
    w, h = image.size
    scale = float(short) / min(w, h)
    return image.resize((int(w * scale + 0.5), int(h * scale + 0.5)), Image.BICUBIC)


@pytest.mark.parametrize('h, w', [(256, 343), (480, 641), (37, 53), (500, 333), (301, 301), (375, 500)])
def test_centre_crops_are_the_authors_transforms_pixel_for_pixel(tmp_path, h, w):
    """Clothing1M and ILSVRC2012: torchvision's Resize(256) and CenterCrop(224); WebVision and Food-101N:
    their own bicubic resize(image, 256) and CenterCrop(224). The sizes include those the legacy rounding
    got one pixel off (a crop offset of x.5, a longer side of x.5 or more)."""
    from torchvision import transforms
    from utils.data.image_files import Decoding
    path = tmp_path / 'image.png'
    Image.fromarray(np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    image = Image.open(path).convert('RGB')
    theirs = {'bilinear': transforms.CenterCrop(224)(transforms.Resize(256)(image)),
              'bicubic': transforms.CenterCrop(224)(authors_resize(image, 256))}
    for resample, expected in theirs.items():
        ours = ImageFiles([str(path)], Decoding(224, resample))[0].permute(1, 2, 0).numpy()
        assert np.array_equal(ours, np.asarray(expected)), resample


@pytest.mark.parametrize('mode, suffix', [('P', 'png'), ('RGBA', 'png'), ('LA', 'png'), ('CMYK', 'jpg'), ('L', 'jpg')])
def test_images_of_other_modes_are_converted_where_the_authors_loaders_convert_them(tmp_path, mode, suffix):
    """Their WebVision and Food-101N loaders resize before convert('RGB') (a palette image resized
    nearest, a CMYK one in CMYK); their Clothing1M and ILSVRC2012 loaders convert first."""
    from torchvision import transforms
    from utils.data.image_files import Decoding
    path = tmp_path / f'image.{suffix}'
    pixels = np.random.default_rng(1).integers(0, 256, (300, 401, 4), dtype=np.uint8)  # shrunk to 256 × 342
    Image.fromarray(pixels, 'RGBA').convert(mode if 'A' in mode else 'RGB').convert(mode).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
        resized = authors_resize(image, 256)
        theirs = {'bicubic': transforms.CenterCrop(224)(resized.convert('RGB') if resized.mode != 'RGB' else resized),
                  'bilinear': transforms.CenterCrop(224)(transforms.Resize(256)(image.convert('RGB')))}
    for resample, expected in theirs.items():
        ours = ImageFiles([str(path)], Decoding(224, resample))[0].permute(1, 2, 0).numpy()
        assert np.array_equal(ours, np.asarray(expected)), resample


def test_webvision_test_images_are_resized_as_the_authors_ilsvrc2012_loader_and_old_runs_as_they_were(tmp_path):
    from utils.prepare import decoded_as_recorded, decoding_of
    webvision = read_webvision(*layouts.webvision(str(tmp_path / 'wv'), str(tmp_path / 'imagenet')), n_class=3)
    cfg = SimpleNamespace(image_size=224)
    now = {s: decoding_of(cfg, webvision, s) for s in ('train', 'val', 'test')}
    assert [(d.resample, d.rounding) for d in now.values()] == [('bicubic', 'authors')] * 2 + [('bilinear', 'authors')]
    recorded = decoded_as_recorded(webvision, {'upright': False, 'rounding': 'authors'})
    assert {s: decoding_of(cfg, recorded, s) for s in now} == now
    before = decoded_as_recorded(webvision, {})  # a run made before decodings were recorded
    assert [(decoding_of(cfg, before, s).resample, decoding_of(cfg, before, s).rounding) for s in now] == \
        [('bicubic', 'legacy')] * 3
    path = tmp_path / 'odd.png'  # one the legacy rounding cropped a pixel to the left
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 343, 3), dtype=np.uint8)).save(path)
    legacy, authors = (ImageFiles([str(path)], decoding_of(cfg, s, 'val'))[0] for s in (before, recorded))
    assert torch.equal(legacy[:, :, 1:], authors[:, :, :-1])


# ---- class folders reached twice through links ------------------------------------------------

def class_folders(root):
    rng = np.random.default_rng(1)
    for c, name in enumerate(('cat', 'dog')):
        for i in range(3):
            layouts.jpeg(os.path.join(root, name, f'{name}_{i}.jpg'), c, rng)
    return root


def test_a_linked_class_folder_is_refused_naming_both_paths(tmp_path):
    root = class_folders(str(tmp_path / 'train'))
    os.symlink(os.path.join(root, 'cat'), os.path.join(root, 'kitten'))
    with pytest.raises(DatasetMissing) as refused:
        read_image_folder(root, val_fraction=0.5)
    message = str(refused.value)
    assert os.path.join(root, 'cat', 'cat_0.jpg') in message and os.path.join(root, 'kitten', 'cat_0.jpg') in message
    assert 'through a link' in message and '\n' not in message


def test_a_linked_file_in_another_split_is_refused(tmp_path):
    root = class_folders(str(tmp_path / 'train'))
    os.makedirs(tmp_path / 'val' / 'dog')
    os.symlink(os.path.join(root, 'dog', 'dog_0.jpg'), tmp_path / 'val' / 'dog' / 'seen.jpg')
    with pytest.raises(DatasetMissing, match=r'dog_0\.jpg and .*seen\.jpg \(in train and val\) are one file'):
        read_image_folder(root, str(tmp_path / 'val'))


def test_a_hard_link_of_a_test_image_among_the_training_images_is_refused(tmp_path):
    """A hard link is the same file by another name (realpath does not see it): tested on, then trained on."""
    root = class_folders(str(tmp_path / 'train'))
    test = class_folders(str(tmp_path / 'test'))
    os.link(os.path.join(test, 'cat', 'cat_1.jpg'), os.path.join(root, 'dog', 'leak.jpg'))
    with pytest.raises(DatasetMissing, match=r'leak\.jpg and .*test/cat/cat_1\.jpg \(in train and test\) are one '
                                             r'file, .* reached through a link \(symbolic or hard\)'):
        read_image_folder(root, val_fraction=0.5, test=test, log=lambda line: None)


def test_links_to_distinct_files_are_taken(tmp_path):
    """A training root whose class folders are links (to folders elsewhere) is a valid layout."""
    elsewhere = class_folders(str(tmp_path / 'elsewhere'))
    os.makedirs(tmp_path / 'train')
    for name in ('cat', 'dog'):
        os.symlink(os.path.join(elsewhere, name), tmp_path / 'train' / name)
    splits = read_image_folder(str(tmp_path / 'train'), val_fraction=0.5, log=lambda line: None)
    assert splits.class_names == ['cat', 'dog'] and len(splits.train_paths) + len(splits.val_paths) == 6


def test_a_linked_subfolder_of_a_class_folder_is_read_and_an_unreadable_one_refused(tmp_path, monkeypatch):
    """The images of a class kept in a linked subfolder (a batch stored elsewhere) were left out without a word,
    as were those of a subfolder the user may not list. A link back up the tree is no loop."""
    root = class_folders(str(tmp_path / 'train'))
    more = class_folders(str(tmp_path / 'more'))
    os.symlink(os.path.join(more, 'cat'), os.path.join(root, 'cat', 'batch2'))
    os.symlink(root, os.path.join(root, 'dog', 'up'))  # a loop: its images are listed once, as dog's
    os.symlink(os.path.join(root, 'cat'), os.path.join(root, 'cat', 'again'))  # the class folder itself: once
    assert image_files_in(os.path.join(root, 'cat')) == sorted(
        [os.path.join(root, 'cat', f'cat_{i}.jpg') for i in range(3)] +
        [os.path.join(root, 'cat', 'batch2', f'cat_{i}.jpg') for i in range(3)])
    with pytest.raises(DatasetMissing, match=r'/dog/up/cat/.*cat_0\.jpg \(in train\) are one file'):  # dog's, cat's
        read_image_folder(root, val_fraction=0.5, log=lambda line: None)
    os.remove(os.path.join(root, 'dog', 'up'))
    splits = read_image_folder(root, val_fraction=0.5, log=lambda line: None)
    assert len(splits.train_paths) + len(splits.val_paths) == 9
    hidden = os.path.join(root, 'dog', 'hidden')
    os.makedirs(hidden)
    listing = os.scandir

    def denied(path='.'):  # as for a user without the right to list it (root may list anything)
        if os.fspath(path) == hidden:
            raise PermissionError(13, 'Permission denied', hidden)
        return listing(path)
    monkeypatch.setattr(os, 'scandir', denied)
    with pytest.raises(DatasetMissing, match=f'{hidden} cannot be listed \\(Permission denied\\); make it '
                                             f'readable, or move it out of {root}/dog'):
        read_image_folder(root, val_fraction=0.5, log=lambda line: None)


def bind_mount(source, target):
    """`source` mounted again at `target`, or a skip where this user may not mount (root only)."""
    done = subprocess.run(['mount', '--bind', source, target], capture_output=True) if shutil.which('mount') else None
    if done is None or done.returncode != 0:
        pytest.skip('bind mounts need root and the mount command')


def test_a_bind_mounted_folder_is_listed_once(tmp_path):
    """A bind mount is the same folder under another path, which realpath does not resolve: a class folder
    mounted inside itself listed its images twice (the reader then refused them as one file twice)."""
    root = class_folders(str(tmp_path / 'train'))
    os.makedirs(os.path.join(root, 'cat', 'mounted'))
    bind_mount(os.path.join(root, 'cat'), os.path.join(root, 'cat', 'mounted'))
    try:
        listed = image_files_in(os.path.join(root, 'cat'))
        assert listed == [os.path.join(root, 'cat', f'cat_{i}.jpg') for i in range(3)]
    finally:
        subprocess.run(['umount', os.path.join(root, 'cat', 'mounted')], check=True)


def test_a_class_name_with_a_line_break_is_refused(tmp_path):
    """classes.txt holds one name a line: a folder named over two lines would come back as two classes."""
    root = class_folders(str(tmp_path / 'train'))
    os.rename(os.path.join(root, 'dog'), os.path.join(root, 'big\ndog'))
    with pytest.raises(DatasetMissing, match=r"the class name 'big\\ndog' holds a line break; rename that class"):
        read_image_folder(root, val_fraction=0.5, log=lambda line: None)


def test_tiff_and_gif_files_in_class_folders_are_images_notes_are_not(tmp_path):
    """A scan's .tif and a .gif are images Pillow reads (16-bit TIFFs scaled: _eight_bit); a note is not."""
    rng = np.random.default_rng(0)
    for name, suffixes in (('cat', ('.tif', '.png', '.jpg')), ('dog', ('.TIFF', '.gif', '.bmp'))):
        os.makedirs(tmp_path / name)
        for i, suffix in enumerate(suffixes):
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(tmp_path / name / f'{i}{suffix}')
        (tmp_path / name / 'notes.txt').write_text('taken at noon')
    splits = read_image_folder(str(tmp_path), val_fraction=1 / 3, log=lambda line: None)
    listed = sorted(os.path.basename(p) for p in [*splits.train_paths, *splits.val_paths])
    assert listed == ['0.TIFF', '0.tif', '1.gif', '1.png', '2.bmp', '2.jpg']
    assert pixels(tmp_path / 'cat' / '0.tif').shape == (12, 12, 3)


# ---- a folder where a file belongs ----------------------------------------------------------------

def test_a_class_list_that_is_a_folder_is_refused_in_one_line(tmp_path, capsys):
    root = class_folders(str(tmp_path / 'train'))
    os.makedirs(tmp_path / 'classes')
    argv = ['--train', root, '--classes', str(tmp_path / 'classes'), '--fp_encoder', 'raw', '--diff_encoder', 'fp_mlp',
            '--device', 'cpu', '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache')]
    with pytest.raises(SystemExit) as done:
        run_cli(train_ImageFolder.main, argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count('\n') == 1
    assert err == (f'error: class list {tmp_path / "classes"} is a folder, not a file: Give --classes a text file of '
                   f'the class names, one a line.\n')
    assert not os.path.exists(tmp_path / 'runs')


def test_clothing1m_files_that_are_folders_are_refused(tmp_path):
    root = layouts.clothing1m(str(tmp_path / 'c1m'))
    os.makedirs(tmp_path / 'subset')
    with pytest.raises(DatasetMissing, match=r'^Clothing1M subset list \S+subset is a folder, not a file: name the '
                                             r'file itself$'):
        read_clothing1m(root, str(tmp_path / 'subset'))
    kv = os.path.join(root, 'noisy_label_kv.txt')
    os.remove(kv)
    os.makedirs(kv)
    with pytest.raises(DatasetMissing, match='noisy_label_kv.txt is a folder, not a file'):
        read_clothing1m(root)


def test_a_text_file_read_through_a_pipe_still_reads(tmp_path):
    """Only folders are refused: a named pipe (what a shell's <(...) passes) is read as a file."""
    fifo = str(tmp_path / 'classes')
    os.mkfifo(fifo)

    def write():  # the writer end, as the shell's process would be
        with open(fifo, 'w') as f:
            f.write('cat\ndog\n')
    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert read_lines(fifo, 'class list') == ['cat', 'dog']
    finally:
        writer.join()


# ---- predict.py --folder ----------------------------------------------------------------------------

def test_the_file_datasets_resize_filters_are_those_predict_decodes_with(tmp_path):
    food = read_food101n(*layouts.food101n(str(tmp_path / 'food')))
    clothing = read_clothing1m(layouts.clothing1m(str(tmp_path / 'c1m')))
    webvision = read_webvision(*layouts.webvision(str(tmp_path / 'wv'), str(tmp_path / 'imagenet')), n_class=3)
    layouts.own_data(str(tmp_path / 'own'), per_class=3, n_eval=1)
    own = read_image_folder(str(tmp_path / 'own' / 'train'), str(tmp_path / 'own' / 'val'), log=lambda line: None)
    assert {s.name: s.resample for s in (food, clothing, webvision, own)} == FILE_DATASET_RESAMPLE


def wide_images(root, per_class, rng):
    """Class folders of 24×72 images: the class colour in the centre square, random colours beside it
    (what a centre crop drops and a squashing resize keeps)."""
    for c in range(3):
        for i in range(per_class):
            pixels = rng.integers(0, 256, (24, 72, 3)).astype(np.float64)
            pixels[:, 24:48] = np.clip(np.array([c * 120, 240 - c * 120, 60]) + rng.normal(0, 20, (24, 24, 3)), 0, 255)
            os.makedirs(os.path.join(root, f'class{c}'), exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(root, f'class{c}', f'{i}.png'))
    return root


def test_predicting_a_folder_decodes_as_the_runs_evaluation_split(tmp_path):
    """The test split's images given as a folder get the very probabilities --split test gives them."""
    rng = np.random.default_rng(2)
    train, val, test = (wide_images(str(tmp_path / name), n, rng)
                        for name, n in (('train', 16), ('val', 3), ('test', 4)))
    _, run_dir = train_ImageFolder.main([
        '--train', train, '--val', val, '--test', test, '--fp_encoder', 'raw', '--diff_encoder', 'fp_mlp',
        '--image_size', '8', '--k', '3', '--batch_size', '16', '--feature_dim', '32', '--nepoch', '60', '--lr', '3e-3',
        '--warmup_epochs', '1', '--lr_horizon', '60', '--eval_every', '1', '--num_workers', '0', '--n_samples', '0',
        '--device', 'cpu', '--out_dir', str(tmp_path / 'runs'), '--cache_dir', str(tmp_path / 'cache'),
        '--run_name', 'own'])
    flags = ['--n_samples', '64', '--device', 'cpu']
    split = predict.main([run_dir, '--split', 'test', *flags])
    folder = predict.main([run_dir, '--folder', test, *flags])
    assert split['n'] == folder['n'] == 12
    probs = {name: np.load(os.path.join(run_dir, f'predict_{name}_probs.npy')) for name in ('test', 'folder')}
    np.testing.assert_allclose(probs['folder'], probs['test'], atol=1e-6)
    assert np.array_equal(np.load(os.path.join(run_dir, 'predict_folder_labels.npy')),
                          np.load(os.path.join(run_dir, 'predict_test_labels.npy')))


def test_workers_decode_ahead_no_more_than_the_shared_memory_bound():
    """Decoded batches wait in shared memory: 16 workers × 4 batches of 512 images at 224 px would hold 5 GB
    of /dev/shm. Large batches are fetched fewer ahead; small ones keep the 4 each."""
    from utils.data.image_files import IN_FLIGHT_BYTES, Decoding, image_batches, training_view_batches
    paths = [f'{i}.jpg' for i in range(2048)]  # not opened: the loaders are only built
    big = image_batches(paths, 512, 16, Decoding(size=224))
    small = image_batches(paths, 64, 4, Decoding(size=224))
    assert big.prefetch_factor == 1 and small.prefetch_factor == 4
    assert 16 * 2 * 512 * 3 * 224 ** 2 > IN_FLIGHT_BYTES >= 4 * 4 * 64 * 3 * 224 ** 2
    views = training_view_batches(paths, [list(range(256))] * 4, 0, 0, 8, Decoding(size=224))
    assert views.prefetch_factor == 3  # 8 workers × 3 × 256 images at 224 px: under the bound; × 4 would not be
    assert image_batches(paths, 512, 0).prefetch_factor is None  # decoded in this process: nothing ahead
