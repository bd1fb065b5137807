"""Label retrieval: exact k-nearest neighbours in f_p space and the candidate-label rule.

A training sample's candidates are the noisy labels of its k neighbours (the search includes the
sample itself, its own nearest neighbour) plus its own noisy label appended, k+1 labels in all.
Each time it is drawn, one candidate is picked uniformly; its loss weight is the number of
candidates that agree with the pick, normalised over the batch.
"""
import torch
from tqdm import tqdm


def knn(queries, keys, k, chunk_size=None, progress=False):
    """Indices (and distances) of the k nearest `keys` (Euclidean) for every query, nearest first.

    Works in query chunks so only a chunk × N block of distances exists at a time; distances use
    ‖q‖² − 2q·k + ‖k‖² with a float32 matmul.
    """
    if k > keys.shape[0]:
        raise ValueError(f'k={k} neighbours asked for, but only {keys.shape[0]} samples to search; '
                         f'lower --k')
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f'query width {queries.shape[1]} differs from key width {keys.shape[1]}')
    keys = keys.float()
    key_sq = keys.square().sum(1)
    if chunk_size is None:
        chunk_size = max(1, min(queries.shape[0], _chunk_bytes(keys.device) // (4 * max(1, keys.shape[0]))))
    all_dist, all_idx = [], []
    starts = range(0, queries.shape[0], chunk_size)
    for start in tqdm(starts, desc='kNN', disable=not progress, leave=False):
        q = queries[start:start + chunk_size].float()
        d2 = q.square().sum(1, keepdim=True) - 2 * q @ keys.T + key_sq
        dist, idx = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        all_dist.append(dist.clamp(min=0).sqrt())
        all_idx.append(idx)
    return torch.cat(all_dist), torch.cat(all_idx)


def _chunk_bytes(device):
    """Memory for one chunk of float32 distances: 1 GiB on the CPU, up to 8 GiB of free GPU memory."""
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(8 << 30, free // 4))
    return 1 << 30


def retrieve_candidates(queries, keys, key_labels, own_labels, k):
    """Candidates of a batch searched now (the authors' SimCLR path: each step's augmented query
    against the cached keys): the k neighbours' noisy labels plus the sample's own noisy label."""
    _, idx = knn(queries, keys, k, chunk_size=queries.shape[0])
    return torch.cat([key_labels[idx], own_labels[:, None]], dim=1).long()


def majority_vote(label_rows, n_class=None):
    """The most frequent label of each row (ties to the lowest class)."""
    n_class = n_class or int(label_rows.max()) + 1
    votes = torch.zeros(label_rows.shape[0], n_class, device=label_rows.device)
    votes.scatter_add_(1, label_rows, torch.ones_like(label_rows, dtype=torch.float))
    return votes.argmax(1)


class CandidateLabels:
    """The k+1 candidate labels of every training sample, and the per-draw pick and weight."""

    def __init__(self, neighbour_idx, noisy_labels):
        """neighbour_idx: N × k indices into the training set; noisy_labels: N noisy labels."""
        noisy_labels = noisy_labels.long()
        self.candidates = torch.cat([noisy_labels[neighbour_idx], noisy_labels[:, None]], dim=1)

    @property
    def n_candidates(self):
        return self.candidates.shape[1]

    def to(self, device):
        self.candidates = self.candidates.to(device)
        return self

    def sample(self, idx, generator=None):
        """For the samples `idx`: one uniformly picked candidate each, and batch-normalised weights."""
        return self.sample_rows(self.candidates[idx], generator)

    @staticmethod
    def sample_rows(candidates, generator=None):
        """One uniformly picked candidate per row; its weight is how many of the row's candidates agree
        with the pick, normalised over the batch. Also serves rows retrieved on the fly."""
        pick = torch.randint(0, candidates.shape[1], (candidates.shape[0],), device=candidates.device,
                             generator=generator)
        labels = candidates[torch.arange(candidates.shape[0], device=candidates.device), pick]
        counts = (candidates == labels[:, None]).sum(1).float()
        return labels, counts / counts.sum()

    def majority(self):
        """The most frequent candidate per sample (ties to the lowest class): a retrieval-only label."""
        return majority_vote(self.candidates)
