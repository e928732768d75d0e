"""library.mish: the training path is Mish to float32 rounding, value and gradient; without
autograd it is `aten::mish` itself (policies act exactly as before)."""

import torch
import torch.nn.functional as F

from library.mish import Mish, mish

# Unit-scale inputs, the far tails (exp underflows; the exp limit of 20), and exact zeros.
POINTS = torch.cat([torch.linspace(-8, 8, 4001), torch.tensor([-120.0, -90.0, -30.0, 0.0,
                                                                19.5, 20.0, 20.5, 60.0, 1e4])])


def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mish and its derivative in float64 autograd."""
    x64 = x.detach().double().requires_grad_()
    y = F.mish(x64)
    y.sum().backward()
    return y.detach(), x64.grad


def test_training_path_matches_mish_and_its_derivative():
    x = POINTS.clone().requires_grad_()
    y = mish(x)
    assert y.grad_fn is not None and "Mish" in type(y.grad_fn).__name__  # the fast path ran
    y.sum().backward()
    value, slope = reference(POINTS)
    # float32 rounding of the result: relative 2 ulp, absolute 1e-6 near zero
    torch.testing.assert_close(y.detach().double(), value, rtol=2.5e-7, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), slope, rtol=1e-6, atol=2e-6)
    assert torch.isfinite(x.grad).all()


def test_gradient_flows_through_a_module_and_checks_in_float64():
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    assert torch.autograd.gradcheck(mish, (x.requires_grad_(),))
    layer = torch.nn.Sequential(torch.nn.Linear(5, 4), Mish())
    layer(torch.randn(3, 5)).sum().backward()
    assert layer[0].weight.grad.abs().sum() > 0


def test_without_autograd_it_is_aten_mish_bit_for_bit():
    x = torch.randn(257, 33, generator=torch.Generator().manual_seed(1)) * 4
    with torch.no_grad():
        assert torch.equal(mish(x.clone().requires_grad_()), F.mish(x))
    assert torch.equal(Mish()(x), F.mish(x))  # x needs no gradient: no graph to build
