"""The authors' Clothing1M/WebVision step: a ResNet diffusion encoder fine-tuned on augmented views
decoded from the image files every epoch, f_p re-encoding each augmented batch, retrieval every step."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from test_files import small_flags

import predict
import train_Clothing1M
import utils.trainer
from benchmarks import layouts
from utils.data.image_files import Decoding, ImageFiles
from utils.diff_encoders import build_diff_encoder, build_model, load_tuned_backbone
from utils.encoders.imagenet import load_imagenet_resnet
from utils.storage.loading import load_torch
from utils.trainer import clip_groups


def image_resized_to(path, short, resample):
    image = Image.open(path).convert('RGB')  # 48×40
    image = image.resize((round(image.width * short / image.height), short), resample)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def test_training_views_are_seeded_crops_and_flips(tmp_path):
    root = layouts.clothing1m(str(tmp_path))  # 40×40 JPEGs
    paths = [os.path.join(root, 'images/0/00/00000.jpg'), os.path.join(root, 'images/1/01/00001.jpg')]
    centre = ImageFiles(paths, Decoding(32))
    view = ImageFiles(paths, Decoding(32), augment=(123, 4))
    assert view[0].shape == centre[0].shape == (3, 32, 32)
    assert torch.equal(view[1], ImageFiles(paths, Decoding(32), augment=(123, 4))[1])  # a resumed epoch's views
    # the resize filter is the dataset's: bicubic differs from bilinear, the crop being the same
    bicubic = ImageFiles(paths, Decoding(32, 'bicubic'))[0]
    expected = image_resized_to(paths[0], 37, Image.BICUBIC)
    top, left = (expected.shape[1] - 32) // 2, (expected.shape[2] - 32) // 2
    assert torch.equal(bicubic, expected[:, top:top + 32, left:left + 32]) and not torch.equal(bicubic, centre[0])
    # a torchrun rank's shard of the files draws the views the whole list would
    assert all(torch.equal(ImageFiles(paths, Decoding(32), augment=(123, e))[1],
                           ImageFiles(paths[1:], Decoding(32), augment=(123, e), first=1)[0]) for e in range(8))
    epochs = [ImageFiles(paths, Decoding(32), augment=(123, e))[0] for e in range(8)]
    assert len({e.numpy().tobytes() for e in epochs}) > 1  # drawn afresh every epoch
    assert not all(torch.equal(e, centre[0]) for e in epochs)
    # each view is cut from the image resized to a 37-px short side (32·256/224), mirrored or not
    resized = image_resized_to(paths[0], 37, Image.BILINEAR)
    h, w = resized.shape[1:]
    for e in epochs:
        found = any(torch.equal(v, resized[:, top:top + 32, left:left + 32])
                    for v in (e, e.flip(-1)) for top in range(h - 31) for left in range(w - 31))
        assert found


def tuned_run(tmp_path, tiny_clip_path, *flags):
    root = layouts.clothing1m(str(tmp_path / 'data'))
    return root, train_Clothing1M.main(['--clothing1m_root', root, *small_flags(tmp_path, tiny_clip_path), *flags])


def test_clothing1m_tunes_the_backbone_on_streamed_views_and_retrieves_every_step(tmp_path, tiny_clip_path,
                                                                                   monkeypatch):
    queries = []
    original = utils.trainer.retrieve_candidates
    monkeypatch.setattr(utils.trainer, 'retrieve_candidates', lambda q, *a: queries.append(q.clone()) or original(q, *a))
    root, (summary, run_dir) = tuned_run(tmp_path, tiny_clip_path)
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert (config['diff_backbone'], config['fp_train_view'], config['per_step_retrieval']) == \
        ('tuned', 'augmented', True)
    assert config['per_class_drawn'] == 16 and len(queries) == 2 * 2  # 2 epochs of 64 drawn images, batch 32
    # the queries are f_p of the augmented views, not the cached keys of the centre crops
    keys = [load_torch(os.path.join(tmp_path / 'cache', n))['value'] for n in os.listdir(tmp_path / 'cache')
            if n.startswith('clothing1m_train_center_')]
    assert len(keys) == 1
    rows = torch.cat(queries)
    same = sum(bool(torch.isclose(keys[0], row).all(1).any()) for row in rows)
    assert same < len(rows) / 4  # a random crop can fall on the centre unflipped (1 in 72)
    assert not [n for n in os.listdir(tmp_path / 'cache') if 'imagenet-resnet18' in n]  # no backbone cache

    # the ResNet started from --diff_encoder_weights (random, seeded) and was fine-tuned, the conv too
    best = load_torch(os.path.join(run_dir, 'last.pt'))['model']
    start = load_imagenet_resnet('resnet18', 'random', seed=config['seed']).net.state_dict()
    assert not torch.equal(best['diff_encoder.conv1.weight'], start['conv1.weight'])
    # and the streamed evaluation is what --predict gives on the same files
    result = predict.main([run_dir, '--split', 'test', '--clothing1m_root', root, '--n_samples', '0', '--device', 'cpu'])
    assert result['accuracy'] == pytest.approx(summary['test_acc'])
    assert np.load(os.path.join(run_dir, 'train_probs.npy')).shape == (80, 4)


def test_a_fresh_tuned_run_starts_from_the_backbone_weights(tmp_path, tiny_clip_path):
    cfg = train_Clothing1M.config(['--diff_encoder', 'resnet18_l', '--diff_encoder_weights', 'random',
                                         '--diff_backbone', 'tuned', '--feature_dim', '16'])
    model = load_tuned_backbone(build_model(cfg, 4, 8, (3, 32, 32)), cfg)
    start = load_imagenet_resnet('resnet18', 'random', seed=cfg.seed).net.state_dict()
    mine = model.diff_encoder.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in start.items())
    # the authors' head (their myfc, myfc2): pooled 512 → 512 → feature_dim, two linear layers
    assert (mine['fc.0.weight'].shape, mine['fc.1.weight'].shape) == ((512, 512), (16, 512))


@pytest.mark.parametrize('backbone', ['cached', 'tuned'])
def test_the_l_encoders_end_in_the_authors_two_layer_head(backbone):
    encoder = build_diff_encoder('resnet50_l', 1024, 8, (3, 32, 32), backbone)
    head = encoder.fc if backbone == 'tuned' else encoder
    assert [(m.in_features, m.out_features) for m in head] == [(2048, 512), (512, 1024)]
    # nothing between the layers: one linear map, of rank 512 (a single 2048 → 1024 layer: 1024)
    with torch.no_grad():
        x = torch.randn(4, 2048)
        product = head[1].weight @ head[0].weight
        assert torch.allclose(head(x), x @ product.T + head[1](head[0].bias), atol=1e-5)
        assert torch.linalg.matrix_rank(product) == 512
        assert torch.linalg.matrix_rank(torch.nn.Linear(2048, 1024).weight) == 1024


def test_interrupted_tuned_run_resumes_to_the_same_result(tmp_path, tiny_clip_path):
    _, (straight, _) = tuned_run(tmp_path / 'a', tiny_clip_path, '--nepoch', '3', '--lr_horizon', '3')
    root, (first, run_dir) = tuned_run(tmp_path / 'b', tiny_clip_path, '--nepoch', '2', '--lr_horizon', '3')
    resumed, _ = train_Clothing1M.main(['--clothing1m_root', root, '--resume', run_dir, '--nepoch', '3',
                                        '--device', 'cpu'])
    for key in ('best_val_acc', 'best_epoch', 'test_acc'):
        assert resumed[key] == straight[key], key


def test_clip_groups_follow_the_recipe(tmp_path, tiny_clip_path):
    cfg = train_Clothing1M.config(['--diff_encoder', 'fp_mlp'])
    model = build_model(cfg, 4, 8, (3, 32, 32))
    denoiser, encoder = clip_groups(model, 'authors')
    assert {id(p) for p in encoder} == {id(p) for p in model.diff_encoder.parameters()}
    assert len(denoiser) + len(encoder) == len(list(model.parameters()))
    assert len(clip_groups(model, 'improved')) == 1
