"""Lab 04's checks pass the solution's own functions and fail, naming the mistake, for
zeros, random values, the library's implementation, the input returned unchanged and
the commonest mistakes of each exercise."""
import functools

import pytest
import torch

import xailab
from xailab.attribution import saliency
from xailab.checks import core, lab04

from labtools import fails_saying, solution_function

NB = "04_saliency.ipynb"


def after(check, *exercises):
    """``check`` run as if the checks of ``exercises`` had passed earlier in the lab."""
    @functools.wraps(check)
    def run(fn, verbose=True):
        core._PASSED.update(exercises)
        return check(fn, verbose=verbose)
    return run


@pytest.fixture(scope="module")
def sol():
    vg = solution_function(NB, "vanilla_gradient")
    sg = solution_function(NB, "smoothgrad")
    ig = solution_function(NB, "integrated_gradients")
    for f in (sg, ig):
        f.__globals__["vanilla_gradient"] = vg      # each cell ran alone: link exercise 1
    return {"vanilla_gradient": vg, "smoothgrad": sg, "integrated_gradients": ig}


def _grad(model, x, score):
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(score(model(x)).sum(), x)
    return g


# --- exercise 1: the vanilla gradient ----------------------------------------------

def test_gradient_passes_the_solution(sol):
    core.reset()
    assert lab04.check_gradient(sol["vanilla_gradient"], verbose=False).passed
    assert core.passed("vanilla_gradient")


def test_gradient_rejects_degenerate_answers():
    check = lab04.check_gradient
    fails_saying(check, lambda m, x, t: torch.zeros_like(x), "all zeros")
    fails_saying(check, lambda m, x, t: torch.randn_like(x), "unrelated")
    fails_saying(check, lambda m, x, t: x, "input", "unchanged")
    fails_saying(check, lambda m, x, t: 0.999 * x.clone(), "input", "unchanged")


def test_gradient_refuses_the_library():
    check = lab04.check_gradient
    fails_saying(check, lambda m, x, t: xailab.explain(m, x, t, method="gradient", reduce=None),
                 "write this one yourself")
    fails_saying(check, lambda m, x, t: saliency.gradient(m, x, t, reduce=None), "write this one yourself")
    fails_saying(check, lambda m, x, t: saliency.input_gradients(m, x, t), "write this one yourself")
    fails_saying(check, lambda m, x, t: saliency.smoothgrad(m, x, t, noise=0.0, n_samples=1, reduce=None),
                 "write this one yourself")


def test_gradient_names_the_common_mistakes():
    check = lab04.check_gradient
    fails_saying(check, lambda m, x, t: _grad(m, x, lambda o: o.max(1).values), "predicted class")
    fails_saying(check, lambda m, x, t: _grad(m, x, lambda o: o.gather(1, t[:, None])).abs(),
                 "absolute value")
    fails_saying(check, lambda m, x, t: _grad(m, x, lambda o: o.gather(1, t[:, None])).abs().amax(1),
                 "colour channels")
    fails_saying(check, lambda m, x, t: _grad(m, x, lambda o: o.gather(1, t[:, None])).abs().amax(1, keepdim=True)
                 .expand_as(x).clone(), "colour channels")
    fails_saying(check, lambda m, x, t: _grad(m, x, lambda o: o[:, t]), "[:, target]")
    fails_saying(check, lambda m, x, t: _grad(m, x, lambda o: o.gather(1, t[:, None]).mean()), "mean")
    fails_saying(check, lambda m, x, t: _grad(m, x, lambda o: o.gather(1, t[:, None])).sum(0),
                 "summed the images of the batch")


# --- exercise 2: SmoothGrad --------------------------------------------------------

def test_smoothgrad_passes_the_solution_and_needs_exercise_1(sol):
    core.reset()
    said = fails_saying(lab04.check_smoothgrad, sol["smoothgrad"], "fix exercise 1 (vanilla_gradient) first")
    assert "noise" not in said                           # it did not even run the function
    assert after(lab04.check_smoothgrad, "vanilla_gradient")(sol["smoothgrad"], verbose=False).passed


def test_smoothgrad_rejects_degenerate_answers_and_the_library(sol):
    check = after(lab04.check_smoothgrad, "vanilla_gradient")
    fails_saying(check, lambda m, x, t, n_samples, noise: torch.zeros_like(x), "all zeros")
    fails_saying(check, lambda m, x, t, n_samples, noise: torch.rand_like(x), "unrelated")
    fails_saying(check, lambda m, x, t, n_samples, noise: x, "input", "unchanged")
    fails_saying(check, lambda m, x, t, n_samples, noise: saliency.smoothgrad(
        m, x, t, n_samples=n_samples, noise=noise, reduce=None), "write this one yourself")
    fails_saying(check, lambda m, x, t, n_samples, noise: xailab.explain(
        m, x, t, method="smoothgrad", n_samples=n_samples, noise=noise, reduce=None), "write this one yourself")
    # zeros after feeding the model noisy copies (the loop ran, the sum was lost)
    vg = sol["vanilla_gradient"]
    fails_saying(check, lambda m, x, t, n_samples, noise: 0 * sum(
        vg(m, x + 0.2 * (x.amax((1, 2, 3), True) - x.amin((1, 2, 3), True)) * torch.randn_like(x), t)
        for _ in range(n_samples)), "all zeros")


def _smoothgrad(vg, sigma_of, fresh=True, reduce=lambda g: g.mean(0)):
    def sg(model, x, target, n_samples=20, noise=0.15):
        sigma = noise * sigma_of(x)
        eps = torch.randn_like(x)
        grads = []
        for _ in range(n_samples):
            grads.append(vg(model, x + sigma * (torch.randn_like(x) if fresh else eps), target))
        return reduce(torch.stack(grads))
    return sg


def test_smoothgrad_names_the_common_mistakes(sol):
    check = after(lab04.check_smoothgrad, "vanilla_gradient")
    vg = sol["vanilla_gradient"]
    per_image = lambda x: x.amax((1, 2, 3), True) - x.amin((1, 2, 3), True)
    assert check(_smoothgrad(vg, per_image), verbose=False).passed      # the recipe itself passes
    fails_saying(check, _smoothgrad(vg, lambda x: 1.0), "not scaled by the image range")
    fails_saying(check, _smoothgrad(vg, per_image, fresh=False), "same noise each sample")
    fails_saying(check, _smoothgrad(vg, per_image, reduce=lambda g: g.sum(0)), "summed the gradients")
    fails_saying(check, _smoothgrad(vg, lambda x: per_image(x) / 2), "standard deviation")


# --- exercise 3: integrated gradients ----------------------------------------------

def _ig(vg, ks, times_delta=True):
    def ig(model, x, target, baseline=None, n_steps=32):
        base = torch.zeros_like(x) if baseline is None else baseline
        mean = sum(vg(model, base + k / n_steps * (x - base), target) for k in ks(n_steps)) / n_steps
        return mean * (x - base) if times_delta else mean
    return ig


def test_integrated_gradients_passes_the_solution_and_needs_exercise_1(sol):
    core.reset()
    fails_saying(lab04.check_integrated_gradients, sol["integrated_gradients"], "fix exercise 1")
    report = after(lab04.check_integrated_gradients, "vanilla_gradient")(sol["integrated_gradients"],
                                                                         verbose=False)
    assert report.passed and "grey baseline" in "\n".join(report.lines)


def test_integrated_gradients_rejects_degenerate_answers_and_the_library():
    check = after(lab04.check_integrated_gradients, "vanilla_gradient")
    fails_saying(check, lambda m, x, t, baseline=None, n_steps=32: torch.zeros_like(x), "all zeros")
    fails_saying(check, lambda m, x, t, baseline=None, n_steps=32: torch.randn_like(x), "unrelated")
    fails_saying(check, lambda m, x, t, baseline=None, n_steps=32: x.clone(), "input", "unchanged")
    fails_saying(check, lambda m, x, t, baseline=None, n_steps=32: saliency.integrated_gradients(
        m, x, t, baseline=baseline, n_steps=n_steps, rule="right", reduce=None), "write this one yourself")
    fails_saying(check, lambda m, x, t, baseline=None, n_steps=32: xailab.explain(
        m, x, t, method="integrated_gradients", baseline=baseline, n_steps=n_steps, rule="right",
        reduce=None), "write this one yourself")


def test_integrated_gradients_names_the_common_mistakes(sol):
    check = after(lab04.check_integrated_gradients, "vanilla_gradient")
    vg = sol["vanilla_gradient"]
    assert check(_ig(vg, lambda n: range(1, n + 1)), verbose=False).passed
    fails_saying(check, _ig(vg, lambda n: range(1, n + 1), times_delta=False), "(x - baseline) factor")
    fails_saying(check, _ig(vg, lambda n: range(n)), "left riemann", "k = 1..n")
    fails_saying(check, _ig(vg, lambda n: [k + 0.5 for k in range(n)]), "midpoint")

    def no_baseline(model, x, target, baseline=None, n_steps=32):
        return _ig(vg, lambda n: range(1, n + 1))(model, x, target, None, n_steps)
    fails_saying(check, no_baseline, "grey baseline", "use the `baseline`")


def test_every_check_says_when_the_exercise_is_not_written():
    def nyi(*args, **kwargs):
        raise NotImplementedError("exercise: write me")
    for check in (lab04.check_gradient, after(lab04.check_smoothgrad, "vanilla_gradient"),
                  after(lab04.check_integrated_gradients, "vanilla_gradient")):
        fails_saying(check, nyi, "not written yet")
