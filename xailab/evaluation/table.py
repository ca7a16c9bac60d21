"""The comparison table: every method on every model, scored image by image.

``image_scores`` scores one method on one model, one value per image and metric, so
every mean can carry a bootstrap interval (``summary``). ``score_images`` runs it for
every (model, method) pair and returns a long pandas table (one row per image).

The course's table (64 test images, both main models, every registered method) takes
minutes, more than a notebook's budget, so ``python -m xailab.evaluation`` computes
it once and writes ``data/results/comparison_scores.csv`` and
``data/results/shortcut_scores.csv``; lecture 08 loads them. Running the command again
adds only the (model, method) pairs missing from the files, such as a newly
registered method; ``--redo NAME`` recomputes one method.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from .faithfulness import _target, deletion, insertion
from .intervals import bootstrap_interval
from .localisation import pointing_game, relevance_mass
from .robustness import max_sensitivity
from .sanity import parameter_layers, randomise, spearman

RESULTS = Path(__file__).resolve().parents[2] / "data" / "results"
SCORES_CSV = RESULTS / "comparison_scores.csv"
SHORTCUT_CSV = RESULTS / "shortcut_scores.csv"
COMMAND = "python -m xailab.evaluation"
RANDOM_MAP = "(random map)"

# The course table's settings. The perturbation methods run with cheap options (their
# scores are noisier than with the defaults); everything else runs with its defaults.
MODELS = ("shapesnet", "shapesvgg")
SHORTCUT_MODELS = ("shapesnet-shortcut", "shapesnet")
SETTINGS = dict(n_images=64, data_seed=8, shortcut_seed=0, step=256, tolerance=3, n_sensitivity=2,
                randomise_layers=1, seed=0)
OPTIONS = {"occlusion": dict(window=16, stride=8), "rise": dict(n_masks=200), "lime": dict(n_samples=100),
           "kernel_shap": dict(n_samples=100), "smoothgrad": dict(n_samples=8),
           "integrated_gradients": dict(n_steps=16),
           "anchors": dict(n_samples=8, n_confirm=16, confirm_rounds=1, n_coverage=50, max_size=2)}
# Maps with no zero point: RISE gives an unimportant pixel the image's average
# probability, so its relevance mass is measured above each map's mean.
ABOVE_MEAN = ("rise",)

METRICS = {"deletion": False, "insertion": True, "pointing": True, "mass": True,   # higher is better?
           "sensitivity": False, "randomised": False}
SHORTCUT_METRICS = {"watermark": True, "quarter": True}


def not_applicable() -> tuple:
    """The errors by which a method says it cannot run on a model (CAM without global
    average pooling, attention methods on a CNN): the table notes them instead of scores."""
    from ..attribution.cam import CAMNotApplicableError

    try:
        from ..attribution.attention import NotATransformerError
    except ImportError:
        return (CAMNotApplicableError,)
    return CAMNotApplicableError, NotATransformerError


def mass(heat: torch.Tensor, masks: torch.Tensor, method: str) -> torch.Tensor:
    """Relevance mass of ``method``'s maps inside ``masks``: the non-negative part, or
    for the methods in ``ABOVE_MEAN`` the part above each map's mean."""
    if method in ABOVE_MEAN:
        return relevance_mass(heat, masks, above_mean=True)
    return relevance_mass(heat.clamp_min(0), masks)


def seeded_noise(ids, radius: float = 0.02, seed: int = 0):
    """Max-sensitivity's perturbation with noise seeded per image (by its index in the
    data set), so an image's score does not depend on the batch it is scored in."""
    ids = [int(i) for i in ids]

    def perturb(xs):
        n = len(xs) // len(ids)
        noise = torch.cat([(torch.rand((n, *xs.shape[1:]), generator=torch.Generator().manual_seed(
            seed * 100_003 + i)) * 2 - 1) * radius for i in ids])
        return (xs + noise.to(xs)).clamp(0, 1)
    return perturb


def image_scores(model: nn.Module, x: torch.Tensor, masks: torch.Tensor, method: str, target=None,
                 options: dict | None = None, ids=None, step: int = 256, tolerance: int = 3,
                 n_sensitivity: int = 2, randomise_layers: int = 1, seed: int = 0) -> dict:
    """Per-image scores of ``method`` on ``model``: deletion AUC (lower is better),
    insertion AUC (higher), pointing game hit and relevance mass on the object
    ``masks`` (higher), max-sensitivity (lower) and the Spearman similarity to the
    same method after randomising the top ``randomise_layers`` parameter layers
    (lower), each a FloatTensor[N]; ``seconds``: the explanation's time per image.
    ``ids`` (default 0..N-1) seed each image's sensitivity noise. Raises
    ``CAMNotApplicableError`` where the method cannot run on the model."""
    from .. import attribution

    opts = dict(options or {})
    t = _target(model, x, target)
    start = time.perf_counter()
    heat = attribution.explain(model, x, t, method, **opts)
    seconds = (time.perf_counter() - start) / len(x)
    scores = map_scores(model, x, t, heat, masks, method, step, tolerance)
    ids = range(len(x)) if ids is None else ids
    scores["sensitivity"] = max_sensitivity(model, x, method, t, n_sensitivity,
                                            perturb=seeded_noise(ids, seed=seed), **opts)
    rand = randomise(model, parameter_layers(model)[:randomise_layers], seed)
    scores["randomised"] = spearman(heat, attribution.explain(rand, x, t, method, **opts))
    scores["seconds"] = torch.full((len(x),), seconds)
    return scores


def map_scores(model, x, t, heat, masks, method="", step=256, tolerance=3) -> dict:
    """Deletion, insertion, pointing game and relevance mass of given maps, per image."""
    return {"deletion": deletion(model, x, heat, t, step), "insertion": insertion(model, x, heat, t, step),
            "pointing": pointing_game(heat, masks, tolerance).float(), "mass": mass(heat, masks, method)}


def random_maps(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The baseline every method should beat: uniform noise maps, seeded."""
    return torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(seed)).to(x)


def _frame(model_name, method, scores: dict, ids) -> pd.DataFrame:
    cols = {k: v.detach().cpu().double().numpy() for k, v in scores.items()}
    return pd.DataFrame({"model": model_name, "method": method, "image": list(ids), **cols})


def score_images(models: dict, x: torch.Tensor, masks: torch.Tensor, methods=None, options=None,
                 target=None, ids=None, random_map: bool = True, progress: bool = True,
                 **settings) -> pd.DataFrame:
    """One row per (model, method, image) with every metric of ``image_scores``
    (``settings``: its step, tolerance, n_sensitivity, randomise_layers, seed), plus the
    random-map baseline per model. A method that cannot run on a model (CAM on a head
    without global average pooling) gets one row with a ``note`` and no scores."""
    from tqdm.auto import tqdm

    from .. import attribution

    methods = list(attribution.methods() if methods is None else methods)
    options = OPTIONS if options is None else options
    ids = list(range(len(x))) if ids is None else list(ids)
    frames = []
    bar = tqdm(total=len(models) * len(methods), disable=not progress, desc="comparison table")
    for name, model in models.items():
        t = _target(model, x, target)
        for method in methods:
            bar.set_postfix_str(f"{name} {method}")
            try:
                scores = image_scores(model, x, masks, method, t, options.get(method, {}), ids, **settings)
                frames.append(_frame(name, method, scores, ids))
            except not_applicable() as error:
                frames.append(pd.DataFrame([{"model": name, "method": method,
                                             "note": f"not applicable: {error}"}]))
            bar.update()
        if random_map:
            keep = {k: settings[k] for k in ("step", "tolerance") if k in settings}
            frames.append(_frame(name, RANDOM_MAP, map_scores(model, x, t, random_maps(x), masks, **keep), ids))
    bar.close()
    return pd.concat(frames, ignore_index=True)


def quarter_mask(size: int = 64) -> torch.Tensor:
    """The bottom-right quarter of the image, which holds the shortcut watermark."""
    q = torch.zeros(size, size, dtype=torch.bool)
    q[size // 2:, size // 2:] = True
    return q


def shortcut_scores(models: dict, methods=None, n: int = 64, seed: int = 0, options=None,
                    progress: bool = True) -> pd.DataFrame:
    """Per image of ``xailab.data.shapes("test", n, seed, shortcut=True, watermark="all")``,
    explained for the predicted class: the share of each method's relevance mass on the
    watermark's own pixels ("watermark") and in the bottom-right quarter that holds it
    ("quarter"); the random map as baseline. Plus the watermark's area share."""
    from tqdm.auto import tqdm

    from .. import attribution
    from ..data import shapes

    methods = list(attribution.methods() if methods is None else methods)
    options = OPTIONS if options is None else options
    ds = shapes("test", n, seed=seed, shortcut=True, watermark="all")
    x = ds.images()
    marks = torch.stack([torch.as_tensor(ds.ground_truth(i)["watermark"]) for i in range(n)]).bool()
    quarter = quarter_mask(x.shape[-1]).expand_as(marks)
    frames = []
    bar = tqdm(total=len(models) * len(methods), disable=not progress, desc="shortcut table")
    for name, model in models.items():
        t = _target(model, x, None)
        for method in [*methods, RANDOM_MAP]:
            try:
                heat = random_maps(x) if method == RANDOM_MAP else attribution.explain(
                    model, x, t, method, **options.get(method, {}))
            except not_applicable() as error:
                frames.append(pd.DataFrame([{"model": name, "method": method,
                                             "note": f"not applicable: {error}"}]))
                continue
            scores = {"watermark": mass(heat, marks, method), "quarter": mass(heat, quarter, method),
                      "area": marks.float().flatten(1).mean(1)}
            frames.append(_frame(name, method, scores, range(n)))
            bar.update(method != RANDOM_MAP)
    bar.close()
    return pd.concat(frames, ignore_index=True)


def summary(scores: pd.DataFrame, metrics=None, digits: int = 3, **interval_options) -> pd.DataFrame:
    """One row per (model, method) in the order of ``scores``: each metric's mean over
    the images with its bootstrap 95% interval (an ``Interval``; None where the metric
    does not apply), the number of images and any note."""
    metrics = [m for m in (metrics or [*METRICS, *SHORTCUT_METRICS]) if m in scores]
    rows = []
    for (model, method), group in scores.groupby(["model", "method"], sort=False):
        row = {"model": model, "method": method, "images": int(group[metrics[0]].notna().sum())}
        for m in metrics:
            values = group[m].dropna()
            row[m] = bootstrap_interval(values.to_numpy(), **interval_options) if len(values) > 1 else None
        if "note" in group and group["note"].notna().any():
            row["note"] = group["note"].dropna().iloc[0]
        if "seconds" in group and group["seconds"].notna().any():
            row["s/image"] = round(float(group["seconds"].mean()), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def per_image(scores: pd.DataFrame, model: str, method: str, metric: str):
    """The per-image values of one metric, ordered by image (for paired comparisons)."""
    rows = scores[(scores["model"] == model) & (scores["method"] == method)].sort_values("image")
    if rows.empty:
        raise KeyError(f"no scores for {method!r} on {model!r}; run `{COMMAND}` to add them")
    return rows[metric].to_numpy()


def _cell(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if hasattr(value, "low"):
        return f"{value.mean:.{digits}f} [{value.low:.{digits}f}, {value.high:.{digits}f}]"
    return str(value)


def format_table(rows, columns=None, digits: int = 2) -> str:
    """Rows (a list of dicts or a DataFrame) as an aligned plain-text table; intervals
    print as ``mean [low, high]``, missing cells blank."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(c) for c in columns]] + [[_cell(r.get(c), digits) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells)


def comparison_table(models: dict, x: torch.Tensor, masks: torch.Tensor, methods=None, options=None,
                     progress: bool = True, **settings) -> list[dict]:
    """The table in one call: ``summary(score_images(...))`` as a list of row dicts, one
    per (model, method) plus a random-map row per model (see ``score_images``)."""
    scores = score_images(models, x, masks, methods, options, progress=progress, **settings)
    return summary(scores).to_dict("records")


def missing_methods(scores: pd.DataFrame, models=MODELS, methods=None) -> dict:
    """{model: [registered methods with no rows in ``scores``]} (empty lists: complete)."""
    from .. import attribution

    methods = list(attribution.methods() if methods is None else methods)
    return {m: [k for k in methods if k not in set(scores.loc[scores["model"] == m, "method"])] for m in models}


def course_data(n: int | None = None, seed: int | None = None):
    """The table's images, true labels and object masks (``shapes("test", n, seed)``,
    default: the course table's 64 images)."""
    from ..data import shapes

    n = SETTINGS["n_images"] if n is None else n
    seed = SETTINGS["data_seed"] if seed is None else seed
    ds = shapes("test", n, seed=seed)
    return ds.images(), ds.labels, torch.stack([ds.ground_truth(i)["mask"] for i in range(n)])


def _missing(path: Path, models, methods) -> dict:
    """{model: methods with no rows in the CSV at ``path``, the random map included}."""
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["model", "method"])
    return missing_methods(old, models, [*methods, RANDOM_MAP])


def _write(path: Path, new: pd.DataFrame, models_order, methods_order) -> None:
    """Merge ``new`` into the CSV at ``path`` (its (model, method) pairs replace the old
    ones) under a file lock, so runs for different models can share one file."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            old = pd.read_csv(path)
            replaced = old.set_index(["model", "method"]).index.isin(new.set_index(["model", "method"]).index)
            new = pd.concat([old[~replaced], new], ignore_index=True)
        rank = {m: i for i, m in enumerate([*methods_order, RANDOM_MAP])}
        place = {m: i for i, m in enumerate(models_order)}
        new = new.assign(_m=new["model"].map(place).fillna(len(place)), _k=new["method"].map(rank).fillna(len(rank)))
        new = new.sort_values(["_m", "model", "_k", "method", "image"], kind="stable").drop(columns=["_m", "_k"])
        new.to_csv(path, index=False, float_format="%.6g")
    path.with_suffix(".lock").unlink(missing_ok=True)


def _update(path: Path, compute, models: dict, methods, redo, all_models) -> None:
    """Compute, model by model and method by method, what ``path`` misses (and the
    methods in ``redo``), writing after each so that an interrupted run keeps its work."""
    for name in models:
        for method in [*methods, RANDOM_MAP]:
            if method not in _missing(path, [name], methods)[name] and method not in redo:
                continue
            start = time.perf_counter()
            new = compute({name: models[name]}, [] if method == RANDOM_MAP else [method], method == RANDOM_MAP)
            _write(path, new, all_models, attribution_order(methods))
            print(f"{path.name} {name} {method}: {time.perf_counter() - start:.0f} s", flush=True)


def attribution_order(methods) -> list:
    """Every registered method in the registry's order, then any others given."""
    from .. import attribution

    return list(dict.fromkeys([*attribution.methods(), *methods]))


def main(argv=None) -> None:
    from .. import attribution, models as zoo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redo", nargs="*", default=[], help="recompute these methods (default: add missing ones)")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods (default: every registered one)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="models of the comparison table")
    parser.add_argument("--shortcut-models", nargs="*", default=list(SHORTCUT_MODELS),
                        help="models of the shortcut table")
    args = parser.parse_args(argv)
    torch.manual_seed(SETTINGS["seed"])
    methods = attribution.methods() if args.methods is None else args.methods
    x, _, masks = course_data()
    settings = {k: SETTINGS[k] for k in ("step", "tolerance", "n_sensitivity", "randomise_layers", "seed")}
    def comparison(nets, todo, baseline):
        return score_images(nets, x, masks, todo, random_map=baseline, progress=False, **settings)
    _update(SCORES_CSV, comparison, {name: zoo.load(name) for name in args.models}, methods, args.redo, MODELS)

    def shortcut(nets, todo, baseline):
        new = shortcut_scores(nets, todo, SETTINGS["n_images"], SETTINGS["shortcut_seed"], progress=False)
        return new if baseline else new[new["method"] != RANDOM_MAP]
    _update(SHORTCUT_CSV, shortcut, {name: zoo.load(name) for name in args.shortcut_models}, methods,
            args.redo, SHORTCUT_MODELS)


if __name__ == "__main__":
    main()
