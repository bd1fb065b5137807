"""End-to-end inference: uint8 images → frozen f_p → image embedding x_e → DDIM → class."""
import torch

from model_diffusion import labels_from_y0, sample_y0
from utils.classifier import predict_proba
from utils.encoders import normalize_images


@torch.inference_mode()
def classify_images(images, fp_encoder, denoiser, diffusion, x_input, mean, std, batch_size=1000, n_steps=10,
                    bf16=True):
    """Predicted classes for uint8 N×3×H×W images (any device), batch by batch on the model's device.

    `x_input` says what the diffusion encoder reads: 'image' (normalised pixels) or 'features' (f_p).
    The image embedding is computed once per batch, not once per DDIM step.
    """
    device = fp_encoder.device
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(device, non_blocking=True)
        fp_x = fp_encoder.encode(batch)
        x_source = normalize_images(batch, mean, std) if x_input == 'image' else fp_x
        if x_input == 'image' and device.type == 'cuda':
            x_source = x_source.contiguous(memory_format=torch.channels_last)
        denoiser.bf16_embed = bf16
        x_embed = denoiser.embed_x(x_source)
        out.append(labels_from_y0(sample_y0(denoiser, diffusion, x_embed, fp_x, n_steps)))
    return torch.cat(out)


def classify_standard(images, classifier, mean, std, batch_size=1000):
    """The "Standard" column: a plain classifier's argmax, through the classifier trainer's own
    batched, bf16, channels-last prediction path."""
    return predict_proba(classifier, images, mean, std, batch_size).argmax(1)
