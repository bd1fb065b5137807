"""kNN against brute force, and the candidate-label rule on hand-built examples."""
import pytest
import torch

from benchmarks.common import cifar_like_features, same_sets
from utils.retrieval import (CandidateLabels, candidate_rows, knn, neighbour_table, neighbours_to_search,
                             retrieve_candidates)


@pytest.mark.parametrize('chunk', [None, 1, 7, 1000])
def test_knn_matches_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    data = torch.randn(300, 16, generator=g)
    queries = torch.randn(50, 16, generator=g)
    dist, idx = knn(queries, data, k=5, chunk_size=chunk)
    ref = torch.cdist(queries.double(), data.double())
    ref_dist, ref_idx = ref.topk(5, largest=False)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist.double(), ref_dist, atol=1e-4, rtol=1e-4)


def test_knn_self_search_puts_each_sample_first():
    data = torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    _, idx = knn(data, data, k=3, chunk_size=64)
    assert torch.equal(idx[:, 0], torch.arange(200))


def test_knn_on_constructed_clusters():
    # points on a line at 0, 1, 3, 6, 10: each point first, then by distance
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    _, idx = knn(x, x, k=3)
    assert idx.tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 4], [4, 3, 2]]


@pytest.mark.parametrize('chunk', [None, 5])
def test_equal_distances_go_to_the_lower_index_whatever_k(chunk):
    """Duplicate images tie exactly: the k nearest are the lower-indexed of them, and a search for k is
    the first k columns of a larger one (what --k_select model's one table relies on)."""
    g = torch.Generator().manual_seed(2)
    distinct = torch.randn(12, 4, generator=g)
    keys = distinct[torch.randint(0, 12, (60,), generator=g)]  # every row five times on average
    _, largest = knn(keys, keys, 40, chunk_size=chunk)
    for k in (1, 2, 3, 5, 8, 13, 40):
        dist, idx = knn(keys, keys, k, chunk_size=chunk)
        assert torch.equal(idx, largest[:, :k]), k
        # nearest first; at equal distances, ascending index
        assert bool((dist[:, 1:] >= dist[:, :-1]).all())
        tied = dist[:, 1:] == dist[:, :-1]
        assert bool((idx[:, 1:] > idx[:, :-1])[tied].all())
    # the first neighbour of a duplicate is the lowest-indexed copy of it
    first_copy = torch.tensor([int((keys == row).all(1).nonzero()[0]) for row in keys])
    assert torch.equal(largest[:, 0], first_copy)
    # every key in a query's cut is no farther than every key left out of it
    d2 = torch.cdist(keys.double(), keys.double())
    for k in (3, 8):
        kept = torch.zeros_like(d2, dtype=torch.bool).scatter_(1, largest[:, :k], True)
        assert bool((d2.masked_fill(~kept, -1).amax(1) <= d2.masked_fill(kept, float('inf')).amin(1) + 1e-6).all())


def test_knn_refuses_k_larger_than_data():
    with pytest.raises(ValueError, match='lower --k'):
        knn(torch.zeros(3, 2), torch.zeros(3, 2), k=4)


def test_candidates_and_weights_on_a_hand_built_example():
    noisy = torch.tensor([0, 1, 1, 2])
    neighbours = torch.tensor([[0, 1, 2],   # labels 0,1,1 + own 0 → [0,1,1,0]
                               [1, 2, 3],   # 1,1,2 + own 1 → [1,1,2,1]
                               [2, 1, 0],   # 1,1,0 + own 1 → [1,1,0,1]
                               [3, 3, 3]])  # 2,2,2 + own 2 → [2,2,2,2]
    c = CandidateLabels(neighbours, noisy)
    assert c.candidates.tolist() == [[0, 1, 1, 0], [1, 1, 2, 1], [1, 1, 0, 1], [2, 2, 2, 2]]
    torch.manual_seed(0)
    idx = torch.tensor([1, 3])
    labels, weights = c.sample(idx)
    counts = torch.tensor([(c.candidates[i] == l).sum().item() for i, l in zip(idx.tolist(), labels.tolist())],
                          dtype=torch.float)
    torch.testing.assert_close(weights, counts / counts.sum())
    assert weights.sum().item() == pytest.approx(1.0)


def test_candidate_pick_is_uniform():
    noisy = torch.tensor([0, 1, 2, 3, 4])
    c = CandidateLabels(torch.tensor([[1, 2, 3, 4]]).expand(5, 4), noisy)
    torch.manual_seed(0)
    labels, _ = c.sample(torch.zeros(50000, dtype=torch.long))
    freq = torch.bincount(labels, minlength=5).float() / 50000
    # sample 0's candidates are 1,2,3,4 and its own 0: each 1/5
    torch.testing.assert_close(freq, torch.full((5,), 0.2), atol=0.01, rtol=0)


def test_majority_vote():
    c = CandidateLabels(torch.tensor([[0, 1, 2], [1, 1, 2], [2, 1, 0]]), torch.tensor([2, 1, 0]))
    # candidates: [2,1,0,2] → 2; [1,1,0,1] → 1; [0,1,2,0] → 0
    assert c.majority().tolist() == [2, 1, 0]


def test_weak_fp_is_reported_before_training():
    from utils.prepare import check_retrieval
    g = torch.Generator().manual_seed(0)
    n_class, n = 10, 2000
    clean = torch.randint(0, n_class, (n,), generator=g)
    noisy = torch.where(torch.rand(n, generator=g) < 0.35, torch.randint(0, n_class, (n,), generator=g), clean)
    val = torch.randint(0, n_class, (300,), generator=g)
    noisy_accuracy = float((noisy == clean).float().mean())
    informative = {'train': torch.nn.functional.one_hot(clean, n_class).float() + 0.1 * torch.randn(n, n_class, generator=g),
                   'val': torch.nn.functional.one_hot(val, n_class).float()}
    lines = []
    good = check_retrieval(informative, noisy, val, 10, n_class, noisy_accuracy, lines.append)
    assert good > 0.95 and not any(line.startswith('warning') for line in lines)
    uninformative = {'train': torch.randn(n, 16, generator=g), 'val': torch.randn(300, 16, generator=g)}
    lines = []
    weak = check_retrieval(uninformative, noisy, val, 10, n_class, noisy_accuracy, lines.append)
    assert weak < 0.3 and lines[-1].startswith('warning: f_p neighbourhoods are less pure')
    assert lines[-1].endswith('or let --k_choices 1 10 50 --k_select model choose k by validation accuracy '
                              '(k 1: the least retrieval)')
    lines = []  # validation labels held out of the noisy training labels: agreement, not accuracy
    check_retrieval(informative, noisy, val, 10, n_class, None, lines.append, noisy_val=True)
    assert lines[0].startswith('f_p check: the majority noisy label of 10 training neighbours agrees with the label '
                               'of ') and lines[0].endswith('validation images (held out with their noisy labels: no --val)')
    lines = []  # where --k_choices chose k already, the advice is only the stronger f_p
    check_retrieval(uninformative, noisy, val, 10, n_class, noisy_accuracy, lines.append, chosen=True)
    assert lines[-1].endswith('use a stronger --fp_encoder')


def test_k_choices_pick_the_k_whose_neighbourhoods_vote_best_on_validation():
    from utils.prepare import select_k
    g = torch.Generator().manual_seed(0)
    n_class, n = 5, 1000
    clean = torch.arange(n) % n_class
    noisy = torch.where(torch.rand(n, generator=g) < 0.3, (clean + 1) % n_class, clean)  # 30% flipped
    val = torch.arange(200) % n_class
    centres = 5 * torch.eye(n_class)
    feats = {'train': centres[clean] + torch.randn(n, n_class, generator=g),
             'val': centres[val] + torch.randn(200, n_class, generator=g)}
    lines = []
    k, scores = select_k(feats, noisy, val, [1, 51], n_class, lines.append)
    # one neighbour carries its flipped label 30% of the time; 51 of them vote it away
    assert k == 51 and scores[1] < 0.8 and scores[51] > 0.95
    assert lines == [f'--k_choices: validation neighbour-majority accuracy k 1 {100 * scores[1]:.1f}%, '
                     f'k 51 {100 * scores[51]:.1f}%; k = 51']
    clean_feats = {'train': centres[clean], 'val': centres[val]}
    assert select_k(clean_feats, clean, val, [7, 3], n_class, lines.append)[0] == 3  # a tie: the smaller k


def test_neighbours_rule_takes_k_plus_1_neighbours_and_appends_nothing():
    # the authors' Food-101N rule: the labels of the k+1 nearest (the sample itself first)
    noisy = torch.tensor([0, 1, 1, 2])
    k = 2
    assert neighbours_to_search(k, 'neighbours') == 3 and neighbours_to_search(k, 'neighbours+own') == 2
    neighbours = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 1, 0], [3, 2, 1]])
    c = CandidateLabels(neighbours, noisy, rule='neighbours')
    assert c.candidates.tolist() == [[0, 1, 1], [1, 1, 2], [1, 1, 0], [2, 1, 1]]
    # the default rule on the same table's first k columns: own label appended, counted twice
    own = CandidateLabels(neighbours[:, :k], noisy)
    assert own.candidates.tolist() == [[0, 1, 0], [1, 1, 1], [1, 1, 1], [2, 1, 2]]
    # the ablation without retrieval: the own label alone, whatever the table holds
    assert CandidateLabels(neighbours, noisy, rule='own').candidates.tolist() == [[0], [1], [1], [2]]
    with pytest.raises(ValueError, match='--candidates'):
        CandidateLabels(neighbours, noisy, rule='mine')


def test_searched_now_and_cached_table_agree_under_the_neighbours_rule():
    keys = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    noisy = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(3))
    table = CandidateLabels(knn(keys, keys, neighbours_to_search(4, 'neighbours'))[1], noisy, rule='neighbours')
    idx = torch.tensor([0, 7, 39])
    rows = retrieve_candidates(keys[idx], keys, noisy, noisy[idx], 4, 'neighbours')
    assert rows.shape == (3, 5) and torch.equal(rows, table.candidates[idx])


def test_uniform_weights_pick_the_same_labels_and_weigh_each_sample_alike():
    noisy = torch.tensor([0, 1, 1, 2])
    neighbours = torch.tensor([[0, 1, 2], [1, 2, 3], [2, 1, 0], [3, 3, 3]])
    idx = torch.tensor([0, 1, 2, 3, 1])
    torch.manual_seed(5)
    by_agreement = CandidateLabels(neighbours, noisy).sample(idx)
    torch.manual_seed(5)
    labels, weights = CandidateLabels(neighbours, noisy, weights='uniform').sample(idx)
    assert torch.equal(labels, by_agreement[0]) and not torch.equal(weights, by_agreement[1])
    torch.testing.assert_close(weights, torch.full((5,), 0.2))
    with pytest.raises(ValueError, match='--candidate_weights'):
        CandidateLabels(neighbours, noisy, weights='count')


def test_keys_searched_many_times_give_the_search_of_plain_keys_bit_for_bit():
    """The per-step search's keys keep their norms (made once per run): its distances are those of the
    formula computed afresh at every search, as before."""
    from utils.retrieval import SearchKeys
    g = torch.Generator().manual_seed(3)
    keys, queries = torch.randn(500, 24, generator=g), torch.randn(40, 24, generator=g)
    stored = SearchKeys(keys)
    d2 = queries.square().sum(1, keepdim=True) - 2 * queries @ keys.T + keys.square().sum(1)
    dist, idx = torch.topk(d2, 7, dim=1, largest=False, sorted=True)
    for searched in (stored, stored, keys):
        got_dist, got_idx = knn(queries, searched, 7, chunk_size=40, exact_ties=False)
        assert torch.equal(got_idx, idx) and torch.equal(got_dist, dist.clamp(min=0).sqrt())


def test_the_bf16_shortlist_finds_the_float32_neighbours():
    """On CUDA the per-step search shortlists in bf16 and re-ranks in float32. A bf16 search alone returns
    the float32 top-10 set for only ~95% of the queries here; the shortlist must for at least 99% (it
    does for all). The CPU stands in for the tensor cores with the same rounded inputs."""
    from utils.retrieval import SearchKeys, bf16_products, shortlisted
    keys, queries = cifar_like_features(10000, 1000, 512)
    exact = knn(queries, keys, 10, exact_ties=False)[1]
    stored = SearchKeys(keys, shortlist=True)
    assert same_sets(shortlisted(queries, stored, 10)[1], exact) >= 0.99
    rough = torch.topk(stored.sq_norms - 2 * bf16_products(queries, stored.bf16), 10, dim=1, largest=False).indices
    assert same_sets(rough, exact) < 0.98  # what the float32 re-ranking is for
    # what the per-step retrieval calls: the candidates of the shortlisted search
    noisy = torch.randint(0, 10, (10000,), generator=torch.Generator().manual_seed(1))
    rows = retrieve_candidates(queries, stored, noisy, noisy[:1000], 10)
    assert rows.shape == (1000, 11) and same_sets(rows[:, :10], noisy[exact]) >= 0.99


def test_the_distance_block_is_the_written_out_expression_bit_for_bit():
    """The search builds ‖q‖² − 2q·k + ‖k‖² in one block, in place: the neighbours (ties included) must be
    those of the expression written out, so every float32 rounding must be the same."""
    from utils.retrieval import SearchKeys, squared_distances
    g = torch.Generator().manual_seed(0)
    keys, queries = torch.randn(500, 33, generator=g), torch.randn(70, 33, generator=g) * 3
    stored = SearchKeys(keys)
    written_out = queries.square().sum(1, keepdim=True) - 2 * queries @ stored.values.T + stored.sq_norms
    assert torch.equal(squared_distances(queries, stored), written_out)


@pytest.mark.parametrize('exact_ties', [True, False])
def test_the_search_holds_one_chunk_of_distances_at_a_time(monkeypatch, exact_ties):
    """Each chunk × N block is freed before the next is made: at a million keys one block is gigabytes."""
    import weakref

    from utils import retrieval
    blocks, made = [], retrieval.squared_distances

    def tracked(q, keys):
        assert all(b() is None for b in blocks), "the previous chunk's distances are still held"
        block = made(q, keys)
        blocks.append(weakref.ref(block))
        return block
    monkeypatch.setattr(retrieval, 'squared_distances', tracked)
    torch.manual_seed(0)
    keys = torch.randn(50, 4)
    dist, idx = knn(keys, keys, 3, chunk_size=10, exact_ties=exact_ties)
    assert len(blocks) == 5 and idx.shape == (50, 3) and bool((idx[:, 0] == torch.arange(50)).all())


def test_each_sample_is_its_own_first_neighbour_so_its_label_is_two_of_its_candidates():
    """As the authors' search of the training set against itself: the sample is among its own k neighbours
    (the first), and its noisy label is appended too, so the own label is at least two of the k + 1."""
    g = torch.Generator().manual_seed(3)
    features, labels = torch.randn(300, 16, generator=g), torch.randint(0, 5, (300,), generator=g)
    table = neighbour_table(features, 10)
    assert table.shape == (300, 10) and torch.equal(table[:, 0], torch.arange(300))
    rows = candidate_rows(labels[table], labels, 'neighbours+own')
    assert rows.shape == (300, 11) and ((rows == labels[:, None]).sum(1) >= 2).all()
