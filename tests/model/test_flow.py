import pytest
import torch

from pfp_core.model.flow import add_noise, guided, sample, sampling_sigmas, shift_sigmas


def test_schedule_runs_from_noise_to_data_and_shift_favours_noise():
    sigmas = sampling_sigmas(10, shift=3.0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == 11
    assert (sigmas[:-1] > sigmas[1:]).all()
    assert shift_sigmas(torch.tensor(0.5), 3.0) == pytest.approx(0.75)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_exact_velocity_recovers_the_data(solver):
    """With the true straight-line velocity v = noise - x0, both solvers land exactly on x0."""
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    velocity = lambda x, sigma: noise - x0
    assert torch.allclose(sample(velocity, noise, sampling_sigmas(5, 2.0), solver), x0, atol=1e-5)
    assert torch.allclose(add_noise(x0, noise, torch.tensor([0.0, 1.0]))[1], noise[1])


def test_heun_is_second_order_on_a_curved_field():
    """dx/ds = x has x(0) = x(1) / e: Heun's error shrinks ~4x per halving of the step, Euler's ~2x."""
    x1 = torch.ones(1, 1)
    errors = {}
    for solver in ("euler", "heun"):
        errors[solver] = [abs(sample(lambda x, s: x, x1, torch.linspace(1, 0, n + 1), solver).item() - torch.e ** -1)
                          for n in (8, 16)]
    assert errors["heun"][0] / errors["heun"][1] > 3.0
    assert 1.6 < errors["euler"][0] / errors["euler"][1] < 2.4
    assert errors["heun"][1] < errors["euler"][1] / 10


def test_guidance_extrapolates_from_unconditional():
    cond = lambda x, s: torch.ones_like(x)
    uncond = lambda x, s: torch.zeros_like(x)
    x, s = torch.zeros(1, 2), torch.ones(1)
    assert torch.equal(guided(cond, uncond, 1.0)(x, s), cond(x, s))
    assert torch.equal(guided(cond, uncond, 5.0)(x, s), torch.full((1, 2), 5.0))


def test_callback_sees_every_step_and_unknown_solver_is_named():
    seen = []
    sample(lambda x, s: x, torch.ones(1), sampling_sigmas(4, 1.0), "euler", lambda i, n, x0: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with pytest.raises(ValueError, match="^solver: 'rk9'"):
        sample(lambda x, s: x, torch.ones(1), sampling_sigmas(4, 1.0), "rk9")
