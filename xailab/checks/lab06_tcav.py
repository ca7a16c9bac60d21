"""Fixed inputs and private references of lab 06's TCAV checks (Kim et al. 2018): the
directional derivative S(x) = grad_A f_target(x) . v and the TCAV score per class, each
with the common wrong variants the checks name."""
from __future__ import annotations

from collections import OrderedDict

import torch

from .. import hooks
from ..solving import solves


def _tiny_net():
    """A small seeded CNN whose layer gradients differ from image to image (the ReLU after
    ``conv2`` gates them), with named layers ``relu1`` and ``conv2``; eval mode."""
    g = torch.Generator().manual_seed(617)
    net = torch.nn.Sequential(OrderedDict(
        conv1=torch.nn.Conv2d(3, 4, 3, padding=1), relu1=torch.nn.ReLU(),
        conv2=torch.nn.Conv2d(4, 6, 3, padding=1, stride=2), relu2=torch.nn.ReLU(),
        pool=torch.nn.AdaptiveAvgPool2d(1), flatten=torch.nn.Flatten(), fc=torch.nn.Linear(6, 3)))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.6)
    return net.eval()


def _derivative_cases():
    """(model, layer, images, targets, cav) on which the common mistakes all differ."""
    net = _tiny_net()
    g = torch.Generator().manual_seed(618)
    cases = []
    for layer, n, size in [("relu1", 12, 8), ("conv2", 9, 10)]:
        images = torch.rand(n, 3, size, size, generator=g)
        targets = torch.arange(n) % 3
        shape = {"relu1": (4, size, size), "conv2": (6, size // 2, size // 2)}[layer]
        cav = torch.randn(int(torch.tensor(shape).prod()), generator=g)
        cases.append((net, layer, images, targets, cav / cav.norm()))
    return cases


@solves("concepts.directional_derivatives")
def _derivatives(model, layer, images, targets, cav, kind="gradient", output="logit", target_rule="own"):
    """S(x) = grad_A f_target(x) . cav (private reference) and its common wrong variants:
    ``kind`` "activation" (A . cav), "gradient_x_activation", "cosine" (the gradient
    normalised); ``output`` "probability" (softmax); ``target_rule`` "first" (one target
    for every image) or "all" (every listed target summed for every image)."""
    with hooks.frozen(model), hooks.record(model, layer) as rec, torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        out = model(x)
        out = out.softmax(1) if output == "probability" else out
        if target_rule == "first":
            score = out[:, int(targets[0])].sum()
        elif target_rule == "all":
            score = out[:, targets].sum()
        else:
            score = out.gather(1, targets.view(-1, 1)).sum()
        score.backward()
    grad = rec.gradients[layer].flatten(1).double()
    act = rec.activations[layer].flatten(1).double()
    vec = {"gradient": grad, "activation": act, "gradient_x_activation": grad * act,
           "cosine": grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)}[kind]
    return (vec @ cav.double()).float()


def _score_cases():
    """(derivatives, labels, n_classes): unequal class sizes and exact zeros, so that
    counting >= 0 and dividing by the total both differ from the rule."""
    g = torch.Generator().manual_seed(619)
    cases = []
    for sizes in [(5, 8, 3, 6), (7, 4, 9)]:
        labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
        labels = labels[torch.randperm(len(labels), generator=g)]
        derivs = torch.randn(len(labels), generator=g) + 0.4 * (labels.float() - 1)
        derivs[torch.randperm(len(labels), generator=g)[:4]] = 0.0
        cases.append((derivs, labels, len(sizes)))
    return cases


@solves("concepts.tcav_score")
def _scores(derivatives, labels, n_classes, rule="positive", per_class=True):
    """Per class, the share of its images with S > 0 (private reference) and variants:
    ``rule`` "nonnegative" (S >= 0), "negative" (S < 0), "mean" (mean S);
    ``per_class=False``: the class's count divided by all images."""
    d = derivatives.detach().double()
    hit = {"positive": d > 0, "nonnegative": d >= 0, "negative": d < 0}.get(rule)
    out = []
    for c in range(n_classes):
        mine = labels == c
        if rule == "mean":
            out.append(d[mine].mean())
        else:
            out.append(hit[mine].double().sum() / (mine.sum() if per_class else len(d)))
    return torch.stack(out).float()
