"""Image files on disk: the lists that name them, and decoding them in DataLoader workers.

The image-file datasets (Food-101N, Clothing1M, WebVision, your own images) keep their images on disk;
they are decoded once, in workers, to compute the cached features training runs on (utils/runs/
distributed.py shards that work across processes), and, where a diffusion encoder reads pixels, again
each epoch as seeded training views.
"""
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from utils.errors import DatasetMissing

# the files a class folder or predict's --folder lists as images (others there: notes, CSVs, sidecars).
# TIFF (microscopy, scans, 16-bit sensors: _eight_bit) and GIF are Pillow's too, and were once passed over.
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff', '.gif')


DOWNLOAD = 'Download the dataset and point the script at its folder.'


def need_file(path, what, fix=DOWNLOAD):
    if not os.path.exists(path):
        raise DatasetMissing(f'{what} not found: {path}. {fix}')
    return path


def need_text_file(path, what, fix=DOWNLOAD):
    """A file to read, refused where a folder stands in its place (open() would fail with a traceback).
    Only folders are refused: a pipe (a shell's <(...)) reads as a file does."""
    if os.path.isdir(need_file(path, what, fix)):
        raise DatasetMissing(f'{what} {path} is a folder, not a file: '
                             f'{"name the file itself" if fix == DOWNLOAD else fix}')
    return path


def read_text(path, what, fix=DOWNLOAD):
    """A text file's content, refused naming the file and line where it is not UTF-8 (a BOM is dropped)."""
    with open(need_text_file(path, what, fix), 'rb') as f:
        data = f.read()
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b'\n') + 1
        raise DatasetMissing(f'{path}, row {line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); '
                             f'save the file as UTF-8 (e.g. "CSV UTF-8" in a spreadsheet)') from None


def read_lines(path, what, fix=DOWNLOAD):
    return [line for _, line in numbered_lines(path, what, fix)]


def numbered_lines(path, what, fix=DOWNLOAD):
    """(line number in the file, stripped text) of each line that is not blank: a refusal names the line as
    an editor numbers it."""
    return [(number, line.strip()) for number, line in enumerate(read_text(path, what, fix).splitlines(), 1)
            if line.strip()]


def read_pairs(path, what, root=None):
    """'<relative path> <class index>' lines → (absolute paths, labels); malformed lines are named (a
    negative label would pass every `label < n_class` filter and index no class)."""
    paths, labels = [], []
    for number, line in numbered_lines(path, what):
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetMissing(f'{path}, line {number}: expected "<image path> <class index 0, 1, ...>", '
                                 f'found {line!r}')
        paths.append(os.path.join(root, parts[0]) if root else parts[0])
        labels.append(int(parts[1]))
    return paths, np.asarray(labels, dtype=np.int64)


# ---- your own data: a CSV of path,label or class folders -----------------------------------------

def image_files_in(folder):
    """Every image file under `folder`, sorted. Linked subfolders are followed (each real folder once: a link
    back up the tree is no loop, and one folder linked twice lists its images once; the same file under two
    class folders is refused by the reader); a subfolder that cannot be listed is refused, never skipped.
    A folder is known by its device and inode, which a bind mount shares with its source (its path differs)."""
    def unreadable(exc):
        away = '' if os.path.abspath(exc.filename) == os.path.abspath(folder) else f', or move it out of {folder}'
        raise DatasetMissing(f'{exc.filename} cannot be listed ({exc.strerror}); make it readable{away}')
    found, walked = [], set()
    for root, subfolders, names in os.walk(folder, onerror=unreadable, followlinks=True):
        try:
            info = os.stat(root)
        except OSError as exc:
            unreadable(exc)
        if (info.st_dev, info.st_ino) in walked:
            subfolders[:] = []
            continue
        walked.add((info.st_dev, info.st_ino))
        subfolders.sort()  # which path of a folder linked twice is walked: the same every time
        found += [os.path.join(root, name) for name in names if is_image_name(name)]
    return sorted(found)


def is_image_name(name):
    """A file name with an image suffix, other than macOS's AppleDouble companions (._<name>, metadata that a
    copy from a Mac leaves beside every image, which no decoder reads)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith('._')


def _unreadable(path, exc):
    """Why an image cannot be decoded, and the fix: an oversized image is named as such."""
    if isinstance(exc, Image.DecompressionBombError):
        return (f'{path} is too large to decode safely ({exc}); shrink it, or remove it from the list (raise '
                f'PIL.Image.MAX_IMAGE_PIXELS only for files you trust)')
    return f'{path} ({exc})'


UNDECODABLE = (OSError, ValueError, Image.DecompressionBombError)


def _regular(path):
    """`path`, where it is a regular file (or a link to one): opening a pipe waits for a writer that may
    never come, in a thread a Ctrl-C does not reach, and a device such as /dev/zero never ends."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise OSError('a folder, not an image file')
    if not stat.S_ISREG(mode):
        raise OSError('not a regular file but a pipe, device or socket')
    return path


# the marker a whole file of each format ends with (a few bytes of padding may follow): a file cut short
# (a copy or download that stopped) lacks it, though its header parses. MPO: how Pillow names a JPEG
# holding several pictures (many phone and camera photos)
END_MARKERS = {'JPEG': b'\xff\xd9', 'MPO': b'\xff\xd9', 'PNG': b'IEND'}
TAIL_BYTES = 64
ALWAYS_DECODED = ('BMP',)  # no end marker; uncompressed, so decoding whole is cheap


def _readable(path):
    """None, or why the image cannot be read: its header must parse, and a JPEG or PNG without its end
    marker must decode whole (only those are decoded here, so a cut file is refused before any work
    rather than found hours into extraction)."""
    try:
        with open(_regular(path), 'rb') as f, Image.open(f) as image:
            _check_mode(image)  # the header parses, and says how its pixels are stored
            marker = END_MARKERS.get(image.format)
            if marker is not None:
                f.seek(max(0, os.fstat(f.fileno()).st_size - TAIL_BYTES))
            if image.format in ALWAYS_DECODED or (marker is not None and marker not in f.read()):
                f.seek(0)
                image.load()
        return None
    except UNDECODABLE as exc:
        return _unreadable(path, exc)


# integer modes wider than 8 bits: the largest value of their data. convert('RGB') clips them at 255,
# so a 16-bit scan decoded white. An 'I' image (32-bit signed: how Pillow holds some 16-bit PNGs, and
# integer TIFFs) says nothing of its depth: values within 0..255 are taken as 8-bit (decoded as before),
# within 0..65535 as 16-bit, and beyond as 32-bit
WIDE_MODES = {'I;16': 65535, 'I;16L': 65535, 'I;16B': 65535, 'I;16N': 65535, 'I': None}


def _depth_top(data):
    """The largest value of an 'I' image's depth, judged by its values (see WIDE_MODES)."""
    low, high = data.min(), data.max()
    if low >= 0 and high <= 255:
        return 255
    return 65535 if low >= 0 and high <= 65535 else 2 ** 31 - 1


def _check_mode(image):
    """Refuse float pixels (mode 'F', float TIFFs): they have no fixed range (0..1, or a sensor's), and
    convert('RGB') clips them to black and white."""
    if image.mode == 'F':
        raise ValueError('32-bit float pixels, which have no fixed range: save it as an 8- or 16-bit image')


def _eight_bit(image):
    """A 16- or 32-bit integer image as 8-bit grayscale ('L'), its range scaled to 0..255 as a viewer
    shows it; any other image as it is."""
    _check_mode(image)
    if image.mode not in WIDE_MODES:
        return image
    data = np.asarray(image).astype(np.int64)
    top = WIDE_MODES[image.mode] or _depth_top(data)
    scaled = (np.clip(data, 0, top) * 255 + top // 2) // top  # rounded to the nearest level
    return Image.fromarray(scaled.astype(np.uint8), 'L')


def open_image(path, upright=False, rgb=True):
    """An image file as RGB (`rgb` False: in its own mode, wide integers made 8-bit), or a refusal naming
    the file (missing, damaged, not an image, oversized). `upright`: turned as its EXIF Orientation tag
    says, as viewers show it (the tag is how cameras store a turned photo); the authors' loaders of their
    datasets do not, so neither does their decoding here."""
    try:
        with Image.open(_regular(path)) as image:
            if upright:  # without the tag: nothing done, nothing copied
                ImageOps.exif_transpose(image, in_place=True)
            image = _eight_bit(image)
            if rgb:
                return image.convert('RGB')
            image.load()  # the pixels, read while the file is open (leaving the block closes it, not them)
            return image
    except UNDECODABLE as exc:
        raise DatasetMissing(f'cannot read image {_unreadable(path, exc)}; replace the file or remove it from the '
                             f'list') from None


def check_images(paths, source, listed=True):
    """Every file exists and its header is an image (checked in threads: file systems are slow). `listed`:
    `source` lists its images (a CSV), rather than holding them (a folder)."""
    with ThreadPoolExecutor(16) as pool:
        bad = [b for b in pool.map(_readable, paths, chunksize=256) if b]
    if bad:
        fix = 'remove them from the list' if listed else 'move them out of the folder'
        raise DatasetMissing(f'{source}: {len(bad)} of {len(paths)} images cannot be read (first: {bad[0]}); '
                             f'{fix} or replace the files')


# ---- decoding --------------------------------------------------------------------------------------

KEYS_VIEW_EPOCH = 2 ** 31  # the random stream of the one augmented view cached as f_p keys
# The authors' two resizes, each with PIL's filter (antialiased when shrinking): 'bilinear' is
# torchvision's Resize (their Clothing1M and ILSVRC2012 loaders), 'bicubic' their own resize() of
# WebVision and Food-101N images. Each rounds the new size its own way (resized_size).
RESAMPLE = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
# 'authors': sizes and centre-crop offsets rounded as the authors' loaders round them (torchvision's
# CenterCrop rounds half-pixel offsets to even); 'legacy': as this package did before 2026-12-06 (sizes
# to nearest, offsets down), a pixel off for about 60% (bilinear) and 25% (bicubic) of the images of
# 200-1000 px; kept for the runs made then
ROUNDINGS = ('authors', 'legacy')


@dataclass(frozen=True)
class Decoding:
    """How an image file becomes pixels: its shorter side resized to size·256/224 with the `resample`
    filter (RESAMPLE), then cropped to size × size."""
    size: int = 224
    resample: str = 'bilinear'
    upright: bool = False  # turned as the EXIF Orientation tag says (open_image)
    rounding: str = 'authors'  # ROUNDINGS

    def key(self):
        """Its part of a feature cache's key; bilinear resizing, unturned images and the legacy rounding
        are left out, so caches made before each was a choice stay valid (for the runs made then)."""
        return {'size': self.size, **({'resample': self.resample} if self.resample != 'bilinear' else {}),
                **({'upright': True} if self.upright else {}),
                **({'rounding': self.rounding} if self.rounding != 'legacy' else {})}


def resized_size(w, h, short, resample, rounding='authors'):
    """(width, height) of a w × h image resized to `short` pixels on its shorter side."""
    if rounding == 'legacy':
        scale = short / min(w, h)
        return max(short, round(w * scale)), max(short, round(h * scale))
    if resample == 'bicubic':  # the authors' resize(): int(x + 0.5) on both sides
        scale = float(short) / min(w, h)
        return int(w * scale + 0.5), int(h * scale + 0.5)
    if w <= h:  # torchvision's Resize(short): the longer side truncated
        return short, int(short * h / w)
    return int(short * w / h), short


def centre_offset(extent, size, rounding='authors'):
    """Where a centred crop of `size` starts in `extent` pixels (torchvision's CenterCrop: round half to even)."""
    return (extent - size) // 2 if rounding == 'legacy' else int(round((extent - size) / 2.0))


class ImageFiles(torch.utils.data.Dataset):
    """Decode, resize the shorter side to size·256/224 and crop to size: uint8 3×size×size.

    The crop is central; with `augment=(seed, epoch)` it is the training view instead (the authors'
    Resize(256), RandomCrop(224), RandomHorizontalFlip at size 224): a random crop and a coin-flip
    mirror drawn from (seed, epoch, index), so a resumed epoch decodes the very same views. `index`
    counts from `first`: a shard of the files (a torchrun rank's) draws what the whole list would. The
    one view cached as f_p keys (`--fp_cache_view augmented`) is drawn as epoch KEYS_VIEW_EPOCH, which
    no run reaches. Size and resize filter come from `decoding` (Decoding)."""

    def __init__(self, paths, decoding=Decoding(), augment=None, first=0):
        self.paths, self.size, self.augment, self.first = paths, decoding.size, augment, first
        self.decoding = decoding

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        how = self.decoding
        # the authors' resize() of WebVision and Food-101N images runs before their convert('RGB'): a
        # palette image is resized nearest, a CMYK one in CMYK (torchvision's Resize runs after it)
        resize_first = how.rounding == 'authors' and how.resample == 'bicubic'
        image = open_image(self.paths[i], how.upright, rgb=not resize_first)
        short = round(self.size * 256 / 224)
        image = image.resize(resized_size(*image.size, short, how.resample, how.rounding), RESAMPLE[how.resample])
        if image.mode != 'RGB':
            image = image.convert('RGB')
        w, h = image.size
        left, top, flip = centre_offset(w, self.size, how.rounding), centre_offset(h, self.size, how.rounding), False
        if self.augment is not None:
            rng = np.random.default_rng((*self.augment, self.first + i))
            left, top = int(rng.integers(0, w - self.size + 1)), int(rng.integers(0, h - self.size + 1))
            flip = bool(rng.integers(0, 2))
        image = image.crop((left, top, left + self.size, top + self.size))
        if flip:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


IN_FLIGHT_BYTES = 2 ** 30  # decoded batches the workers may hold ahead, in shared memory (/dev/shm)


def _loader(dataset, num_workers, batch_images, **order):
    """Workers decoding ahead, up to 4 batches each, fewer where those would pass IN_FLIGHT_BYTES: 16
    workers × 4 batches of 512 images at 224 px are 5 GB of shared memory, more than many machines'
    /dev/shm (a worker then dies of a bus error), and far more than a GPU needs queued."""
    batch_bytes = 3 * dataset.size ** 2 * batch_images
    prefetch = max(1, min(4, IN_FLIGHT_BYTES // max(1, num_workers * batch_bytes))) if num_workers else None
    return torch.utils.data.DataLoader(dataset, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                                       persistent_workers=False, prefetch_factor=prefetch, **order)


def image_batches(paths, batch_size, num_workers, decoding=Decoding(), augment=None, first=0):
    """uint8 batches of the files in order (centre crops, or the views `augment` draws for files
    numbered from `first`), decoded by DataLoader workers."""
    return _loader(ImageFiles(paths, decoding, augment, first), num_workers, batch_size, batch_size=batch_size,
                   shuffle=False)


def training_view_batches(paths, batches, seed, epoch, num_workers, decoding=Decoding()):
    """uint8 training views of the files, one batch per entry of `batches` (lists of row indices), in
    that order: the epoch's augmented images, decoded by DataLoader workers while the device trains."""
    return _loader(ImageFiles(paths, decoding, augment=(seed, epoch)), num_workers, max(map(len, batches), default=1),
                   batch_sampler=batches)
