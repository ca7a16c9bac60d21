"""Lab 06 checks: the solution passes; zeros, random values, the library, the input
returned unchanged and the commonest mistakes fail, each named in words."""
import torch
import torch.nn.functional as F

from labtools import fails_saying, solution_function
from xailab import dissect
from xailab.checks import core, lab06


def _student_iou(per_image=False, mode="bilinear", downsample=False):
    """A student's IoU table, right or with one of the common mistakes."""
    def unit_concept_iou(acts, thresholds, labels, n_concepts):
        if downsample:
            labels = F.interpolate(labels[:, None].float(), size=acts.shape[-2:], mode="nearest")[:, 0].long()
            up = acts
        elif mode == "nearest":
            up = F.interpolate(acts, size=labels.shape[-2:], mode="nearest")
        else:
            up = F.interpolate(acts, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        m = (up > thresholds.view(1, -1, 1, 1)).float()
        onehot = F.one_hot(labels, n_concepts + 1)[..., 1:].float()
        inter = torch.einsum("nuhw,nhwc->nuc", m, onehot)
        union = m.sum((2, 3))[:, :, None] + onehot.sum((1, 2))[:, None, :] - inter
        if per_image:
            return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros(())).mean(0)
        inter, union = inter.sum(0), union.sum(0)
        return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros(()))
    return unit_concept_iou


def test_unit_concept_iou_solution_passes():
    core.reset()
    assert lab06.check_unit_concept_iou(solution_function("06_dissection.ipynb", "unit_concept_iou"),
                                        verbose=False)
    assert lab06.check_unit_concept_iou(_student_iou(), verbose=False)


def test_unit_concept_iou_reference_matches_the_library():
    acts, t, labels, n = lab06._iou_cases()[1]
    masks = dissect.unit_masks(acts, t, labels.shape[-2:])
    onehot = F.one_hot(labels, n + 1)[..., 1:]
    inter = torch.einsum("nuhw,nhwc->uc", masks.float(), onehot.float())
    union = masks.float().sum((0, 2, 3))[:, None] + onehot.float().sum((0, 1, 2))[None] - inter
    want = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros(()))
    assert torch.allclose(lab06._iou(acts, t, labels, n), want, atol=1e-6)


def test_unit_concept_iou_rejects_shortcuts_and_mistakes():
    check = lab06.check_unit_concept_iou
    fails_saying(check, lambda a, t, l, n: torch.zeros(a.shape[1], n), "all zeros")
    fails_saying(check, lambda a, t, l, n: torch.rand(a.shape[1], n), "random")
    fails_saying(check, lambda a, t, l, n: a, "activations unchanged")
    fails_saying(check, lambda a, t, l, n: dissect.unit_masks(a, t, l.shape[-2:]).float().mean((0, 2, 3)),
                 "write this one yourself", "dissect.unit_masks")
    fails_saying(check, lambda a, t, l, n: lab06._iou(a, t, l, n), "write this one yourself")
    fails_saying(check, _student_iou(per_image=True), "averaged per-image ious")
    fails_saying(check, _student_iou(downsample=True), "upsample")
    fails_saying(check, _student_iou(mode="nearest"), "nearest neighbours")
    fails_saying(check, lambda a, t, l, n: _student_iou()(a, t, l, n).t(), "transposed")
    fails_saying(check, lambda a, t, l, n: torch.cat([torch.zeros(a.shape[1], 1), _student_iou()(a, t, l, n)], 1),
                 "label 0")


def test_unit_concept_iou_nan_for_empty_union_is_named():
    def with_nan(acts, thresholds, labels, n_concepts):
        up = F.interpolate(acts, size=labels.shape[-2:], mode="bilinear", align_corners=False)
        m = (up > thresholds.view(1, -1, 1, 1)).float()
        onehot = F.one_hot(labels, n_concepts + 1)[..., 1:].float()
        inter = torch.einsum("nuhw,nhwc->uc", m, onehot)
        return inter / (m.sum((0, 2, 3))[:, None] + onehot.sum((0, 1, 2))[None] - inter)
    fails_saying(lab06.check_unit_concept_iou, with_nan, "nan", "0 / 0")


def _student_labels(offset=1, cutoff_rule=True, dim=1):
    def label_units(iou, cutoff=0.04):
        best, col = iou.max(dim)
        return torch.where(best > cutoff, col + offset, 0) if cutoff_rule else col + offset
    return label_units


def test_label_units_solution_passes():
    core.reset()
    assert lab06.check_label_units(solution_function("06_dissection.ipynb", "label_units"), verbose=False)


def test_label_units_rejects_shortcuts_and_mistakes():
    check = lab06.check_label_units
    fails_saying(check, lambda iou, cutoff=0.04: torch.zeros(iou.shape[0], dtype=torch.long), "all zeros")
    fails_saying(check, lambda iou, cutoff=0.04: torch.randint(0, iou.shape[1] + 1, (iou.shape[0],)), "random")
    fails_saying(check, lambda iou, cutoff=0.04: iou, "iou table unchanged")

    def library(iou, cutoff=0.04):
        d = dissect.Dissection("x", iou, [str(c) for c in range(iou.shape[1])], ["a"] * iou.shape[1], ["a"],
                               torch.zeros(iou.shape[0]), iou, iou, iou[0], torch.zeros(1), torch.zeros(1),
                               0.005, cutoff, 1)
        col, score = d.best()
        return torch.where(score > cutoff, col + 1, 0)
    fails_saying(check, library, "write this one yourself", "dissect.best")
    fails_saying(check, _student_labels(offset=0), "column indices")
    fails_saying(check, _student_labels(cutoff_rule=False), "above the cutoff")
    fails_saying(check, _student_labels(dim=0), "best unit of each concept")
    fails_saying(check, lambda iou, cutoff=0.04: iou.max(1).values, "best iou")


def _student_derivatives(kind="gradient", sign=1.0, output="logit", target_rule="own", leave_hook=False):
    """A student's directional derivatives, right or with one of the common mistakes."""
    def directional_derivatives(model, layer, images, targets, cav):
        store = {}
        module = dict(model.named_modules())[layer]

        def keep(mod, inp, out):
            out.retain_grad()
            store["a"] = out
        handle = module.register_forward_hook(keep)
        x = images.clone().requires_grad_(True)
        try:
            out = model(x)
        finally:
            if not leave_hook:
                handle.remove()
        out = out.softmax(1) if output == "probability" else out
        if target_rule == "first":
            out[:, int(targets[0])].sum().backward()
        else:
            out.gather(1, targets[:, None]).sum().backward()
        a = store["a"]
        vec = {"gradient": a.grad, "activation": a.detach(), "cosine": a.grad / a.grad.flatten(1).norm(dim=1).view(-1, *[1] * (a.dim() - 1)),
               "gxa": a.grad * a.detach()}[kind]
        return sign * (vec.flatten(1) @ cav)
    return directional_derivatives


def test_directional_derivatives_solution_passes():
    core.reset()
    assert lab06.check_directional_derivatives(solution_function("06_dissection.ipynb", "directional_derivatives"),
                                               verbose=False)
    assert lab06.check_directional_derivatives(_student_derivatives(), verbose=False)


def test_directional_derivatives_reference_matches_the_library():
    from xailab import concepts, models
    model = models.load("shapesnet")
    images = concepts.class_images(["heart", "star"], n=3)
    x = torch.cat([images["heart"], images["star"]])
    cav = torch.randn(32 * 16 * 16, generator=torch.Generator().manual_seed(0))
    cav = cav / cav.norm()
    want = torch.cat([concepts.directional_derivatives(model, "features.block2", images["heart"], 5, cav),
                      concepts.directional_derivatives(model, "features.block2", images["star"], 3, cav)])
    got = lab06._derivatives(model, "features.block2", x, torch.tensor([5] * 3 + [3] * 3), cav)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_directional_derivatives_rejects_shortcuts_and_mistakes():
    from xailab import concepts
    check = lab06.check_directional_derivatives
    fails_saying(check, lambda m, l, x, t, v: torch.zeros(len(x)), "all zeros")
    fails_saying(check, lambda m, l, x, t, v: torch.randn(len(x)), "random")
    fails_saying(check, lambda m, l, x, t, v: x, "images unchanged")
    fails_saying(check, lambda m, l, x, t, v: torch.cat([concepts.directional_derivatives(m, l, x[i:i + 1], int(t[i]), v)
                                                          for i in range(len(x))]),
                 "write this one yourself", "concepts.directional_derivatives")
    fails_saying(check, lambda m, l, x, t, v: concepts.layer_gradients(m, l, x, 0) @ v,
                 "write this one yourself", "cam.layer_pass")
    fails_saying(check, lambda m, l, x, t, v: lab06._derivatives(m, l, x, t, v), "write this one yourself")
    fails_saying(check, _student_derivatives(sign=-1.0), "sign is flipped")
    fails_saying(check, _student_derivatives(kind="activation"), "activations")
    fails_saying(check, _student_derivatives(kind="gxa"), "multiplied the gradient by the activations")
    fails_saying(check, _student_derivatives(kind="cosine"), "length")
    fails_saying(check, _student_derivatives(output="probability"), "softmax")
    fails_saying(check, _student_derivatives(target_rule="first"), "its own class")
    fails_saying(check, _student_derivatives(leave_hook=True), "changed the model", "hooks")
    said = fails_saying(check, lambda m, l, x, t, v: _student_derivatives()(m, l, x, t, v)[:, None] * v,
                        "one vector per image")
    assert "dot it with the cav" in said


def _student_scores(rule="positive", per_class=True):
    def tcav_scores(derivatives, labels, n_classes):
        hit = {"positive": derivatives > 0, "nonnegative": derivatives >= 0, "negative": derivatives < 0}[rule]
        return torch.stack([hit[labels == c].float().sum() / ((labels == c).sum() if per_class else len(labels))
                            for c in range(n_classes)])
    return tcav_scores


def test_tcav_scores_solution_passes():
    core.reset()
    assert lab06.check_tcav_scores(solution_function("06_dissection.ipynb", "tcav_scores"), verbose=False)
    assert lab06.check_tcav_scores(_student_scores(), verbose=False)


def test_tcav_scores_reference_matches_the_library():
    from xailab import concepts
    derivs, labels, n = lab06._score_cases()[0]
    want = torch.stack([concepts.tcav_score(derivs[labels == c]) for c in range(n)])
    assert torch.equal(lab06._scores(derivs, labels, n), want)


def test_tcav_scores_rejects_shortcuts_and_mistakes():
    from xailab import concepts
    check = lab06.check_tcav_scores
    fails_saying(check, lambda d, y, n: torch.zeros(n), "all zeros")
    fails_saying(check, lambda d, y, n: torch.rand(n), "random")
    fails_saying(check, lambda d, y, n: d, "derivatives unchanged")
    fails_saying(check, lambda d, y, n: torch.stack([concepts.tcav_score(d[y == c]) for c in range(n)]),
                 "write this one yourself", "concepts.tcav_score")
    fails_saying(check, _student_scores(rule="nonnegative"), "s >= 0")
    fails_saying(check, _student_scores(rule="negative"), "s < 0")
    fails_saying(check, _student_scores(per_class=False), "number of all images")
    fails_saying(check, lambda d, y, n: torch.full((n,), float((d > 0).float().mean())), "own images")
    fails_saying(check, lambda d, y, n: torch.stack([((d > 0) & (y == c)).sum() for c in range(n)]).float(), "counts")
    fails_saying(check, lambda d, y, n: torch.stack([d[y == c].mean() for c in range(n)]), "averaged s itself")
