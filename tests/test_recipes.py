"""The authors' protocol as the default, and each improvement behind its own flag."""
import json
import os

import pytest
import torch
from test_engine import digits_cfg

import train_CIFAR
import train_Clothing1M
import train_Food101N
import train_WebVision
import utils.trainer
from conftest import subset
from utils import evaluate
from utils.diff_encoders import build_model
from utils.encoders.cache import augmented_view
from utils.engine import run
from utils.errors import SetupError
from utils.recipes import RECIPE_FLAGS, cuda_graph_mode, resolve_recipe
from utils.retrieval import CandidateLabels, retrieve_candidates
from utils.runs.folders import resumed_config
from utils.storage.loading import load_torch

# train_CIFAR.py of the authors (puar-playground/LRA-diffusion at 231e587) and its hard-coded schedule
AUTHORS_CIFAR = dict(nepoch=200, batch_size=200, warmup_epochs=5, feature_dim=512, k=10, ddim_n_step=10,
                     fp_encoder='SimCLR', CLIP_type='ViT-L/14', diff_encoder='resnet34', lr=1e-3, lr_horizon=1000,
                     noise_type='cifar10-1-0.35', recipe='authors', grad_clip=1.0, eval_every=5, n_timesteps=1000,
                     beta_schedule='cosine')


def test_cifar_defaults_are_the_authors():
    cfg = train_CIFAR.config([])
    assert {k: getattr(cfg, k) for k in AUTHORS_CIFAR} == AUTHORS_CIFAR


def resolved(*flags):
    """The configuration train_CIFAR.py resolves for these flags (the recipe applied as they are parsed)."""
    return vars(train_CIFAR.config(list(flags)))


def test_authors_recipe_on_cifar_simclr_and_clip():
    simclr = resolved()
    assert simclr['freeze_diff_encoder'] is True and simclr['eval_bn'] == 'batch'
    assert simclr['fp_cache_view'] == 'augmented' and simclr['fp_train_view'] == 'augmented'
    assert simclr['per_step_retrieval'] is True and simclr['eval_batch_size'] == 200
    assert simclr['ema_decay'] == 0  # the trained weights themselves are evaluated
    clip = resolved('--fp_encoder', 'CLIP')
    assert clip['fp_train_view'] == 'cached' and clip['per_step_retrieval'] is False
    assert clip['fp_cache_view'] == 'augmented' and clip['freeze_diff_encoder'] is True


def test_improved_recipe_and_single_flags_win():
    improved = resolved('--recipe', 'improved')
    assert (improved['freeze_diff_encoder'], improved['eval_bn'], improved['fp_cache_view'],
            improved['fp_train_view'], improved['per_step_retrieval'], improved['eval_batch_size'],
            improved['ema_decay']) == (False, 'running', 'clean', 'cached', False, 2000, 0.999)
    one = resolved('--eval_bn', 'running')  # the authors' protocol but one improvement
    assert one['eval_bn'] == 'running' and one['freeze_diff_encoder'] is True and one['eval_batch_size'] == 2000
    assert resolved('--recipe', 'improved', '--ema_decay', '0')['ema_decay'] == 0


def test_cuda_graphs_replay_the_step_except_where_it_runs_a_frozen_image_network():
    """Measured on one H200: a graphed step was slower on the authors' paths (a frozen ResNet over the
    pixels, SimCLR re-encoding the views) and faster where the diffusion encoder trains."""
    assert resolved()['cuda_graph'] == 'eval' and resolved('--fp_encoder', 'CLIP')['cuda_graph'] == 'eval'
    assert resolved('--recipe', 'improved')['cuda_graph'] == 'all'
    assert resolved('--recipe', 'improved', '--fp_train_view', 'augmented')['cuda_graph'] == 'eval'
    assert resolved('--cuda_graph', 'off')['cuda_graph'] == 'off'
    assert resolved('--recipe', 'improved', '--cuda_graph', 'eval')['cuda_graph'] == 'eval'
    # a run recorded when the flag was on or off, resumed
    old = train_CIFAR.config([]).replace(cuda_graph=True)
    assert cuda_graph_mode(old) == 'eval' and cuda_graph_mode(old.replace(cuda_graph=False)) == 'off'
    for recorded, mode in ((True, 'eval'), (False, 'off'), (None, 'eval'), ('all', 'all')):  # what a resume runs
        saved = {**vars(train_CIFAR.config([])), 'cuda_graph': recorded}
        assert resumed_config(train_CIFAR.config([]), {'config': saved}).cuda_graph == mode


@pytest.mark.parametrize('recipe', ['authors', 'improved'])
@pytest.mark.parametrize('script', [train_CIFAR, train_Clothing1M, train_Food101N, train_WebVision])
def test_every_recipe_of_every_script_fills_every_flag_it_governs(script, recipe):
    # the accuracy benchmark compares these to decide whether a finished run is today's recipe's
    cfg = script.config(['--recipe', recipe])
    assert set(cfg.recipe_filled) == set(RECIPE_FLAGS) and all(getattr(cfg, n) is not None for n in RECIPE_FLAGS)
    assert set(script.RECIPES) == {'authors', 'improved'}


def test_a_script_table_that_misses_a_flag_is_an_error_of_the_script():
    table = {'authors': {k: v for k, v in train_CIFAR.RECIPES['authors'].items() if k != 'eval_bn'}}
    with pytest.raises(ValueError, match='does not say eval_bn'):
        resolve_recipe(train_CIFAR.config([]).replace(eval_bn=None), table)


def test_the_configuration_is_resolved_when_parsed_and_frozen_after():
    cfg = train_CIFAR.config(['--fp_encoder', 'CLIP'])
    assert (cfg.fp_train_view, cfg.eval_batch_size) == ('cached', 200)  # resolved: nothing left at None
    with pytest.raises(AttributeError, match='frozen'):
        cfg.k = 5
    chosen = cfg.replace(k=5)
    assert (chosen.k, cfg.k) == (5, 10) and chosen.fp_train_view == 'cached'
    with pytest.raises(AttributeError, match='frozen'):
        chosen.k = 6


def test_print_config_shows_every_resolved_flag_and_its_source(capsys):
    with pytest.raises(SystemExit) as done:
        train_CIFAR.config(['--print_config', '--fp_encoder', 'CLIP', '--eval_bn', 'running'])
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith('# train_CIFAR.py: the resolved configuration')
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith('  ')}
    assert lines['fp_encoder'].endswith('(command line)') and "'CLIP'" in lines['fp_encoder']
    assert lines['eval_bn'].endswith('(command line)') and lines['eval_batch_size'].split()[1] == '2000'
    assert lines['fp_train_view'].endswith('(recipe authors)') and lines['diff_encoder'].endswith('(script)')
    assert lines['grad_clip'].endswith('(default)') and '[recipe: ' in out
    # a resumed run goes on with what it recorded: the new run's table (exit 0) was printed, even for no run
    with pytest.raises(SetupError, match=r'--print_config shows the flags a new run resolves; the run --resume '
                                         r'runs/r goes on with those it recorded: read runs/r/config.json'):
        train_CIFAR.config(['--print_config', '--resume', 'runs/r'])


def test_file_datasets_key_the_centre_crops_unless_asked():
    assert file_recipe(train_Clothing1M)['fp_cache_view'] == 'clean'
    assert file_recipe(train_Clothing1M, '--fp_cache_view', 'augmented')['fp_cache_view'] == 'augmented'


def file_recipe(script, *flags):
    return vars(script.config(list(flags)))


@pytest.mark.parametrize('script', [train_Clothing1M, train_WebVision])
def test_authors_tune_the_resnet50_on_clothing1m_and_webvision(script):
    authors = file_recipe(script)
    assert (authors['diff_encoder'], authors['diff_backbone'], authors['freeze_diff_encoder']) == \
        ('resnet50_l', 'tuned', False)
    # their step re-encodes the augmented batch with f_p and retrieves its neighbours against the keys
    assert authors['fp_train_view'] == 'augmented' and authors['per_step_retrieval'] is True
    assert authors['fp_cache_view'] == 'clean' and authors['eval_bn'] == 'running'
    improved = file_recipe(script, '--recipe', 'improved')  # the fast path: cached backbone features
    assert (improved['diff_backbone'], improved['fp_train_view'], improved['per_step_retrieval']) == \
        ('cached', 'cached', False)
    cached = file_recipe(script, '--diff_backbone', 'cached')  # one flag: the authors' rest, cached
    assert cached['fp_train_view'] == 'cached' and cached['freeze_diff_encoder'] is False
    with pytest.raises(Exception, match='--diff_backbone tuned'):
        file_recipe(script, '--diff_backbone', 'cached', '--fp_train_view', 'augmented')


def test_authors_food101n_encoder_reads_augmented_images_in_training_mode_and_is_never_optimised():
    authors = file_recipe(train_Food101N)
    # their ResNet-50 reads each step's crops; their optimiser holds the denoiser only, and the encoder
    # never leaves training mode, so evaluation normalises with the statistics of their 512-image batches
    assert (authors['diff_backbone'], authors['freeze_diff_encoder'], authors['eval_bn'],
            authors['eval_batch_size']) == ('tuned', True, 'batch', 512)
    # f_p is read from the cache of one random crop + flip of each image (no re-encoding, no per-step
    # retrieval), unlike Clothing1M and WebVision
    assert (authors['fp_cache_view'], authors['fp_train_view'], authors['per_step_retrieval']) == \
        ('augmented', 'cached', False)
    assert file_recipe(train_Food101N, '--eval_batch_size', '100')['eval_batch_size'] == 100
    assert file_recipe(train_Food101N, '--eval_bn', 'running')['eval_batch_size'] == 2000
    # --diff_backbone cached alone: the authors' frozen encoder (random head) on cached centre crops
    cached = file_recipe(train_Food101N, '--diff_backbone', 'cached')
    assert (cached['freeze_diff_encoder'], cached['fp_cache_view']) == (True, 'augmented')
    improved = file_recipe(train_Food101N, '--recipe', 'improved')
    assert (improved['diff_backbone'], improved['freeze_diff_encoder'], improved['eval_bn'],
            improved['fp_cache_view']) == ('cached', False, 'running', 'clean')


def test_augmented_view_is_seeded_and_differs_from_the_clean_images(digits):
    images = digits.train_images[:300]
    a, b, c = augmented_view(images, 1), augmented_view(images, 1), augmented_view(images, 2)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, images)
    assert a.shape == images.shape and a.dtype == torch.uint8


def test_retrieval_on_the_fly_equals_the_table_when_the_query_is_the_key():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(60, 5, generator=g)
    noisy = torch.randint(0, 3, (60,), generator=g)
    from utils.retrieval import knn
    table = CandidateLabels(knn(keys, keys, 4)[1], noisy)
    idx = torch.tensor([3, 17, 42])
    assert torch.equal(retrieve_candidates(keys[idx], keys, noisy, noisy[idx], 4), table.candidates[idx])


def test_candidate_weights_on_known_rows():
    rows = torch.tensor([[1, 1, 2, 1], [2, 2, 2, 2]])
    labels, weights = CandidateLabels.sample_rows(rows, torch.Generator().manual_seed(3))
    expected = [3 / 7, 4 / 7] if labels[0] == 1 else [1 / 5, 4 / 5]
    assert labels[1] == 2 and weights.tolist() == pytest.approx(expected)


def small_run(tmp_path, digits, simclr18_path, *flags):
    small = subset(digits, 120, 40, size=16)
    cfg = digits_cfg(tmp_path, '--fp_encoder', 'SimCLR', '--fp_checkpoint', simclr18_path, '--diff_encoder',
                     'linear', '--nepoch', '2', '--warmup_epochs', '1', '--eval_every', '1', '--batch_size', '40',
                     '--n_samples', '0', *flags)
    return run(cfg, lambda c: small)


def test_authors_simclr_path_retrieves_every_step_for_the_augmented_query(tmp_path, digits, simclr18_path,
                                                                        monkeypatch):
    queries = []
    original = utils.trainer.retrieve_candidates
    monkeypatch.setattr(utils.trainer, 'retrieve_candidates', lambda q, *a: queries.append(q.clone()) or original(q, *a))
    monkeypatch.setattr(CandidateLabels, 'sample', lambda *a: pytest.fail('the cached table was used'))
    _, run_dir = small_run(tmp_path, digits, simclr18_path, '--recipe', 'authors')
    assert len(queries) == 2 * 3  # 2 epochs of 3 batches
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['fp_train_view'] == 'augmented' and config['fp_cache_view'] == 'augmented'
    assert load_torch(os.path.join(run_dir, 'last.pt'))['config']['per_step_retrieval'] is True


def test_authors_diffusion_encoder_is_never_optimised_the_improved_one_is(tmp_path, digits, simclr18_path):
    flags = ('--fp_train_view', 'cached', '--no-per_step_retrieval')
    _, authors_dir = small_run(tmp_path / 'a', digits, simclr18_path, '--recipe', 'authors', *flags)
    _, improved_dir = small_run(tmp_path / 'i', digits, simclr18_path, '--recipe', 'improved', *flags)
    authors, improved = (load_torch(os.path.join(d, 'last.pt'))['model'] for d in (authors_dir, improved_dir))
    cfg = digits_cfg(tmp_path, '--diff_encoder', 'linear')
    torch.manual_seed(cfg.seed)
    initial = build_model(cfg, 10, 512, (3, 16, 16)).state_dict()
    weights = [k for k in initial if k.startswith('diff_encoder.') and k.endswith('weight')]
    assert weights and all(torch.equal(authors[k], initial[k]) for k in weights)
    assert all(not torch.equal(improved[k], initial[k]) for k in weights)
    assert not torch.equal(authors['lin1.linear.weight'], initial['lin1.linear.weight'])


def test_batch_statistics_at_evaluation_make_predictions_depend_on_the_batch():
    cfg = train_CIFAR.config(['--diff_encoder', 'linear'])
    torch.manual_seed(0)
    model = build_model(cfg, 10, 8, (3, 4, 4))
    model.train()
    for _ in range(3):  # give the running statistics something to hold
        model.embed_x(torch.randn(64, 3, 4, 4) * 3 + 1)
    x = torch.randn(32, 3, 4, 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    embeddings = {}
    for eval_bn in ('batch', 'running'):
        evaluate.evaluation_mode(model, eval_bn)
        with torch.inference_mode():
            embeddings[eval_bn] = (model.embed_x(x)[:8], model.embed_x(x[:16])[:8])
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing updated
    alone, together = embeddings['batch']
    assert not torch.allclose(alone, together, atol=1e-4)  # the same 8 images, other companions
    torch.testing.assert_close(*embeddings['running'])
    evaluate.training_mode(model)
    assert all(m.track_running_stats for m in evaluate._encoder_batchnorms(model))


def test_stochastic_samples_beyond_one_calls_memory_are_drawn_in_several(monkeypatch):
    """--n_samples 10000 of a 2000-image batch of 3072-wide features repeated the batch into one 245 GB call,
    after the whole run had trained. Where the repeated inputs fit (every setting of the paper) the samples are
    one call, as before; beyond, as many calls as they need, each within SAMPLE_CALL_BYTES."""
    from model_diffusion import Diffusion
    cfg = train_CIFAR.config(['--diff_encoder', 'linear'])
    torch.manual_seed(0)
    model = build_model(cfg, 10, 8, (3, 4, 4))
    x, fp_x = torch.randn(6, 3, 4, 4), torch.randn(6, 8)
    with torch.inference_mode():
        x_e = model.embed_x(x)
    assert evaluate.sample_calls(100, fp_x, x_e) == [100]
    row = 6 * 4 * (8 + x_e.shape[1])  # the bytes of one repetition of the batch
    monkeypatch.setattr(evaluate, 'SAMPLE_CALL_BYTES', 3 * row)
    assert evaluate.sample_calls(8, fp_x, x_e) == [3, 3, 2]
    rows, real = [], evaluate.sample_y0
    monkeypatch.setattr(evaluate, 'sample_y0', lambda m, d, x_e, fp_x, *a, **kw: rows.append(len(fp_x)) or
                        real(m, d, x_e, fp_x, *a, **kw))
    labels, probs = evaluate.predict_labels(model, Diffusion(), [(x, fp_x)], n_samples=8)
    assert rows == [6, 18, 18, 12]  # the deterministic labels, then 3 + 3 + 2 samples of the batch
    assert probs.shape == (6, 10) and torch.allclose(probs.sum(1), torch.ones(6))
    assert torch.equal(8 * probs, (8 * probs).round())  # frequencies over all 8 samples
