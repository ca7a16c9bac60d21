"""The dissection variants of lecture 06: the shapesnet variants and snapshots, unit
ablation, and a subset of the precomputed tables re-run by the seeded script."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from xailab import hooks, models, train
from xailab.data import shapes
from xailab.dissect import ablation

from studytools import load_script

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ROOT / "data" / "results" / "dissection_variants.csv"
ABLATION = ROOT / "data" / "results" / "dissection_variants_ablation.csv"


def _script():
    return load_script("dissection_variants")


def test_variants_differ_only_in_width_or_batchnorm():
    base, nobn = models.build("shapesnet-base"), models.build("shapesnet-nobn")
    assert hooks.list_layers(base) == hooks.list_layers(nobn)            # same layer names
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in nobn.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in base.modules()) == 6
    widths = {n: models.build(n).fc.in_features for n in ("shapesnet-narrow", "shapesnet-base", "shapesnet-wide")}
    assert widths == {"shapesnet-narrow": 32, "shapesnet-base": 64, "shapesnet-wide": 96}
    recipes = {n: {k: v for k, v in train.RECIPES[n].items() if k not in ("snapshots", "lr")}
               for n in ("shapesnet-base", "shapesnet-nobn", "shapesnet-narrow", "shapesnet-wide")}
    assert len({json.dumps(r, sort_keys=True) for r in recipes.values()}) == 1     # one shared recipe
    assert train.RECIPES["shapesnet-nobn"]["lr"] == train.RECIPES["shapesnet-base"]["lr"] / 3
    assert train.RECIPES["shapesnet-base"]["snapshots"] == list(models.BASE_SNAPSHOTS)


def test_snapshots_are_saved_with_their_manifest_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "accuracy", lambda *a, **k: 0.0)       # the 2000 validation images are slow
    recipe = dict(shortcut=False, n_train=128, epochs=1, lr=3e-3, batch=64, seed=0, snapshots=[0, 1])
    train.train("shapesnet-base", recipe, tmp_path, log=lambda *_: None)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest) == {"shapesnet-base", "shapesnet-base-step0000", "shapesnet-base-step0001"}
    for name, entry in manifest.items():
        assert entry["sha256"] == models.sha256(tmp_path / f"{name}.pt")
    assert manifest["shapesnet-base-step0001"]["recipe"] == {"snapshot_of": "shapesnet-base", "step": 1}
    first = torch.load(tmp_path / "shapesnet-base-step0000.pt", weights_only=True)
    torch.manual_seed(0)
    assert all(torch.equal(first[k], v) for k, v in models.build("shapesnet-base").state_dict().items())


def test_shipped_variants_load_and_stay_small():
    shipped = [n for n in models.names() if n.startswith("shapesnet-") and (models.MODEL_DIR / f"{n}.pt").exists()]
    assert "shapesnet-base" in shipped and "shapesnet-base-step0000" in shipped
    for name in shipped:
        models.load(name)                            # sha256 checked against the manifest
    total = sum(p.stat().st_size for p in models.MODEL_DIR.iterdir() if p.is_file())
    assert total < 25 * 2 ** 20


@pytest.fixture(scope="module")
def small():
    model = models.load("shapesnet")
    ds = shapes("test", 60, seed=0)
    return model, ds.images(), ds.labels


def test_switched_off_zeroes_the_units_and_leaves_no_hook(small):
    model, x, _ = small
    with ablation.switched_off(model, "features.block3", [1, 5]), hooks.record(model, "features.block3") as rec:
        model(x[:4])
    a = rec.activations["features.block3"]
    assert a[:, [1, 5]].abs().sum() == 0 and a[:, 0].abs().sum() > 0
    assert hooks.count_hooks(model) == 0


def test_the_head_shortcut_gives_the_hooked_numbers(small):
    model, x, y = small
    units = [0, 3, 7, 9, 12, 20, 33, 41]
    slow = ablation.ablation_study(model, "features.block3", units, x, y, draws=3, seed=2)
    fast = ablation.ablation_study(model, "features.block3", units, x, y, draws=3, seed=2,
                                   head=lambda a: model.fc(a.mean((2, 3))))
    assert torch.equal(slow.top, fast.top) and torch.equal(slow.random, fast.random)
    assert ablation.random_units(64, 8, 0, 2) == ablation.random_units(64, 8, 0, 2)
    assert ablation.random_units(64, 8, 0, 2) != ablation.random_units(64, 8, 0, 3)
    with pytest.raises(ValueError, match="draws"):
        ablation.ablation_study(model, "features.block3", units, x, y, draws=0)


@pytest.fixture(scope="module")
def script_and_folder(tmp_path_factory):
    script = _script()
    return script, script.make_broden(tmp_path_factory.mktemp("variants") / "broden")


def test_a_variant_dissection_reproduces_the_shipped_table(script_and_folder):
    script, folder = script_and_folder
    table = pd.read_csv(VARIANTS)
    name = "shapesnet-narrow" if "shapesnet-narrow" in set(table.model) else "shapesnet-base-step0000"
    again = pd.DataFrame(script.dissection_rows(name, folder))
    shipped = table[table.model == name].reset_index(drop=True)[again.columns]
    pd.testing.assert_frame_equal(again, shipped, check_dtype=False, atol=1e-4)


def test_the_ablation_of_one_concept_reproduces_the_shipped_table(script_and_folder):
    script, folder = script_and_folder
    table = pd.read_csv(ABLATION)
    again = pd.DataFrame(script.ablation_rows(folder, concepts=["circle"], draws=3))
    shipped = table[(table.concept == "circle")].head(4).reset_index(drop=True)
    pd.testing.assert_frame_equal(again, shipped, check_dtype=False, atol=1e-4)
