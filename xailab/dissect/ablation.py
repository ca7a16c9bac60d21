"""Unit ablation: switch off a layer's units and measure what the network loses.

Bau et al. (PNAS 2020) test whether a unit that dissection labels with a concept
matters for the decisions that need the concept: zero the unit's activation map and
measure the accuracy per class. Random units of the same number are the baseline.

    drops = class_accuracy_drop(model, "features.block3", [4, 17], images, labels)
    study = ablation_study(model, "features.block3", top_units, images, labels, target=0)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import hooks
from ..runtime import batched, evaluating, positive_int


@contextlib.contextmanager
def switched_off(model: nn.Module, layer: str, units):
    """Inside the ``with``, the output channels ``units`` of ``layer`` are zero."""
    units = torch.as_tensor(list(units), dtype=torch.long)

    def zero(module, inputs, output):
        output = output.clone()
        output[:, units.to(output.device)] = 0
        return output

    with hooks.forward_hooks(model, {layer: zero}):
        yield model


def class_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, n_classes: int,
                   batch_size: int = 200) -> torch.Tensor:
    """Top-1 accuracy of ``model`` (a module or any function of ``images``) per class:
    FloatTensor[n_classes] (NaN for an absent class)."""
    batch_size = positive_int(batch_size, "batch_size")
    correct = torch.zeros(n_classes)
    with evaluating(model) if isinstance(model, nn.Module) else torch.no_grad():
        for part in batched(len(images), batch_size):
            pred = model(images[part]).argmax(1).cpu()
            correct += torch.bincount(labels[part][pred == labels[part]], minlength=n_classes).float()
    count = torch.bincount(labels, minlength=n_classes).float()
    return correct / count


def class_accuracy_drop(model: nn.Module, layer: str, units, images, labels, n_classes: int | None = None,
                        batch_size: int = 200) -> torch.Tensor:
    """Accuracy per class of the intact model minus that with ``units`` of ``layer`` switched off."""
    n_classes = n_classes or len(model.classes)
    intact = class_accuracy(model, images, labels, n_classes, batch_size)
    with switched_off(model, layer, units):
        ablated = class_accuracy(model, images, labels, n_classes, batch_size)
    return intact - ablated


@dataclass
class AblationStudy:
    """Accuracy drops (intact minus ablated) when switching off ``units`` vs ``random``
    draws of as many units: ``top`` FloatTensor[classes], ``random`` FloatTensor[draws, classes]."""
    units: list
    top: torch.Tensor
    random: torch.Tensor

    def share_at_least(self, target: int) -> float:
        """Share of the random draws whose drop on ``target`` is at least the top units' drop."""
        return float((self.random[:, target] >= self.top[target]).float().mean())


def ablation_study(model: nn.Module, layer: str, units, images, labels, draws: int = 20, seed: int = 0,
                   batch_size: int = 200, head=None, activations: torch.Tensor | None = None) -> AblationStudy:
    """Drop in per-class accuracy when ``units`` of ``layer`` are switched off, and when
    ``draws`` random sets of as many units (from all of the layer's units, see
    ``random_units``) are switched off instead.

    ``head``, optional: the rest of the network from ``layer``'s output to the logits
    (for ``shapesnet`` at its last block, ``lambda a: model.fc(a.mean((2, 3)))``). With
    it the layer's activations are computed once (or taken from ``activations``, the
    layer's output for ``images``) and every ablation only runs the head; without it
    every ablation runs the whole model with a hook."""
    draws = positive_int(draws, "draws")
    units = [int(u) for u in units]
    n_classes = len(model.classes)
    if head is None:
        def accuracy(chosen):
            with switched_off(model, layer, chosen):
                return class_accuracy(model, images, labels, n_classes, batch_size)
        n_units = layer_activations(model, layer, images[:1]).shape[1]
    else:
        acts = activations if activations is not None else layer_activations(model, layer, images, batch_size)
        n_units = acts.shape[1]

        def accuracy(chosen):
            kept = torch.ones(n_units, device=acts.device)
            kept[chosen] = 0
            with evaluating(model):
                return class_accuracy(lambda a: head(a * kept[:, None, None]), acts, labels, n_classes, batch_size)
    intact = accuracy([])
    random = torch.stack([intact - accuracy(random_units(n_units, len(units), seed, i)) for i in range(draws)])
    return AblationStudy(units=units, top=intact - accuracy(units), random=random)


def layer_activations(model: nn.Module, layer: str, images: torch.Tensor, batch_size: int = 200) -> torch.Tensor:
    """``layer``'s output for every image, in batches."""
    parts = []
    with evaluating(model):
        for part in batched(len(images), batch_size):
            with hooks.record(model, layer) as rec:
                model(images[part])
            parts.append(rec.activations[layer])
    return torch.cat(parts)


def random_units(n_units: int, k: int, seed: int, draw: int) -> list[int]:
    """The ``draw``-th random set of ``k`` of ``n_units`` units (each draw has its own
    generator, so draw i is the same whatever the number of draws)."""
    return sorted(np.random.default_rng([seed, draw]).choice(n_units, k, replace=False).tolist())

