"""Each benchmark command at tiny size on the CPU (the GPU figures come from the same commands)."""
import torch

from benchmarks import inference, retrieval, training
from utils.inference import classify_images
from utils.random_weights import save_random_clip
from utils.encoders import load_clip
from model_diffusion import Denoiser, Diffusion, labels_from_y0, predict_y0
from utils.x_encoders import build_x_encoder


def test_inference_table_runs_every_column():
    rows = inference.main(['--sizes', '16', '32', '--small', '--batch_size', '16', '--device', 'cpu'])
    assert {r['column'] for r in rows} == set(inference.COLUMNS)
    assert all(r['seconds'] > 0 and r['images_per_s'] > 0 for r in rows)


def test_training_benchmark_projects_a_paper_length_run():
    rows = training.main(['--small', '--epochs', '2', '--encoders', 'ViT-B/32', '--diff_encoders', 'fp_mlp',
                          '--device', 'cpu'])
    (row,) = rows
    assert row['paper_length_is_projection'] and row['train_s_per_epoch'] > 0 and row['paper_length_min'] > 0


def test_retrieval_benchmark_is_exact():
    result = retrieval.main(['--n', '3000', '--dim', '32', '--k', '5', '--device', 'cpu', '--chunk_size', '700'])
    assert result['self_is_first'] == 1.0 and result['agreement_with_cdist'] == 1.0


def test_end_to_end_inference_equals_the_cached_feature_path(tmp_path):
    """classify_images (encode per batch) gives the labels the training loop's evaluation gives
    from cached features: evaluating on cached features changes nothing."""
    encoder = load_clip(save_random_clip('tiny', tmp_path / 'c.pt'))
    torch.manual_seed(0)
    denoiser = Denoiser(10, encoder.dim, 32, build_x_encoder('linear', 32, encoder.dim, (3, 32, 32))).eval()
    diffusion = Diffusion()
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    direct = classify_images(images, encoder, denoiser, diffusion, 'image', mean, std, batch_size=16)
    from utils.encoders import normalize_images
    cached = labels_from_y0(predict_y0(denoiser, diffusion, normalize_images(images, mean, std),
                                       encoder.encode(images)))
    assert torch.equal(direct, cached)


def test_extraction_benchmark_decodes_and_encodes_every_file():
    from benchmarks import extraction
    result = extraction.main(['--n', '40', '--small', '--workers', '2', '--batch_size', '16', '--device', 'cpu'])
    assert result['images'] == 40 and result['feature_dim'] == 32 and result['images_per_s'] > 0
