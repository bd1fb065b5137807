"""The moving average of the trained weights (--ema_decay): its arithmetic, and that it is what a run
evaluates, saves for prediction and resumes."""
import pytest
import torch

from utils.averaging import WeightAverage, evaluated_weights


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_average_follows_the_ramped_decay_and_copies_counters():
    net = small_net()
    w0 = net[0].weight.detach().clone()
    average = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net[0].weight.add_(1.0)  # in place, as the optimiser updates it
    net(torch.randn(8, 3))  # a training-mode forward: BatchNorm's statistics and counter move
    average.update()  # first update: rate 1 - min(0.5, 1/10) = 0.9
    assert torch.allclose(average.model[0].weight, w0 + 0.9)
    assert int(average.model[1].num_batches_tracked) == 1
    assert torch.allclose(average.model[1].running_mean, 0.9 * net[1].running_mean)
    for _ in range(30):
        average.update()
    assert average.rate() == pytest.approx(0.5)  # the ramp (1+n)/(10+n) has passed the cap
    assert torch.allclose(average.model[0].weight, net[0].weight)  # a fixed target is reached


def test_a_frozen_layer_is_kept_not_averaged():
    """--freeze_diff_encoder with --ema_decay: its weights never move, so nothing is spent on them (stored
    in bf16, they reach the average only as float32 copies)."""
    net = small_net()
    net[0].requires_grad_(False)
    average = WeightAverage(net, decay=0.5)
    assert len(average.floats) == 4  # BatchNorm's weight, bias and two running statistics: not the frozen Linear
    net(torch.randn(8, 3))
    average.update()
    assert torch.equal(average.model[0].weight, net[0].weight)
    assert torch.allclose(average.model[1].running_mean, 0.9 * net[1].running_mean)


def test_load_state_dict_of_the_model_is_followed():
    net = small_net()
    average = WeightAverage(net, decay=0.9)
    other = small_net()
    with torch.no_grad():
        other[0].weight.fill_(2.0)
    net.load_state_dict(other.state_dict())  # copies in place: the average still sees the trained tensors
    average.update()
    assert torch.allclose(average.model[0].weight[0, 0], 0.1 * small_net()[0].weight[0, 0] + 0.9 * 2.0)


def test_state_round_trip_and_which_weights_a_checkpoint_evaluates():
    net = small_net()
    average = WeightAverage(net, decay=0.9)
    with torch.no_grad():
        net[0].bias.add_(3.0)
    average.update()
    state = average.state_dict()
    fresh = WeightAverage(small_net(), decay=0.9)
    fresh.load_state_dict(state)
    assert fresh.updates == 1 and torch.equal(fresh.model[0].bias, average.model[0].bias)
    ckpt = {'model': net.state_dict(), 'ema': state}
    assert evaluated_weights(ckpt) is state['weights']
    assert evaluated_weights({'model': ckpt['model'], 'ema': None}) is ckpt['model']
    assert evaluated_weights({'model': ckpt['model']}) is ckpt['model']  # written before --ema_decay
