"""Rule-based methods: our time / the reference's time, same model, batch and settings,
measured in the same run (median of interleaved repeats). lrp and excitation_backprop
against zennit (one Gradient attributor call on the whole batch), in two configurations:
composite and canonizer registered inside the timed call (as ours copies the model inside
its call) and registered once before the run (zennit at its best: only the attribution is
timed); deeplift against Captum's DeepLift (whole batch, one call: it has no batching
option). The ratio is ours / the fastest configuration. Goal: every ratio <= 1.0.

    python benchmarks/rules.py [--repeats 5] [--batch 16] [--models shapesnet shapesvgg resnet18]

(deeplift is not timed on resnet18: Captum refuses a ReLU module that is called twice.)
"""
import argparse
import copy
import warnings

import torch
from captum.attr import DeepLift
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import (EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat,
                               ExcitationBackprop)
from zennit.rules import Pass
from zennit.torchvision import ResNetCanonizer

import xailab
from xailab import models
from xailab.data import shapes
from xailab.models import Normalize
from timing import median_times

ZENNIT = {"epsilon_plus": EpsilonPlus, "epsilon_plus_flat": EpsilonPlusFlat,
          "epsilon_alpha2_beta1": EpsilonAlpha2Beta1, "epsilon_gamma_box": EpsilonGammaBox,
          "excitation_backprop": ExcitationBackprop}


OPEN = []                                   # zennit attributors registered for the whole run


def zennit_call(model, x, t, name, start):
    """Zero-argument callables by configuration: zennit's relevance for ``name`` on the
    whole batch."""
    resnet = "resnet" in getattr(model, "arch", "")
    kw = dict(layer_map=[(Normalize, Pass())])
    if name == "epsilon_gamma_box":
        mean, std = model.normalize.mean, model.normalize.std
        size = (1, 3, *x.shape[-2:])
        kw.update(low=((0 - mean) / std).expand(size), high=((1 - mean) / std).expand(size))

    def seed(out):
        one_hot = torch.zeros_like(out).scatter_(1, t.view(-1, 1), 1.0)
        return one_hot * out if start == "logit" else one_hot

    def attributor(net):
        canonizers = [ResNetCanonizer()] if resnet else [SequentialMergeBatchNorm()]
        return Gradient(net, ZENNIT[name](canonizers=canonizers, **kw))

    def run():
        with attributor(model) as attribute:
            return attributor_call(attribute)

    def attributor_call(attribute):
        return attribute(x, seed)[1]

    # zennit at its best: the composite registered once (on a copy, so that our method and
    # the per-call variant see a model without hooks) and only the attribution timed
    registered = attributor(copy.deepcopy(model)).__enter__()
    OPEN.append(registered)
    return {"zennit per call": run, "zennit registered once": lambda: attributor_call(registered)}


def cases(model, x, t):
    """method -> (ours, {reference configuration: callable}), zero-argument callables
    computing the same thing."""
    def ours(method, **kw):
        return lambda: xailab.explain(model, x, t, method=method, reduce=None, **kw)

    def captum_deeplift():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DeepLift(model).attribute(x, target=t, baselines=0.0)

    out = {f"lrp {c}": (ours("lrp", composite=c), zennit_call(model, x, t, c, "logit"))
           for c in ("epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box")}
    out["excitation_backprop"] = (ours("excitation_backprop"),
                                  zennit_call(model, x, t, "excitation_backprop", "one"))
    out["deeplift"] = (ours("deeplift"), {"Captum DeepLift": captum_deeplift})
    return out


def load(name):
    model = models.load(name) if name.startswith("shapes") else models.load_torchvision(name)
    for m in model.modules():               # Captum's DeepLift refuses in-place ReLUs
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--models", nargs="+", default=["shapesnet", "shapesvgg", "resnet18"])
    args = parser.parse_args()
    torch.manual_seed(0)
    x = shapes("test", args.batch, seed=1).images()
    print(f"{args.batch} images of 64 px, torch threads: {torch.get_num_threads()}")
    print(f"{'model':10s} {'method':26s} {'ours s':>7s}  reference times (s)"
          f"{'':44s} {'ours/best':>9s}")
    for name in args.models:
        model = load(name)
        t = torch.arange(args.batch) % 5
        for method, (ours, refs) in cases(model, x, t).items():
            if name == "resnet18" and method == "deeplift":
                continue                     # Captum's DeepLift refuses resnet's reused ReLUs
            for fn in (ours, *refs.values()):
                fn()                         # warm-up
            times = median_times({"ours": ours, **refs}, args.repeats)
            best = min(refs, key=times.get)
            shown = "  ".join(f"{k} {times[k]:.3f}" for k in refs)
            print(f"{name:10s} {method:26s} {times['ours']:7.3f}  {shown:62s} {times['ours'] / times[best]:8.2f}x",
                  flush=True)
        for attribute in OPEN:
            attribute.__exit__(None, None, None)
        OPEN.clear()


if __name__ == "__main__":
    main()
