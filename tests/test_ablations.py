"""The paper's ablations, one flag each, on digits: training without label retrieval (--candidates
own) and a denoiser without the f_p conditioning (--no-fp_conditioning). Each test fails if its switch
is ignored: the loss would learn retrieved labels, or the first layer would read f_p."""
import json
import os

import pytest
import torch
from test_engine import digits_cfg
from test_method import picked_labels

from conftest import subset
from model_diffusion import Denoiser
from utils.diff_encoders import build_diff_encoder
from utils.engine import run
from utils.retrieval import CandidateLabels, retrieve_candidates
from utils.storage.loading import load_torch
from utils.trainer import Trainer


def spied_run(tmp_path, digits, *flags):
    """A 1-epoch digits run, recording each step's samples and loss inputs; (steps, trainer data, summary)."""
    steps, seen = [], {}
    original_loss, original_step = Trainer._step_loss, Trainer.train_step

    def spy_loss(self, x, y_t, t, fp_x, noise, weights):
        steps[-1].update(y_t=y_t, t=t, noise=noise, weights=weights)
        seen.update(data=self.data, diffusion=self.diffusion)
        return original_loss(self, x, y_t, t, fp_x, noise, weights)

    def spy_step(self, idx, *decoded):
        steps.append({'idx': idx})
        return original_step(self, idx, *decoded)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, '_step_loss', spy_loss)
        mp.setattr(Trainer, 'train_step', spy_step)
        summary, run_dir = run(digits_cfg(tmp_path, '--nepoch', '1', '--n_samples', '0', *flags),
                               lambda c: subset(digits, 600, 100))
    return steps, seen, summary, run_dir


def test_without_retrieval_the_loss_learns_the_noisy_labels_alone(tmp_path, digits):
    steps, seen, summary, run_dir = spied_run(tmp_path, digits, '--candidates', 'own')
    noisy = seen['data'].noisy_labels
    assert seen['data'].candidates.candidates.shape[1] == 1
    for step in steps:
        assert torch.equal(picked_labels(step, seen['diffusion']), noisy[step['idx']])  # the own label, always
        torch.testing.assert_close(step['weights'], torch.full_like(step['weights'], 1 / len(step['idx'])))
    # the run reports, and its "retrieved" labels are the noisy ones themselves
    assert summary['retrieval_majority_accuracy'] == pytest.approx(summary['noisy_label_accuracy'])
    assert 0 <= summary['test_acc'] <= 1
    assert json.load(open(os.path.join(run_dir, 'config.json')))['candidates'] == 'own'


def test_without_retrieval_the_per_step_search_is_skipped_too():
    own = torch.tensor([3, 1, 2])
    rows = retrieve_candidates(torch.randn(3, 4), torch.randn(9, 4), torch.zeros(9, dtype=torch.long), own, k=5,
                               rule='own')
    assert torch.equal(rows, own[:, None])
    labels, weights = CandidateLabels.sample_rows(rows)
    assert torch.equal(labels, own) and torch.allclose(weights, torch.full((3,), 1 / 3))


def test_without_fp_conditioning_the_first_layer_reads_y_t_alone():
    torch.manual_seed(0)
    t, y_t, x_e = torch.full((5,), 50), torch.randn(5, 4), torch.ones(5, 16)
    fp_a, fp_b = torch.randn(5, 6), torch.randn(5, 6)
    outputs = {}
    for conditioned in (True, False):
        model = Denoiser(4, 6, 16, build_diff_encoder('fp_mlp', 16, 6, None), n_timesteps=100,
                         fp_conditioning=conditioned).eval()
        assert model.lin1.linear.in_features == (4 + 6 if conditioned else 4)
        with torch.no_grad():
            outputs[conditioned] = [model.head(x_e, y_t, t, fp) for fp in (fp_a, fp_b)]
    assert not torch.allclose(*outputs[True])        # f_p reaches the output ...
    torch.testing.assert_close(*outputs[False])      # ... unless the switch is off


def test_a_run_without_fp_conditioning_trains_and_reports(tmp_path, digits):
    _, _, summary, run_dir = spied_run(tmp_path, digits, '--no-fp_conditioning')
    weights = load_torch(os.path.join(run_dir, 'best.pt'))['model']
    config = json.load(open(os.path.join(run_dir, 'config.json')))
    assert config['fp_conditioning'] is False
    assert weights['lin1.linear.weight'].shape == (config['feature_dim'], digits.n_class)
    assert 0 <= summary['test_acc'] <= 1 and summary['best_epoch'] == 0
