"""The class-balanced draw: per-class counts, redrawn each epoch, a pure function of (seed, epoch)."""
import torch

from utils.data.sampling import balanced_draw, per_class_count


def labels_with_counts(counts, seed=0):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def test_every_class_contributes_exactly_n_distinct_samples():
    labels = labels_with_counts([300, 120, 500, 80])
    idx = balanced_draw(labels, 50, seed=1, epoch=0)
    assert torch.bincount(labels[idx]).tolist() == [50, 50, 50, 50]
    assert len(set(idx.tolist())) == len(idx) == 200  # without replacement


def test_a_class_smaller_than_n_lowers_n_for_every_class():
    labels = labels_with_counts([300, 120, 500, 80])
    assert per_class_count(labels, 100) == 80
    idx = balanced_draw(labels, 100, seed=1, epoch=0)
    assert torch.bincount(labels[idx]).tolist() == [80, 80, 80, 80]


def test_absent_classes_are_skipped_and_zero_means_everything():
    labels = torch.tensor([0, 0, 0, 2, 2, 2, 2])
    idx = balanced_draw(labels, 2, seed=0, epoch=0)
    assert sorted(labels[idx].tolist()) == [0, 0, 2, 2]
    assert balanced_draw(labels, 0, seed=0, epoch=0).tolist() == list(range(7))


def test_redrawn_every_epoch_and_a_pure_function_of_seed_and_epoch():
    labels = labels_with_counts([1000, 1000, 1000])
    first = balanced_draw(labels, 100, seed=3, epoch=0)
    second = balanced_draw(labels, 100, seed=3, epoch=1)
    assert set(first.tolist()) != set(second.tolist())
    torch.manual_seed(999)  # the global stream (model init, earlier epochs) plays no part
    torch.rand(10)
    assert torch.equal(balanced_draw(labels, 100, seed=3, epoch=1), second)  # a resumed epoch 1
    assert set(balanced_draw(labels, 100, seed=4, epoch=1).tolist()) != set(second.tolist())
    # over many epochs every sample gets its turn: nothing is fixed across epochs
    seen = torch.cat([balanced_draw(labels, 100, seed=3, epoch=e) for e in range(60)])
    assert len(set(seen.tolist())) > 0.99 * len(labels)


def test_the_engine_trains_each_epoch_on_the_draw():
    from types import SimpleNamespace

    from utils.trainer import Trainer
    labels = labels_with_counts([40, 25, 60])
    trainer = SimpleNamespace(data=SimpleNamespace(noisy_labels=labels), device=torch.device('cpu'), world=1, rank=0,
                              cfg=SimpleNamespace(per_class=10, seed=5, batch_size=8, drop_last=False))
    epoch0 = torch.cat(Trainer.batches(trainer, 0))
    assert torch.bincount(labels[epoch0]).tolist() == [10, 10, 10]
    assert set(epoch0.tolist()) == set(balanced_draw(labels, 10, seed=5, epoch=0).tolist())
    assert torch.equal(torch.cat(Trainer.batches(trainer, 0)), epoch0)  # a resumed epoch replays it
    assert set(torch.cat(Trainer.batches(trainer, 1)).tolist()) != set(epoch0.tolist())
    trainer.cfg.per_class = 0
    assert sorted(torch.cat(Trainer.batches(trainer, 0)).tolist()) == list(range(125))
    assert [len(b) for b in Trainer.batches(trainer, 0)] == [8] * 15 + [5]


def test_drop_last_trains_full_batches_only_as_the_authors_file_loaders():
    from types import SimpleNamespace

    from utils.trainer import Trainer
    labels = labels_with_counts([40, 25, 60])
    trainer = SimpleNamespace(data=SimpleNamespace(noisy_labels=labels), device=torch.device('cpu'), world=1, rank=0,
                              cfg=SimpleNamespace(per_class=0, seed=5, batch_size=8, drop_last=True))
    kept = Trainer.batches(trainer, 0)
    assert [len(b) for b in kept] == [8] * 15  # 125 samples: the 5 left over wait for another epoch's order
    trainer.cfg.drop_last = False
    assert torch.equal(torch.cat(kept), torch.cat(Trainer.batches(trainer, 0))[:120])  # the same order, cut
    trainer.cfg.drop_last, trainer.cfg.batch_size = True, 200  # a run smaller than one batch keeps its batch
    assert [len(b) for b in Trainer.batches(trainer, 0)] == [125]
