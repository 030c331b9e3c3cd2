import math

import torch

from posttrain.losses.sft import sft_loss


def test_sft_loss_hand_worked():
    # Two rows; the mask keeps p=1/2, p=1/4 in row 0 and p=1/8 in row 1.
    # loss_sum = ln 2 + ln 4 + ln 8 = 6 ln 2 ; n = 3 ; mean = 2 ln 2.
    logprobs = torch.log(torch.tensor([[0.9, 0.5, 0.25, 0.3], [0.125, 0.7, 0.2, 0.6]]))
    mask = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    loss_sum, n_tokens, metrics = sft_loss(logprobs, mask)
    assert math.isclose(float(loss_sum), 6 * math.log(2), rel_tol=1e-6)
    assert float(n_tokens) == 3
    assert float(loss_sum / n_tokens) == float(torch.tensor(2 * math.log(2)))
    assert float(metrics["num_loss_tokens"]) == 3


def test_sft_loss_gradient_is_minus_mask():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 0, 1]])
    loss_sum, _, _ = sft_loss(logprobs, mask)
    loss_sum.backward()
    assert torch.equal(logprobs.grad, torch.tensor([[-1.0, 0.0, -1.0]]))
    assert float(loss_sum.detach()) == 1.5


def test_sft_loss_empty_mask_is_zero():
    loss_sum, n_tokens, _ = sft_loss(torch.full((1, 4), -3.0), torch.zeros(1, 4, dtype=torch.bool))
    assert float(loss_sum) == 0.0 and float(n_tokens) == 0.0
