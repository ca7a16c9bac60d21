"""Shipped learned inverses: one ``Decoder`` per layer that lecture 07 inverts by
optimisation, trained to convergence on shapes images, with their loss curves.

The files are ``data/models/decoder-MODEL-LAYER.pt`` (weights, architecture and the
per-epoch training and held-out losses), listed with their sha256 and recipe in
``data/models/decoders.json``. Recreate them with::

    python -m xailab.optvis.decoders            # every layer in LAYERS, about 15 min on a 2-core CPU
    python -m xailab.optvis.decoders features.block2.conv2

``load_decoder(model, layer)`` returns the trained decoder (eval mode) and its curves.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from .. import data, models
from .inversion import Decoder, train_decoder

LAYERS = ("features.block1.conv2", "features.block2.conv2", "features.block3.conv1", "features.block3.conv2")
RECIPE = dict(n_train=2000, train_seed=5, n_held_out=200, held_out_seed=6, epochs=12, batch_size=32,
              lr=3e-3, width=32, seed=0, lr_decay=True)
MANIFEST = models.MODEL_DIR / "decoders.json"


def decoder_path(model_name: str, layer: str):
    return models.MODEL_DIR / f"decoder-{model_name}-{layer.removeprefix('features.')}.pt"


def recipe_images(recipe: dict = RECIPE) -> tuple[torch.Tensor, torch.Tensor]:
    """(training images, held-out images) of the recipe: the shapes train and test splits."""
    return (data.shapes("train", recipe["n_train"], seed=recipe["train_seed"]).images(),
            data.shapes("test", recipe["n_held_out"], seed=recipe["held_out_seed"]).images())


def train_and_save(model_name: str, layer: str, recipe: dict = RECIPE, progress: bool = True) -> dict:
    """Train the decoder of ``layer`` by the recipe, save it and its curves, update the manifest."""
    model = models.load(model_name)
    train, held = recipe_images(recipe)
    history: dict = {}
    start = time.perf_counter()
    dec = train_decoder(model, layer, train, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                        lr=recipe["lr"], width=recipe["width"], seed=recipe["seed"], progress=progress,
                        held_out=held, history=history, lr_decay=recipe["lr_decay"])
    first = dec.net[0]
    arch = dict(in_channels=first.in_channels, in_size=int(models_features_size(model, layer)),
                out_size=int(train.shape[-1]), width=recipe["width"])
    path = decoder_path(model_name, layer)
    torch.save(dict(state=dec.state_dict(), arch=arch, history=history), path)
    entries = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    entries[path.stem] = dict(sha256=models.sha256(path), model=model_name, layer=layer, recipe=recipe,
                              held_out_mse=round(history["held_out"][-1], 5),
                              seconds=round(time.perf_counter() - start), torch=torch.__version__)
    MANIFEST.write_text(json.dumps(dict(sorted(entries.items())), indent=2) + "\n")
    return entries[path.stem]


def models_features_size(model, layer: str) -> int:
    from .render import features
    return features(model, layer, torch.zeros(1, 3, 64, 64)).shape[-1]


def load_decoder(model_name: str, layer: str) -> tuple[Decoder, dict]:
    """The shipped decoder of ``layer`` (eval mode, sha256 checked) and its loss curves
    {"train": [...], "held_out": [...]}, one value per epoch."""
    path = decoder_path(model_name, layer)
    entry = (json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}).get(path.stem)
    if entry is None or not path.exists():
        raise FileNotFoundError(f"no decoder for {model_name} at {layer}; create it with "
                                f"`python -m xailab.optvis.decoders {layer}`")
    if models.sha256(path) != entry["sha256"]:
        raise RuntimeError(f"{path} does not match its sha256 in {MANIFEST.name}; recreate it with "
                           f"`python -m xailab.optvis.decoders {layer}`")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    dec = Decoder(**saved["arch"])
    dec.load_state_dict(saved["state"])
    return dec.eval(), saved["history"]


def main(argv=None):
    parser = argparse.ArgumentParser(description="train the shipped inversion decoders of lecture 07")
    parser.add_argument("layers", nargs="*", default=list(LAYERS), help=f"default: {' '.join(LAYERS)}")
    parser.add_argument("--model", default="shapesnet")
    args = parser.parse_args(argv)
    for layer in args.layers:
        entry = train_and_save(args.model, layer)
        print(f"{layer}: held-out MSE {entry['held_out_mse']}, {entry['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
