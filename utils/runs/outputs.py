"""What a finished run leaves for researchers: denoised training labels, class probabilities, plots."""
import csv
import io
import os

import numpy as np

from utils.runs.folders import FINISHED
from utils.storage.saving import atomic_write

LABEL_RANKING = 'train_label_ranking.csv'  # a run's editable output (utils/runs/folders.EDITABLE_SUFFIXES)
PREDICTION_FILES = ('_labels.npy', '_probs.npy', '.csv', '.json')  # predict.py's, after predict_<split|folder>
# what the end of a run writes from its best.pt (utils/engine.finish_outputs, summary.json), and predict.py
# after it: a resume that trains on makes them stale (stale_outputs)
FINISHED_OUTPUTS = (FINISHED, 'train_denoised_labels.npy', 'train_noisy_labels.npy', 'train_probs.npy',
                    LABEL_RANKING, 'accuracy.png', 'confusion_noisy_vs_denoised.png',
                    'confusion_clean_vs_denoised.png', 'confusion_clean_vs_noisy.png')
PREDICTED = tuple(f'predict_{what}{suffix}' for what in ('train', 'val', 'test', 'folder')
                  for suffix in PREDICTION_FILES)


def stale_outputs(run_dir):
    """The files of FINISHED_OUTPUTS and PREDICTED in the run folder, summary.json (the mark of a finished
    run) first."""
    return [name for name in (*FINISHED_OUTPUTS, *PREDICTED) if os.path.lexists(os.path.join(run_dir, name))]


def save_npy(array, path):
    atomic_write(path, lambda f: np.save(f, array))


def save_figure(fig, path):
    """A matplotlib figure as a PNG, written atomically like every other output."""
    image = io.BytesIO()
    fig.savefig(image, format='png', dpi=120)
    atomic_write(path, lambda f: f.write(image.getvalue()))


def confusion(rows, cols, n_class):
    m = np.zeros((n_class, n_class), dtype=np.int64)
    np.add.at(m, (np.asarray(rows), np.asarray(cols)), 1)
    return m


def plot_accuracy(history, path, noisy_label_accuracy=None, val_name='validation (clean)'):
    """Validation and test accuracy per evaluated epoch, beside the noisy labels' own accuracy."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    epochs = [r['epoch'] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [100 * r['val_acc'] for r in history], 'o-', label=val_name)
    ax.plot(epochs, [100 * r['test_acc'] for r in history], 's-', label='test (clean)')
    if noisy_label_accuracy is not None:
        ax.axhline(100 * noisy_label_accuracy, color='grey', linestyle='--', label='noisy training labels')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('epoch')
    ax.set_ylabel('accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_confusion(matrix, row_name, col_name, path, class_names=None):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n = matrix.shape[0]
    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5 + n / 20, 4.5 + n / 20))
    im = ax.imshow(normalised, cmap='viridis', vmin=0, vmax=1)
    ax.set_xlabel(col_name)
    ax.set_ylabel(row_name)
    if n <= 20:
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        if class_names:
            ax.set_xticklabels(class_names, rotation=90, fontsize=7)
            ax.set_yticklabels(class_names, fontsize=7)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=6,
                            color='black' if normalised[i, j] > 0.5 else 'white')
    fig.colorbar(im, ax=ax, label=f'fraction of each {row_name} row')
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_training_outputs(run_dir, noisy, denoised, probs, n_class, clean=None, class_names=None):
    """Denoised labels and class probabilities for every training sample, plus confusion plots (n_class
    square: the dataset's classes, whether or not the labels use them all).

    `train_probs.npy` rows sum to 1 and can go straight into label-issue tools, e.g.
    cleanlab's find_label_issues(labels=noisy, pred_probs=probs).
    """
    save_npy(denoised.astype(np.int64), os.path.join(run_dir, 'train_denoised_labels.npy'))
    save_npy(noisy.astype(np.int64), os.path.join(run_dir, 'train_noisy_labels.npy'))
    if probs is not None:
        save_npy(probs.astype(np.float32), os.path.join(run_dir, 'train_probs.npy'))
    plot_confusion(confusion(noisy, denoised, n_class), 'noisy label', 'denoised label',
                   os.path.join(run_dir, 'confusion_noisy_vs_denoised.png'), class_names)
    facts = {'denoised_changed_fraction': float(np.mean(noisy != denoised))}
    if probs is not None:
        # the deterministic DDIM's label against the class the stochastic samples give most often (the
        # lowest among ties): where they part, the model is unsure, and the probabilities rank less well
        facts['samples_agree_with_denoised'] = float(np.mean(probs.argmax(1) == denoised))
    if clean is not None:
        plot_confusion(confusion(clean, denoised, n_class), 'clean label', 'denoised label',
                       os.path.join(run_dir, 'confusion_clean_vs_denoised.png'), class_names)
        plot_confusion(confusion(clean, noisy, n_class), 'clean label', 'noisy label',
                       os.path.join(run_dir, 'confusion_clean_vs_noisy.png'), class_names)
        facts['denoised_label_accuracy'] = float(np.mean(clean == denoised))
    return facts


def ranking_order(noisy, denoised, probs):
    """The rows, most likely mislabelled first. `probs` (N × classes, rows summing to 1) estimates
    p(y|x). Rows whose denoised label (the deterministic DDIM's, the model's answer) differs from the
    noisy one come first; within each part, the lower the probability of the noisy label, the earlier
    (ties: the more confident denoised label first)."""
    rows = np.arange(len(noisy))
    return np.lexsort((rows, -probs[rows, denoised], probs[rows, noisy], noisy == denoised))


def write_label_ranking(path, paths, class_names, noisy, denoised, probs):
    """A CSV of path,noisy_label,denoised_label,confidence in ranking_order; `confidence` is the
    probability of the denoised label."""
    names = class_names or [str(c) for c in range(probs.shape[1])]
    confidence = probs[np.arange(len(noisy)), denoised]
    order = ranking_order(noisy, denoised, probs)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(('path', 'noisy_label', 'denoised_label', 'confidence'))
    writer.writerows((paths[i], names[noisy[i]], names[denoised[i]], f'{confidence[i]:.4f}') for i in order)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    return order


def retrieval_votes(candidates, n_class):
    """The share of each image's candidate labels (a tensor, N × its count) in each class: N × n_class, rows
    summing to 1."""
    labels = candidates.cpu().numpy()
    votes = np.zeros((len(labels), n_class))
    np.add.at(votes, (np.arange(len(labels))[:, None], labels), 1.0)
    return votes / labels.shape[1]


def rank_file_labels(run_dir, splits, noisy, denoised, probs, candidates, n_samples):
    """For image files: train_label_ranking.csv (the likely mislabelled first, by path and class
    name) and classes.txt. Without sampled probabilities (--n_samples 0) the ranking uses the share
    of each image's retrieved candidate labels (its neighbours' noisy labels and its own) per class."""
    if probs is None:
        probs = retrieval_votes(candidates, splits.n_class)
        how = 'retrieval votes (neighbours\' noisy labels; --n_samples 0)'
    else:
        how = f'class probabilities of {n_samples} stochastic DDIM samples'
    write_label_ranking(os.path.join(run_dir, LABEL_RANKING), splits.train_paths, splits.class_names,
                        noisy, denoised, probs)
    if splits.class_names:
        atomic_write(os.path.join(run_dir, 'classes.txt'), lambda f: f.write(('\n'.join(splits.class_names) + '\n').encode()))
    return {'label_ranking': how}
