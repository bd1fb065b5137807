"""Evaluation: the one way a trained denoiser turns inputs into labels.

The training loop (cached split features), `--predict` (a trained run applied to a split or a
folder) and the end-to-end benchmarks (images encoded batch by batch) all call `predict_labels`;
they differ only in where each batch's (x, f_p) pair comes from.
"""
import torch
import torch.nn.functional as F

from model_diffusion import labels_from_y0, ranked_from_y0, sample_y0
from utils.data.image_files import image_batches
from utils.data.images import channels_last, normalize_images
from utils.runtime.progress import progress_bar


def _encoder_batchnorms(model):
    return [m for m in model.diff_encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def evaluation_mode(model, eval_bn):
    """Evaluation mode; with eval_bn 'batch' the diffusion encoder's BatchNorm keeps using batch
    statistics, as in the authors' CIFAR code (their encoder never left training mode), without
    updating its running statistics."""
    model.eval()
    if eval_bn == 'batch':
        for m in _encoder_batchnorms(model):
            m.train()
            m.track_running_stats = False


def training_mode(model):
    model.train()
    for m in _encoder_batchnorms(model):
        m.track_running_stats = True


class SplitInputs:
    """Per split, what the model reads: f_p features, and the diffusion encoder's input, which is the
    normalised pixels ('image'), a frozen backbone's cached features ('cached') or f_p itself
    ('features')."""

    def __init__(self, diff_input, features, images=None, backbone_features=None, mean=None, std=None, files=None,
                 decoding=None, num_workers=0):
        self.diff_input, self.features, self.images = diff_input, features, images or {}
        self.backbone_features = backbone_features
        self.mean, self.std = mean, std
        # image files per split, decoded batch by batch (centre crops, each split's utils/data/image_files.Decoding)
        # where no pixels are held
        self.files, self.decoding, self.num_workers = files or {}, decoding, num_workers

    def size(self, split):
        return self.features[split].shape[0]

    def pixels(self, images):
        return channels_last(normalize_images(images, self.mean, self.std))

    def x_batch(self, split, rows, fp_x, images=None):
        """The diffusion encoder's input for `rows` of `split`; `images` replaces the stored pixels
        (the augmented training batch)."""
        if self.diff_input == 'image':
            return self.pixels(self.images[split][rows] if images is None else images)
        if self.diff_input == 'cached':
            return self.backbone_features[split][rows]
        return fp_x

    def reads_files(self, split):
        """The model reads the split's pixels, and they come from image files (decoded as read)."""
        return self.diff_input == 'image' and split in self.files

    def decoded(self, split, batch_size):
        """The split's images decoded from files in batches, in order, where the model reads them."""
        if not self.reads_files(split):
            return None
        return iter(image_batches(self.files[split], batch_size, self.num_workers, self.decoding[split]))

    def batches(self, split, batch_size):
        return Batches(self, split, batch_size)


class Batches:
    """The (x, f_p) batches of one split, made as they are read; sized for progress bars."""

    def __init__(self, inputs, split, batch_size):
        self.inputs, self.split, self.batch_size = inputs, split, batch_size

    def __len__(self):
        return -(-self.inputs.size(self.split) // self.batch_size)

    def __iter__(self):
        stream = self.inputs.decoded(self.split, self.batch_size)
        for start in range(0, self.inputs.size(self.split), self.batch_size):
            rows = slice(start, start + self.batch_size)
            fp_x = self.inputs.features[self.split][rows]
            images = next(stream).to(fp_x.device, non_blocking=True) if stream is not None else None
            yield self.inputs.x_batch(self.split, rows, fp_x, images=images), fp_x


def encoded_batches(images, fp_encoder, diff_input, mean, std, batch_size):
    """(x, f_p) batches of uint8 images encoded on the fly by the frozen f_p."""
    device = fp_encoder.device
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        fp_x = fp_encoder.encode(batch)
        yield (channels_last(normalize_images(batch, mean, std)) if diff_input == 'image' else fp_x), fp_x


def labels_of(y0, top_k=1):
    """The label of each y_0 (N), or with top_k > 1 its top_k classes, the label first (N × top_k)."""
    return ranked_from_y0(y0, top_k) if top_k > 1 else labels_from_y0(y0)


def bn_shares(eval_bn, devices):
    """How many parts of an evaluation batch are normalised apart. With batch statistics at evaluation
    (--eval_bn batch) the batch decides the predictions, and the authors' nn.DataParallel normalised each
    device's share by its own: one part per device a run trains on. With running statistics, one."""
    return devices if eval_bn == 'batch' else 1


def embed(model, x, shares=1):
    """The image embedding of an evaluation batch, its `shares` parts (torch.chunk's, as nn.DataParallel
    scatters a batch) normalised apart. A part of one sample (a ragged last batch) joins the part before it:
    BatchNorm1d cannot take batch statistics of one."""
    if shares == 1:
        return model.embed_x(x)
    parts = []
    for part in x.chunk(shares):
        if len(part) < 2 and parts:
            parts[-1] = torch.cat([parts[-1], part])
        else:
            parts.append(part)
    return torch.cat([model.embed_x(part) for part in parts])


def batch_labeller(model, diffusion, n_steps=10, top_k=1, shares=1):
    """The deterministic DDIM labels (or top_k) of one (x, f_p) batch: the image embedding once, then the
    sampler from y_T = 0. The function a CUDA graph captures per evaluation batch shape (utils/runtime/graphs.py).
    `shares`: bn_shares."""
    def labels(x, fp_x):
        return labels_of(sample_y0(model, diffusion, embed(model, x, shares), fp_x, n_steps), top_k)
    return labels


@torch.inference_mode()
def predict_labels(model, diffusion, batches, n_steps=10, eval_bn='running', n_samples=0, seed=0, progress=None,
                   top_k=1, graphs=None, shares=1, sample_eta=1.0):
    """Deterministic DDIM labels (from y_T = 0) for every batch; with n_samples > 0 also per-class
    frequencies over that many stochastic DDIM samples (from y_T ~ N(0, I), `sample_eta` 1: noise added
    at every step; the authors' stochastic sampler adds none, η = 0, and its frequencies rank mislabelled
    images worse: python -m benchmarks.sampling, docs/RESULTS.md), rows summing to 1.
    The image embedding is computed once per batch, not once per DDIM step; the stochastic samples of
    a batch run as one sampler call over the batch repeated n_samples times, or as several where that would
    not fit (sample_calls). `progress` names a bar.
    With top_k > 1 the labels are N × top_k: the classes whose coordinates of y_0 are closest to 1,
    the label itself first (top-5 accuracy from the same deterministic sample). `graphs`:
    batch_labeller(model, diffusion, n_steps, top_k) wrapped in utils/runtime/graphs.GraphedCalls, which replaces
    the deterministic labels' eager kernels where no samples are drawn. `shares`: bn_shares."""
    evaluation_mode(model, eval_bn)
    device = diffusion.betas.device
    generator = torch.Generator(device).manual_seed(seed) if n_samples else None
    labeller = batch_labeller(model, diffusion, n_steps, top_k, shares)
    labels, probs = [], []
    for x, fp_x in progress_bar(batches, desc=progress, disable=progress is None, leave=False):
        if not n_samples:  # a graph's output tensor is overwritten by its next replay: cloned
            labels.append(graphs(x, fp_x).clone() if graphs is not None else labeller(x, fp_x))
            continue
        x_e = embed(model, x, shares)
        labels.append(labels_of(sample_y0(model, diffusion, x_e, fp_x, n_steps), top_k))
        votes = 0
        for m in sample_calls(n_samples, fp_x, x_e):
            y0 = sample_y0(model, diffusion, x_e.repeat(m, 1), fp_x.repeat(m, 1), n_steps,
                           eta=sample_eta, noisy_start=True, generator=generator)
            votes = votes + F.one_hot(labels_from_y0(y0), model.n_class).view(m, len(fp_x), -1).sum(0)
        probs.append(votes.float() / n_samples)
    return torch.cat(labels), (torch.cat(probs) if n_samples else None)


# the inputs of one stochastic sampler call at most: the samples of a batch beyond it are drawn in several
# calls (--n_samples 10000 of a 2000-image batch of 3072-wide features was 245 GB in one)
SAMPLE_CALL_BYTES = 2 ** 31


def sample_calls(n_samples, fp_x, x_e):
    """The samples of each sampler call for a batch: one call of all n_samples wherever the repeated inputs
    fit SAMPLE_CALL_BYTES (every run the paper's settings make), else as many as fit per call, the same on
    every machine."""
    row_bytes = len(fp_x) * fp_x.element_size() * (fp_x.shape[1] + x_e.shape[1])
    per_call = max(1, SAMPLE_CALL_BYTES // max(1, row_bytes))
    return [min(per_call, n_samples - done) for done in range(0, n_samples, per_call)]


def classify_images(images, fp_encoder, model, diffusion, diff_input, mean, std, batch_size=1000, n_steps=10,
                    bf16=True, eval_bn='running'):
    """Predicted classes for uint8 N×3×H×W images (any device), batch by batch on the model's device."""
    model.bf16_embed = bf16
    batches = encoded_batches(images, fp_encoder, diff_input, mean, std, batch_size)
    return predict_labels(model, diffusion, batches, n_steps, eval_bn)[0]
