"""Checks for lab 06 (network dissection and TCAV): the unit-by-concept IoU under the
NetDissect rule (Bau et al. 2017), the unit labelling rule, and TCAV's directional
derivative and score (Kim et al. 2018).

    from xailab.checks import lab06
    lab06.check_unit_concept_iou(unit_concept_iou)
        # fn(acts [N,U,h,w], thresholds [U], labels [N,H,W], n_concepts) -> IoU [U, n_concepts]
    lab06.check_label_units(label_units)
        # fn(iou [U, n_concepts], cutoff) -> LongTensor[U] (concept number 1..n, 0 = no label)
    lab06.check_directional_derivatives(directional_derivatives)
        # fn(model, layer, images [N,3,H,W], targets [N], cav [D]) -> S [N]
    lab06.check_tcav_scores(tcav_scores)
        # fn(derivatives [N], labels [N], n_classes) -> share of S > 0 per class [n_classes]

Each check runs the student's function on fixed inputs while the library code that
computes the same thing (``dissect.dissect``, ``dissect.unit_masks``,
``Dissection.best``, ``concepts.directional_derivatives``, ``concepts.tcav_score``)
refuses to run, compares with a private reference and names the
common mistakes in words. It prints the verdict and returns the ``Report``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import hooks
from ..solving import solves
from .core import Report, call, changed_model, degenerate, diagnose, finish, name_of, tensor_result
from .lab06_tcav import _derivative_cases, _derivatives, _score_cases, _scores

FORBID_IOU = ("dissect.dissect", "dissect.unit_masks")
FORBID_LABELS = ("dissect.dissect", "dissect.best")


@solves("dissect.unit_masks", "dissect.dissect")
def _iou(acts, thresholds, labels, n_concepts, mode="bilinear", per_image=False, downsample=False):
    """The NetDissect IoU table and its common wrong variants (private reference).

    ``mode``: how activation maps reach the label size ("bilinear" with
    align_corners=False is the rule; "nearest" and "corners" = bilinear with
    align_corners=True are mistakes); ``per_image``: mean of per-image IoUs (a mistake);
    ``downsample``: labels shrunk to the activation size instead (a mistake)."""
    acts = acts.detach().double()
    t = thresholds.detach().double().view(1, -1, 1, 1)
    if downsample:
        labels = F.interpolate(labels[:, None].double(), size=acts.shape[-2:], mode="nearest")[:, 0].long()
        up = acts
    elif mode == "nearest":
        up = F.interpolate(acts, size=labels.shape[-2:], mode="nearest")
    else:
        up = F.interpolate(acts, size=labels.shape[-2:], mode="bilinear", align_corners=(mode == "corners"))
    masks = (up > t).double()                                                   # [N,U,H,W]
    onehot = F.one_hot(labels.long(), n_concepts + 1)[..., 1:].double()         # [N,H,W,C]
    inter = torch.einsum("nuhw,nhwc->nuc", masks, onehot)
    area_m = masks.sum((2, 3))[:, :, None]
    area_l = onehot.sum((1, 2))[:, None, :]
    if per_image:
        union = area_m + area_l - inter
        iou = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))
        return iou.mean(0).float()
    inter, union = inter.sum(0), (area_m + area_l - inter).sum(0)
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union)).float()


def _threshold(acts, top):
    """Per unit, the top-``top`` quantile over images and positions (the library's T_k)."""
    u = acts.shape[1]
    return torch.quantile(acts.transpose(0, 1).reshape(u, -1).double(), 1 - top, dim=1).float()


def _iou_cases():
    """Small datasets where units partly follow concepts: (acts, thresholds, labels, n)."""
    g = torch.Generator().manual_seed(606)
    cases = []
    for n_img, units, (h, w), scale, n in [(6, 5, (4, 4), 4, 4), (3, 4, (3, 5), 4, 3)]:
        coarse = torch.randint(0, n, (n_img, h, w), generator=g)       # concept n never appears
        labels = coarse.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
        labels[:, :scale // 2] = 0                                      # an unlabeled strip
        acts = torch.randn(n_img, units, h, w, generator=g)
        for u in range(min(units - 2, n - 1)):                          # unit u leans to concept u + 1
            acts[:, u] += 2.5 * (coarse == u + 1).float()
        t = _threshold(acts, 0.2)
        t[-1] = acts[:, -1].max() + 1                                   # the last unit never fires
        cases.append((acts, t, labels, n))
    return cases


def _random_answer(report, fn, args, got, what):
    """Run ``fn`` again on the same inputs: a different answer means random values."""
    again = call(report, fn, *[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    if again is None or not isinstance(again, torch.Tensor):
        return report.passed is False
    if again.shape != got.shape or not torch.equal(again.detach().float().cpu(), got):
        report.fail(f"{name_of(fn)} gives a different {what} each time it runs on the same input, as "
                    "random values would: compute it from the inputs")
        return True
    return False


def check_unit_concept_iou(fn, verbose: bool = True) -> Report:
    """``fn(acts, thresholds, labels, n_concepts)``: acts FloatTensor[N, U, h, w] (activation
    maps), thresholds FloatTensor[U] (T_k), labels LongTensor[N, H, W] (0 = unlabeled,
    1..n_concepts) -> FloatTensor[U, n_concepts]: IoU_{k,c} = sum over images
    |M_k & L_c| / sum over images |M_k | L_c|, with M_k the map upsampled bilinearly
    (align_corners=False) to H x W and compared with T_k (> T_k); 0 where the union is empty."""
    report = Report("check_unit_concept_iou", exercise="unit_concept_iou", forbid=FORBID_IOU)
    got = None
    for k, (acts, t, labels, n) in enumerate(_iou_cases()):
        args = (acts, t, labels, n)
        raw = call(report, fn, acts.clone(), t.clone(), labels.clone(), n)
        if not report.passed:
            break
        u = acts.shape[1]

        def shape_hint(g, acts=acts, n=n, u=u):
            if tuple(g.shape) == tuple(acts.shape):
                return ": you returned the activations unchanged; return one IoU per (unit, concept)"
            if tuple(g.shape) == (u, n + 1):
                return " (one column per concept 1..n_concepts; label 0 is 'unlabeled', not a concept)"
            if tuple(g.shape) == (n, u):
                return " (rows are units, columns concepts: your table is transposed)"
            if g.dim() == 3:
                return " (sum over the images before dividing: one table for the whole dataset)"
            return " (one row per unit, one column per concept)"
        got = tensor_result(report, fn, raw, shape=(u, n), what="an IoU table [units, concepts]",
                            nan_hint=": a unit that never fires and a concept that never appears give "
                                     "0 / 0; make that IoU 0", shape_hint=shape_hint)
        if got is None:
            break
        want = _iou(*args)
        if degenerate(report, got, want):
            break
        if k == 0 and _random_answer(report, fn, args, got, "table"):
            break
        if report.compare(f"IoU table for {len(acts)} images, {u} units, {n} concepts, maps {tuple(acts.shape[-2:])}"
                          f" -> labels {tuple(labels.shape[-2:])}", got, want, tol=1e-4):
            continue
        mistakes = [
            (_iou(*args, per_image=True), "you averaged per-image IoUs: NetDissect sums the intersections and "
             "the unions over the whole dataset first, then divides once per (unit, concept)"),
            (_iou(*args, downsample=True), "you compared at the activation map's size (labels shrunk): upsample "
             "each activation map to the label size first, then threshold"),
            (_iou(*args, mode="nearest"), "you upsampled with nearest neighbours: the rule upsamples the "
             "activation maps bilinearly (align_corners=False) before thresholding"),
            (_iou(*args, mode="corners"), "you upsampled with align_corners=True: the rule uses bilinear "
             "upsampling with align_corners=False"),
            (_iou(*args, per_image=True, mode="nearest"), "you averaged per-image IoUs and upsampled with nearest "
             "neighbours: sum over the dataset before dividing, and upsample bilinearly"),
        ]
        for alt, msg in mistakes:
            if _relative(got, alt) < 1e-4:
                report.fail(msg)
                break
        break
    if report.passed and got is not None:
        report.ok("the unit that never fires scores IoU 0 with every concept, and so does the concept "
                  "that never appears")
    return finish(report, verbose)


def _relative(got, alt) -> float:
    return float((got.double() - alt.double()).abs().max() / alt.double().abs().max().clamp_min(1e-12))


@solves("dissect.best", "dissect.dissect")
def _labels(iou, cutoff, offset=1, use_cutoff=True, dim=1):
    """The labelling rule (private reference) and its common wrong variants."""
    score, col = iou.detach().double().max(dim)
    label = col + offset
    return torch.where(score > cutoff, label, torch.zeros_like(label)) if use_cutoff else label


def _label_cases():
    g = torch.Generator().manual_seed(66)
    iou = torch.rand(10, 5, generator=g) * 0.035                      # mostly below the cutoff
    strong = [(0, 2, 0.21), (1, 0, 0.07), (3, 4, 0.12), (4, 2, 0.05), (6, 1, 0.09), (8, 3, 0.3),
              (9, 0, 0.045)]
    for u, c, v in strong:
        iou[u, c] = v
    iou[5, 3] = 0.039                                                  # best, but not a detector
    return [(iou, 0.04), (iou, 0.08)]


def check_label_units(fn, verbose: bool = True) -> Report:
    """``fn(iou, cutoff)``: iou FloatTensor[U, n_concepts] (column j = concept j + 1) ->
    LongTensor[U]: each unit's best concept number (1..n_concepts) when its IoU with that
    concept is above ``cutoff``, else 0 (no label)."""
    report = Report("check_label_units", exercise="label_units", forbid=FORBID_LABELS)
    for k, (iou, cutoff) in enumerate(_label_cases()):
        u, n = iou.shape
        raw = call(report, fn, iou.clone(), cutoff)
        if not report.passed:
            break

        def shape_hint(g, u=u, n=n):
            if tuple(g.shape) == (u, n):
                return ": you returned the IoU table unchanged; return one concept number per unit"
            if tuple(g.shape) == (n,):
                return (": that is one value per concept, the best unit of each concept; the rule labels "
                        "each unit with its best concept (maximum over the concepts)")
            if g.dim() == 0:
                return " (one label per unit, not a single number)"
            return " (one label per unit)"
        got = tensor_result(report, fn, raw, shape=(u,), what="one concept number per unit",
                            shape_hint=shape_hint)
        if got is None:
            break
        want = _labels(iou, cutoff).float()
        if got.dtype.is_floating_point and not torch.equal(got, got.round()):
            if torch.allclose(got, iou.max(1).values, atol=1e-6):
                report.fail("you returned each unit's best IoU; return the concept number it belongs to")
            else:
                report.fail("labels are concept numbers (whole numbers 1..n_concepts, 0 = no label), "
                            "not fractions")
            break
        if degenerate(report, got, want):
            break
        if k == 0 and _random_answer(report, fn, (iou, cutoff), got, "labelling"):
            break
        if torch.equal(got, want):
            n_det = int((want > 0).sum())
            report.ok(f"cutoff {cutoff}: {n_det} of {u} units are detectors, labels {want.long().tolist()}")
            continue
        mistakes = [
            (_labels(iou, cutoff, offset=0).float(), "your labels are column indices (0-based); concept "
             "numbers start at 1, because 0 means 'no label'"),
            (_labels(iou, cutoff, use_cutoff=False).float(), "every unit got a label: a unit is a detector only "
             f"when its best IoU is above the cutoff ({cutoff}); the others get 0"),
            (_labels(iou, cutoff, offset=0, use_cutoff=False).float(), "every unit got a label, and as a "
             "column index: keep only units above the cutoff, and number concepts from 1"),
            (torch.where(iou.max(1).values > cutoff, iou.argmin(1) + 1, 0).float(),
             "you took the worst concept of each unit: the label is the concept with the highest IoU"),
        ]
        for alt, msg in mistakes:
            if torch.equal(got, alt):
                report.fail(msg)
                break
        else:
            wrong = (got != want).nonzero().flatten().tolist()
            report.fail(f"cutoff {cutoff}: units {wrong} are labelled {got[wrong].long().tolist()}, "
                        f"expected {want[wrong].long().tolist()}")
        break
    return finish(report, verbose)


# ---------------------------------------------------------------- TCAV (Kim et al. 2018)

FORBID_DERIVATIVES = ("concepts.directional_derivatives", "concepts.tcav", "cam.layer_pass")
FORBID_SCORES = ("concepts.tcav_score", "concepts.tcav")


def check_directional_derivatives(fn, verbose: bool = True) -> Report:
    """``fn(model, layer, images, targets, cav)``: images FloatTensor[N,3,H,W], targets
    LongTensor[N] (each image's class), cav FloatTensor[D] (a unit vector, D = the layer's
    activation size per image) -> FloatTensor[N]: S(x_n) = grad_A f_{t_n}(x_n) . cav, the
    gradient of image n's own target logit with respect to the layer's activation A,
    flattened, dotted with the CAV. The model must be left as it was (no hooks)."""
    report = Report("check_directional_derivatives", exercise="directional_derivatives",
                    forbid=FORBID_DERIVATIVES)
    for k, (net, layer, images, targets, cav) in enumerate(_derivative_cases()):
        args = (net, layer, images, targets, cav)
        before = hooks.Snapshot.of(net)
        raw = call(report, fn, net, layer, images.clone(), targets.clone(), cav.clone())
        if not report.passed or changed_model(report, fn, before, net):
            break
        n = len(images)

        def shape_hint(g, images=images, n=n):
            if tuple(g.shape) == tuple(images.shape):
                return ": you returned the images unchanged; return one number S per image"
            if g.dim() == 2 and g.shape[0] == n:
                return (": that is one vector per image (the gradient itself?); dot it with the CAV "
                        "to get one number per image")
            if g.dim() == 0:
                return " (one number per image, not one for the whole batch)"
            return " (one directional derivative per image)"
        got = tensor_result(report, fn, raw, shape=(n,), what="one number per image", shape_hint=shape_hint)
        if got is None:
            break
        want = _derivatives(*args)
        mistakes = [
            (-want, "the sign is flipped: S is the gradient dotted with the CAV, which points "
             "towards the concept (not away from it)"),
            (_derivatives(*args, kind="activation"), "you dotted the layer's activations with the CAV: "
             "S uses the gradient of the target logit with respect to those activations"),
            (_derivatives(*args, kind="gradient_x_activation"), "you multiplied the gradient by the "
             "activations first: S is the plain gradient dotted with the CAV"),
            (_derivatives(*args, kind="cosine"), "you divided by the gradient's length: S is the plain "
             "dot product, not a cosine"),
            (_derivatives(*args, output="probability"), "you differentiated the softmax probability: S "
             "uses the class logit (the model's raw output)"),
            (_derivatives(*args, target_rule="first"), "every image used the first image's target: each "
             "image needs the gradient of its own class's logit (targets[n])"),
            (_derivatives(*args, target_rule="all"), "each image got the gradient of all listed targets' "
             "logits summed: pick one logit per image, the one of its own target (a gather)"),
        ]
        if diagnose(report, got, mistakes) or degenerate(report, got, want):
            break
        if k == 0 and _random_answer(report, fn, args, got, "result"):
            break
        if report.compare(f"{n} images, layer {layer!r} ({cav.numel()} values per image), targets "
                          f"{targets.tolist()}", got, want, tol=1e-4):
            continue
        break
    return finish(report, verbose)


def check_tcav_scores(fn, verbose: bool = True) -> Report:
    """``fn(derivatives, labels, n_classes)``: derivatives FloatTensor[N] (S of each image),
    labels LongTensor[N] (class 0..n_classes-1) -> FloatTensor[n_classes]: for each class,
    the share of that class's images whose S is above 0."""
    report = Report("check_tcav_scores", exercise="tcav_scores", forbid=FORBID_SCORES)
    for k, (derivs, labels, n) in enumerate(_score_cases()):
        args = (derivs, labels, n)
        raw = call(report, fn, derivs.clone(), labels.clone(), n)
        if not report.passed:
            break

        def shape_hint(g, m=len(derivs), n=n):
            if tuple(g.shape) == (m,):
                return ": you returned one value per image (the derivatives unchanged?); return one score per class"
            if g.dim() == 0:
                return " (one score per class, not a single number for all images)"
            return " (one score per class)"
        got = tensor_result(report, fn, raw, shape=(n,), what="one score per class", shape_hint=shape_hint)
        if got is None:
            break
        want = _scores(*args)
        overall = torch.full((n,), float((derivs > 0).float().mean()))
        if torch.allclose(got, overall, atol=1e-6):
            report.fail("every class got the same share, counted over all images: score each class on its "
                        "own images (those with that label)")
            break
        counts = torch.stack([((derivs > 0) & (labels == c)).sum() for c in range(n)]).float()
        mistakes = [
            (_scores(*args, rule="nonnegative"), "you counted S >= 0: an image counts only when S > 0 "
             "(S = 0 does not push the class up)"),
            (_scores(*args, rule="negative"), "you counted the images with S < 0: the score is the share "
             "with S > 0, where the concept pushes the class up"),
            (_scores(*args, per_class=False), "you divided by the number of all images: divide each class's "
             "count by the number of images of that class"),
            (counts, "you returned counts: divide by the number of images of each class to get a share"),
            (_scores(*args, rule="mean"), "you averaged S itself: the TCAV score counts signs (the share of "
             "images with S > 0), not sizes"),
        ]
        if diagnose(report, got, mistakes) or degenerate(report, got, want):
            break
        if k == 0 and _random_answer(report, fn, args, got, "score"):
            break
        if report.compare(f"{len(derivs)} images of {n} classes (sizes "
                          f"{torch.bincount(labels, minlength=n).tolist()}, {int((derivs == 0).sum())} with S = 0)",
                          got, want, tol=1e-6):
            continue
        break
    return finish(report, verbose)
