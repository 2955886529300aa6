"""MADE: the outputs of variable ``d`` depend on exactly the inputs ranked
before ``d`` in the order -- no more (autoregressive) and no fewer (every
allowed connection is realised) -- and the context reaches every output.

Checked on the float64 autograd Jacobian with tanh activations, so an allowed
entry is non-zero generically and a forbidden one is exactly 0.0.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.autograd.functional import jacobian

from vlae.made import MADE

torch.set_num_threads(1)


def _made(D, hidden, n_params, order, context, seed):
    torch.manual_seed(seed)
    made = MADE(D, hidden, n_params=n_params, order=order, context=context, activation="tanh",
                output_scale=1.0).double()
    with torch.no_grad():  # non-zero biases everywhere, so no unit sits at a special point
        for m in made.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_()
    return made


def _expected(order) -> torch.Tensor:
    D = len(order)
    rank = {v: r for r, v in enumerate(order)}
    return torch.tensor([[rank[k] < rank[d] for k in range(D)] for d in range(D)])


CASES = list(itertools.product([1, 2, 5, 7], [0, 1, 2, 3], [1, 2, 3], [0, 3]))


@pytest.mark.parametrize("D,depth,n_params,context", CASES)
def test_jacobian_support_is_exactly_the_predecessors(D, depth, n_params, context):
    seed = D * 100 + depth * 10 + n_params + context
    order = torch.randperm(D, generator=torch.Generator().manual_seed(seed)).tolist()
    hidden = [max(D - 1, 1) + 2 * i for i in range(depth)]  # includes the minimal width D - 1
    made = _made(D, hidden, n_params, order, context, seed)
    x = torch.randn(D, dtype=torch.float64)
    c = torch.randn(context, dtype=torch.float64) if context else None
    J = jacobian(lambda x_: made(x_, c), x)  # (n_params, D, D): [p, d, k] = d out[p, d] / d x[k]
    assert J.shape == (n_params, D, D)
    expected = _expected(order)
    for p in range(n_params):
        assert torch.equal(J[p] != 0, expected), f"parameter {p}: support differs from the order {order}"
    assert torch.equal(made.connectivity(), expected)
    if context:
        Jc = jacobian(lambda c_: made(x, c_), c)  # (n_params, D, C)
        assert (Jc != 0).any(-1).all(), "context must reach every output, including the first variable's"


def test_default_order_and_first_variable_is_constant_without_context():
    made = _made(4, [3, 3], 2, None, 0, 0)
    assert made.degrees.tolist() == [1, 2, 3, 4]
    x = torch.randn(6, 4, dtype=torch.float64)
    out = made(x)
    assert out.shape == (6, 2, 4)
    # Variable 0 comes first: its parameters are the same for every input.
    assert torch.allclose(out[:, :, 0], out[:1, :, 0].expand(6, -1), rtol=0, atol=0)


@pytest.mark.parametrize("D,hidden", [(5, [3]), (5, [8, 3]), (10, [9, 9, 8])])
def test_too_narrow_hidden_layers_raise(D, hidden):
    with pytest.raises(ValueError, match="hidden width"):
        MADE(D, hidden)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, [4], order=[0, 0, 1])
    with pytest.raises(ValueError, match="activation"):
        MADE(3, [4], activation="sigmoid")
    with pytest.raises(ValueError, match="at least one"):
        MADE(0, [4])
    made = MADE(3, [4], context=2)
    with pytest.raises(ValueError, match="context"):
        made(torch.randn(1, 3))
    with pytest.raises(ValueError, match="context"):
        MADE(3, [4])(torch.randn(1, 3), torch.randn(1, 2))


def test_connectivity_matches_order_for_relu_default():
    # connectivity() is derived from the masks only, so it does not depend on
    # the activation; it must match the order also for the paper's ReLU MADE.
    order = [2, 0, 3, 1]
    made = MADE(4, [3, 5, 3], n_params=2, order=order)
    assert torch.equal(made.connectivity(), _expected(order))
