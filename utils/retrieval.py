"""Label retrieval: exact k-nearest neighbours in f_p space and the candidate-label rule.

A training sample's candidates are k+1 noisy labels, by one of two rules (`--candidates`); the
search includes the sample itself, its own nearest neighbour:
- `neighbours+own` (the authors' CIFAR, Clothing1M and WebVision scripts): its k neighbours' labels
  plus its own label appended, so its own label counts twice;
- `neighbours` (the authors' Food-101N script): the labels of its k+1 nearest neighbours.
A third rule is the paper's ablation without label retrieval: `own`, the sample's own noisy label
as its one candidate (k and the neighbours are then unused).
Each time it is drawn, one candidate is picked uniformly. Its loss weight (`--candidate_weights`)
is the number of candidates that agree with the pick, normalised over the batch (`agreement`: the
authors' CIFAR and Food-101N scripts), or 1/batch for every sample (`uniform`: their Clothing1M and
WebVision scripts, which call the same retrieval with weighting off).
"""
import torch

from utils.runtime.progress import progress_bar


def knn(queries, keys, k, chunk_size=None, progress=False, exact_ties=True):
    """Indices (and distances) of the k nearest `keys` (Euclidean) for every query, nearest first and,
    at equal distances (duplicate images), the lower index first: so the k nearest are the first k of
    any larger search (a --k_select model table sliced to k is a plain --k run's table).

    Works in query chunks so only a chunk × N block of distances exists at a time; distances use
    ‖q‖² − 2q·k + ‖k‖² with a float32 matmul. `keys`: a tensor, or SearchKeys searched many times (their
    norms made once; with a bf16 copy, the shortlist search below). `exact_ties` False: ties as torch.topk
    breaks them (a search no larger one is compared with, without the host sync the tie check costs on a GPU).
    """
    keys = keys if isinstance(keys, SearchKeys) else SearchKeys(keys)
    if k > keys.n:
        raise ValueError(f'k={k} neighbours asked for, but only {keys.n} samples to search; '
                         f'lower --k')
    if queries.shape[1] != keys.values.shape[1]:
        raise ValueError(f'query width {queries.shape[1]} differs from key width {keys.values.shape[1]}')
    if chunk_size is None:
        chunk_size = max(1, min(queries.shape[0], _chunk_bytes(keys.values.device) // (4 * max(1, keys.n))))
    all_dist, all_idx = [], []
    starts = range(0, queries.shape[0], chunk_size)
    for start in progress_bar(starts, desc='kNN', disable=not progress, leave=False):
        q = queries[start:start + chunk_size].float()
        if keys.bf16 is not None and not exact_ties:
            dist, idx = shortlisted(q, keys, k)
        else:
            d2 = squared_distances(q, keys)
            dist, idx = nearest(d2, k) if exact_ties else torch.topk(d2, k, dim=1, largest=False, sorted=True)
            del d2  # before the next chunk's block is made: one chunk × N block at a time
        all_dist.append(dist.clamp(min=0).sqrt())
        all_idx.append(idx)
    return torch.cat(all_dist), torch.cat(all_idx)


def squared_distances(q, keys):
    """‖q‖² − 2q·k + ‖k‖² for a chunk of queries against SearchKeys, made in one chunk × N block: the same
    float32 operations in the same order as the expression written out (−M + a equals a − M exactly),
    without the two temporaries of its size that the expression would hold at once."""
    block = torch.mm(2 * q, keys.values.T)
    return block.neg_().add_(q.square().sum(1, keepdim=True)).add_(keys.sq_norms)


class SearchKeys:
    """Keys searched again and again (the authors' per-step retrieval: each step's queries against the same
    cached keys): their float32 values and squared norms made once, not at every search, and with
    `shortlist` a bf16 copy for the shortlist search (`shortlisted`)."""

    def __init__(self, keys, shortlist=False):
        self.values = keys.float()
        self.sq_norms = self.values.square().sum(1)
        self.bf16 = self.values.bfloat16() if shortlist else None

    @property
    def n(self):
        return self.values.shape[0]


# The bf16 pass keeps this many times k candidates. Its error (inputs rounded to 8 significant bits,
# products summed in float32) is far smaller than the distance between a k-th and a 4k-th neighbour, even
# for features as alike as a random-weight ResNet's (on 1,000 augmented CIFAR-10 queries against 5,000 keys:
# top-10 sets equal to float32's 19% of the time from bf16 alone, 96% with 2k re-ranked, 99.7% with 4k,
# where the rest are float32 ties); tests/test_retrieval.py and tests/test_gpu.py bound it.
SHORTLIST = 4


def shortlisted(q, keys, k):
    """The k nearest keys of each query as a float32 search finds them, in a fraction of its time: a bf16
    matmul (tensor cores; half the memory traffic) shortlists the SHORTLIST·k nearest, whose float32
    distances then decide. The neighbours differ from the full float32 search's only where a true
    neighbour misses the shortlist, or two distances tie to float32 rounding."""
    m = min(keys.n, SHORTLIST * k)
    rough = keys.sq_norms - 2 * bf16_products(q, keys.bf16)  # ‖q‖² is the same along a row: left out
    short = torch.topk(rough, m, dim=1, largest=False, sorted=False).indices
    near = keys.values[short]  # chunk × m × width
    d2 = q.square().sum(1, keepdim=True) - 2 * torch.bmm(near, q[:, :, None])[..., 0] + keys.sq_norms[short]
    dist, pos = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    return dist, short.gather(1, pos)


def bf16_products(q, keys_bf16):
    """q · keysᵀ from bf16-rounded inputs, summed in float32: one tensor-core matmul on CUDA; on the CPU,
    which has no such kernel, a float32 matmul of the same rounded inputs (what tests compare)."""
    if q.is_cuda:
        return torch.mm(q.bfloat16(), keys_bf16.T, out_dtype=torch.float32)
    return q.bfloat16().float() @ keys_bf16.float().T


def nearest(d2, k):
    """The k smallest entries of each row of d2 and their columns, ascending, ties to the lower column
    (torch.topk breaks ties as it likes, and not alike for every k)."""
    if k >= d2.shape[1]:
        return torch.sort(d2, dim=1, stable=True)
    dist, idx = torch.topk(d2, k + 1, dim=1, largest=False)  # one more: does a tie cross the k-th place?
    by_column = torch.argsort(idx, dim=1)
    dist, idx = dist.gather(1, by_column), idx.gather(1, by_column)
    by_distance = torch.sort(dist, dim=1, stable=True).indices
    dist, idx = dist.gather(1, by_distance), idx.gather(1, by_distance)
    crossing = (dist[:, k - 1] == dist[:, k]).nonzero().flatten()
    # which of the tied columns make the cut is read from the whole row, a slice of rows at a time (with
    # few distinct distances, binary features say, nearly every row ties: sorting them at once would
    # need several times the chunk's memory)
    for rows in crossing.split(max(1, d2.shape[0] // 16)):
        dist[rows], idx[rows] = [t[:, :k + 1] for t in torch.sort(d2[rows], dim=1, stable=True)]
    return dist[:, :k], idx[:, :k]


def _chunk_bytes(device):
    """Memory for one chunk of float32 distances: 1 GiB on the CPU, up to 8 GiB of free GPU memory."""
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(8 << 30, free // 4))
    return 1 << 30


CANDIDATE_RULES = ('neighbours+own', 'neighbours', 'own')
CANDIDATE_WEIGHTS = ('agreement', 'uniform')


def neighbours_to_search(k, rule):
    """How many nearest neighbours a rule reads to make its candidates (`own` reads none, but the
    run's neighbour table and retrieval check still hold the nearest one, itself)."""
    if rule not in CANDIDATE_RULES:
        raise ValueError(f'unknown --candidates {rule!r}; choose from {", ".join(CANDIDATE_RULES)}')
    return {'neighbours': k + 1, 'own': 1}.get(rule, k)


def candidate_rows(neighbour_labels, own_labels, rule):
    """The candidates of a rule from the labels of the neighbours it searched (N × its count)."""
    if rule == 'own':  # no retrieval: the noisy label is the only target
        return own_labels[:, None].long()
    own = [own_labels[:, None]] if rule == 'neighbours+own' else []
    return torch.cat([neighbour_labels, *own], dim=1).long()


def neighbour_table(features, k, **search):
    """The k nearest training samples of every training sample (itself included), by exact search."""
    return knn(features, features, k, progress=True, **search)[1]


neighbour_table.version = 2  # 2: equal distances to the lower index (1: as torch.topk broke the ties)
# its cache key keeps the name the computation had when such caches were first written (a module
# utils.cache, since split up), so those caches stay valid: utils/encoders/cache.py keys every cached computation by name
neighbour_table.cache_name = 'utils.cache.neighbour_table'


def retrieve_candidates(queries, keys, key_labels, own_labels, k, rule='neighbours+own', **search):
    """Candidates of a batch searched now (the authors' SimCLR path: each step's augmented query
    against the cached keys, SearchKeys made once per run), by the candidate rule."""
    if rule == 'own':
        return candidate_rows(None, own_labels, rule)
    _, idx = knn(queries, keys, neighbours_to_search(k, rule), chunk_size=queries.shape[0], exact_ties=False,
                 **search)
    return candidate_rows(key_labels[idx], own_labels, rule)


def majority_vote(label_rows, n_class=None):
    """The most frequent label of each row (ties to the lowest class)."""
    n_class = n_class or int(label_rows.max()) + 1
    votes = torch.zeros(label_rows.shape[0], n_class, device=label_rows.device)
    votes.scatter_add_(1, label_rows, torch.ones_like(label_rows, dtype=torch.float))
    return votes.argmax(1)


class CandidateLabels:
    """The k+1 candidate labels of every training sample, and the per-draw pick and weight."""

    def __init__(self, neighbour_idx, noisy_labels, rule='neighbours+own', weights='agreement'):
        """neighbour_idx: N × m indices into the training set (m = neighbours_to_search(k, rule));
        noisy_labels: N noisy labels."""
        neighbours_to_search(0, rule)  # refuses an unknown rule
        if weights not in CANDIDATE_WEIGHTS:
            raise ValueError(f'unknown --candidate_weights {weights!r}; choose from {", ".join(CANDIDATE_WEIGHTS)}')
        self.uniform = weights == 'uniform'
        noisy_labels = noisy_labels.long()
        self.candidates = candidate_rows(noisy_labels[neighbour_idx], noisy_labels, rule)

    def to(self, device):
        self.candidates = self.candidates.to(device)
        return self

    def sample(self, idx, generator=None):
        """For the samples `idx`: one uniformly picked candidate each, and weights summing to 1."""
        return self.sample_rows(self.candidates[idx], generator, self.uniform)

    @staticmethod
    def sample_rows(candidates, generator=None, uniform=False):
        """One uniformly picked candidate per row; its weight is how many of the row's candidates agree
        with the pick (or 1 where `uniform`), normalised over the batch. Also serves rows retrieved on
        the fly."""
        pick = torch.randint(0, candidates.shape[1], (candidates.shape[0],), device=candidates.device,
                             generator=generator)
        labels = candidates[torch.arange(candidates.shape[0], device=candidates.device), pick]
        agree = candidates == labels[:, None]
        counts = torch.ones_like(labels, dtype=torch.float) if uniform else agree.sum(1).float()
        return labels, counts / counts.sum()

    def majority(self):
        """The most frequent candidate per sample (ties to the lowest class): a retrieval-only label."""
        return majority_vote(self.candidates)
