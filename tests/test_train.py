"""Training recipe: loss values on known inputs, thread handling, determinism."""

import torch
from torch import nn

from entk_al.nets.train import TrainConfig, auto_threads, loss_fn, train_model


def test_mse_loss_known_value():
    logits = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    y = torch.tensor([0, 1])
    # 0.5 * mean over rows of the summed squared error (rows: 0 and 0.5) = 0.125
    assert torch.isclose(loss_fn(logits, y, "mse"), torch.tensor(0.125))
    ce = loss_fn(logits, y, "ce")
    expected = -(torch.log_softmax(logits, 1)[[0, 1], [0, 1]]).mean()
    assert torch.isclose(ce, expected)


def test_small_models_train_on_one_thread_and_restore_the_setting():
    small = nn.Linear(4, 3)
    assert auto_threads(small, 64) == 1
    big = nn.Linear(4000, 1000)  # 4M parameters x 64 samples: above the small-step bound
    assert auto_threads(big, 64) == torch.get_num_threads()
    before = torch.get_num_threads()
    x, y = torch.randn(32, 4), torch.randint(3, (32,))
    models = []
    for threads in (0, 1):
        torch.manual_seed(0)
        m = nn.Linear(4, 3)
        stats = train_model(m, x, y, TrainConfig(min_steps=20, epochs=1, threads=threads),
                            torch.Generator().manual_seed(0))
        assert stats["steps"] == 20 and torch.get_num_threads() == before
        models.append(m)
    # automatic = one thread here, so both runs are bit-identical
    assert torch.equal(models[0].weight, models[1].weight)
