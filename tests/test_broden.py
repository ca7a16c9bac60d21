"""The Broden format: writer -> reader round trip, the synthetic dataset, clear errors."""
import csv
import hashlib
import shutil

import numpy as np
import pytest
import torch

from xailab.data import broden
from xailab.data.broden import BrodenFormatError


def _tiny(folder):
    """Three 8x8 images, 4x4 segmentations: two pixel PNGs in one cell, whole-image
    labels, a label number above 255 (uses the green channel), an unlabeled cell."""
    rng = np.random.default_rng(0)
    labels = [(f"thing{k}", "object") for k in range(300)] + [("stripes", "texture"), ("park", "scene")]
    a = rng.integers(0, 301, (4, 4))
    a[0, 0] = 257
    b = rng.integers(0, 3, (4, 4))
    tex = np.full((4, 4), 301)
    tex[:2] = 0
    records = [
        {"image": (np.mgrid[:8, :8, :3].sum(0) * 12).astype(np.uint8), "object": [a, b], "texture": [tex],
         "scene": [302]},
        {"image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "object": [b], "scene": [302, 301],
         "split": "val"},
        {"image": np.full((8, 8, 3), 128, dtype=np.uint8), "scene": []},
    ]
    broden.write(folder, ["object", "texture", "scene"], labels, records)
    return labels, records


def test_round_trip(tmp_path):
    labels, records = _tiny(tmp_path)
    ds = broden.open(tmp_path)
    assert len(ds) == 3 and ds.categories == ["object", "texture", "scene"]
    assert ds.n_labels == 302 and ds.label_names[1:] == [n for n, _ in labels]
    assert [r["split"] for r in ds.rows] == ["train", "val", "train"]
    assert (ds.rows[0]["ih"], ds.rows[0]["iw"], ds.rows[0]["sh"], ds.rows[0]["sw"]) == (8, 8, 4, 4)
    s0, s1, s2 = (ds.segmentation(i) for i in range(3))
    assert [torch.equal(got, torch.from_numpy(want)) for got, want in zip(s0["object"], records[0]["object"])] \
        == [True, True]
    assert torch.equal(s0["texture"][0], torch.from_numpy(records[0]["texture"][0]))
    assert s0["scene"] == [302] and s1["scene"] == [302, 301] and s1["texture"] == [] and s2["object"] == []
    # JPEG is lossy, but close
    err = (ds.image(0) * 255 - torch.from_numpy(records[0]["image"]).permute(2, 0, 1).float()).abs().mean()
    assert err < 3 and torch.allclose(ds.image(2), torch.full((3, 8, 8), 128 / 255), atol=2 / 255)
    # label 301 ("stripes") appears as a whole-image label under scene (coverage 1) and as
    # texture pixels (coverage 0.5): its primary category is the larger coverage, scene
    assert ds.category_of(301) == "scene" and ds.category_of(302) == "scene" and ds.category_of(257) == "object"
    # the PNG really stores R + 256 G
    from PIL import Image
    png = np.asarray(Image.open(tmp_path / "images" / ds.rows[0]["object"][0]))
    assert png[0, 0].tolist() == [1, 1, 0]
    # the writer's tables follow the format
    with open(tmp_path / "category.csv") as f:
        cats = list(csv.DictReader(f))
    assert [c["name"] for c in cats] == ["object", "texture", "scene"]
    assert [int(c["frequency"]) for c in cats] == [2, 1, 2] and cats[0]["count"] == "300"
    with open(tmp_path / "c_texture.csv") as f:
        assert list(csv.DictReader(f)) == [{"code": "1", "number": "301", "name": "stripes",
                                            "frequency": "1", "coverage": "0.500000"}]
    with open(tmp_path / "label.csv") as f:
        row = list(csv.DictReader(f))[300]
    assert row["name"] == "stripes" and row["category"] == "texture(1);scene(1)"
    # a batch pads the PNGs and whole-image labels of its images
    batch = next(ds.batches(8))
    assert batch.images.shape == (3, 3, 8, 8) and batch.pixels.shape == (3, 3, 4, 4)
    assert batch.whole.tolist() == [[302, 0], [302, 301], [0, 0]]
    assert batch.labelled.tolist() == [[True, True, True], [True, False, True], [False, False, False]]


def test_reading_and_writing_again_gives_the_same_folder(tmp_path):
    _tiny(tmp_path / "a")
    ds = broden.open(tmp_path / "a")
    records = [dict({c: [x if isinstance(x, int) else x.numpy() for x in v]
                     for c, v in ds.segmentation(i).items()},
                    image=(ds.image(i).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8),
                    split=ds.rows[i]["split"]) for i in range(len(ds))]
    broden.write(tmp_path / "b", ds.categories, [(ds.label_names[n], ds.category_of(n) if n != 301 else "texture")
                                                for n in range(1, ds.n_labels + 1)], records)
    for name in ("index.csv", "category.csv", "label.csv", "c_object.csv", "c_texture.csv", "c_scene.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name


def test_synthetic_dataset_is_deterministic_and_complete(tmp_path):
    broden.make_synthetic(tmp_path / "a", 70, seed=3, size=32)
    broden.make_synthetic(tmp_path / "b", 5, seed=3, size=32)
    broden.make_synthetic(tmp_path / "c", 5, seed=4, size=32)
    a, b = broden.open(tmp_path / "a"), broden.open(tmp_path / "b")
    assert a.categories == ["color", "object", "part", "scene", "texture", "material"]
    assert a.label_names[1:12] == list(broden.COLORS) and len(broden.COLORS) == 11
    assert a.rows[0]["ih"] == 32 and a.rows[0]["sh"] == 16
    for i in range(5):   # image i does not depend on n
        assert torch.equal(a.image(i), b.image(i))
        sa, sb = a.segmentation(i), b.segmentation(i)
        assert all(len(sa[c]) == len(sb[c]) and all(torch.equal(torch.as_tensor(x), torch.as_tensor(y))
                                                    for x, y in zip(sa[c], sb[c])) for c in a.categories)
    assert (tmp_path / "b" / "index.csv").read_text() != (tmp_path / "c" / "index.csv").read_text() or \
        not torch.equal(b.image(0), broden.open(tmp_path / "c").image(0))
    # every category is used, each label in its own category, colours label every pixel
    seen = {c: set() for c in a.categories}
    for i in range(len(a)):
        s = a.segmentation(i)
        assert len(s["color"]) == 1 and bool((s["color"][0] > 0).all())
        assert len(s["scene"]) == 1 and isinstance(s["scene"][0], int)
        for c, items in s.items():
            for x in items:
                seen[c] |= {x} if isinstance(x, int) else set(torch.unique(x).tolist()) - {0}
    for c, nums in seen.items():
        assert nums and {a.category_of(n) for n in nums} == {c}
    assert len(seen["color"]) == 11 and len(seen["object"]) == 6 and len(seen["texture"]) == 5
    assert len(seen["material"]) == 2
    # the object map agrees with the part map: parts lie inside objects
    s = a.segmentation(0)
    if s["part"]:
        assert bool(((s["part"][0] > 0) <= (s["object"][0] > 0)).all())


def test_colours_textures_and_materials_do_not_follow_the_shape(tmp_path):
    """Only the object label (and whether it has tips) depends on the shape: the object's
    colour, texture and material are drawn independently of it (a chi-square test of
    independence per category on 640 images does not reject), materials cover only
    regions without a texture, and the labels before them kept their numbers."""
    from scipy.stats import chi2_contingency

    ds = broden.open(broden.make_synthetic(tmp_path / "s", 640, seed=5, size=32))
    assert [name for name, _ in broden.synthetic_labels()][-2:] == ["wood", "noise"]
    assert ds.label_names[31:34] == ["blotchy", "wood", "noise"]
    first_object = ds.label_names.index("circle")
    counts = {c: np.zeros((6, ds.n_labels + 1)) for c in ("color", "texture", "material")}
    for i in range(len(ds)):
        s = ds.segmentation(i)
        inside = s["object"][0] > 0
        shape = int(s["object"][0][inside][0]) - first_object
        for c in counts:
            values = s[c][0][inside] if s[c] else torch.zeros(1, dtype=torch.long)
            counts[c][shape, int(values.mode().values)] += 1       # the object's main label
        if s["material"] and s["texture"]:
            assert not bool(((s["material"][0] > 0) & (s["texture"][0] > 0)).any())
    for c, table in counts.items():
        table = table[:, table.sum(0) > 0]
        assert table.shape[1] >= 3, c
        assert chi2_contingency(table).pvalue > 0.01, c


def _break(tmp_path, name):
    src = tmp_path / "good"
    if not src.exists():
        broden.make_synthetic(src, 4, size=32)
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_index(folder, row, column, value):
    with open(folder / "index.csv") as f:
        rows = list(csv.reader(f))
    rows[row][rows[0].index(column)] = value
    with open(folder / "index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_malformed_folders_give_clear_errors(tmp_path):
    with pytest.raises(BrodenFormatError, match="not a folder"):
        broden.open(tmp_path / "nowhere")

    f = _break(tmp_path, "no_label")
    (f / "label.csv").unlink()
    with pytest.raises(BrodenFormatError, match=r"label\.csv is missing"):
        broden.open(f)

    f = _break(tmp_path, "no_c")
    (f / "c_part.csv").unlink()
    with pytest.raises(BrodenFormatError, match=r"c_part\.csv is missing"):
        broden.open(f)

    f = _break(tmp_path, "bad_int")
    _edit_index(f, 2, "ih", "abc")
    with pytest.raises(BrodenFormatError, match=r"index\.csv, row 3: column 'ih' must be an integer"):
        broden.open(f)

    f = _break(tmp_path, "bad_whole")
    _edit_index(f, 1, "scene", "999")
    with pytest.raises(BrodenFormatError, match=r"index\.csv, row 2 .*whole-image label 999"):
        broden.open(f)

    f = _break(tmp_path, "no_image")
    ds = broden.open(f)
    (f / "images" / ds.rows[1]["image"]).unlink()
    with pytest.raises(BrodenFormatError, match=r"row 3 \(image 'synthetic_000001.jpg'\): image file .* is missing"):
        ds.image(1)
    with pytest.raises(BrodenFormatError, match="synthetic_000001.jpg"):
        list(ds.batches(4))

    from PIL import Image
    f = _break(tmp_path, "bad_png_size")
    ds = broden.open(f)
    png = f / "images" / ds.rows[2]["object"][0]
    Image.new("RGB", (5, 7)).save(png)
    with pytest.raises(BrodenFormatError, match=r"row 4 .*_object\.png is 7x5, index\.csv says sh x sw = 16x16"):
        ds.segmentation(2)

    f = _break(tmp_path, "bad_png_label")
    ds = broden.open(f)
    png = f / "images" / ds.rows[0]["color"][0]
    arr = np.asarray(Image.open(png)).copy()
    arr[0, 0] = (40, 1, 0)     # label 296, not defined
    Image.fromarray(arr).save(png)
    with pytest.raises(BrodenFormatError, match=r"row 2 .*_color\.png holds label number\(s\) \[296\]"):
        ds.segmentation(0)
    with pytest.raises(BrodenFormatError, match=r"row 2 .*_color\.png holds label number\(s\) \[296\]"):
        next(ds.batches(4))                              # the batch reader names the same file

    f = _break(tmp_path, "bad_image_size")
    _edit_index(f, 1, "iw", "31")
    with pytest.raises(BrodenFormatError, match=r"row 2 .*is 32x32, index\.csv says ih x iw = 32x31"):
        broden.open(f).image(0)

    f = _break(tmp_path, "bad_c_number")
    with open(f / "c_part.csv", "a") as fh:
        fh.write("4,77,ghost,1,0.1\n")
    with pytest.raises(BrodenFormatError, match=r"c_part\.csv, row 5: label number 77 is not in label\.csv"):
        broden.open(f)


def test_the_writer_refuses_bad_records(tmp_path):
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    labels = [("x", "object")]
    with pytest.raises(ValueError, match=r"keys \['objects'\]"):
        broden.write(tmp_path / "a", ["object"], labels, [{"image": img, "objects": [1]}])
    with pytest.raises(ValueError, match="whole-image label 2 out of 1..1"):
        broden.write(tmp_path / "b", ["object"], labels, [{"image": img, "object": [2]}])
    with pytest.raises(ValueError, match="label number 3 out of 0..1"):
        broden.write(tmp_path / "c", ["object"], labels, [{"image": img, "object": [np.full((4, 4), 3)]}])
    with pytest.raises(ValueError, match="not in"):
        broden.write(tmp_path / "d", ["object"], [("x", "scene")], [])
    with pytest.raises(ValueError, match="uint8"):
        broden.write(tmp_path / "e", ["object"], labels, [{"image": img.astype(float)}])


@pytest.mark.parametrize("column", ["image", "object"])
def test_files_outside_the_dataset_folder_are_refused(tmp_path, column):
    folder = tmp_path / "broden"
    _tiny(folder)
    secret = tmp_path / "secret.png"
    shutil.copy(next((folder / "images").glob("*.png")), secret)    # a readable file outside
    index = folder / "index.csv"
    rows = list(csv.DictReader(index.open()))
    rows[0][column] = "../../secret.png"
    with index.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = broden.open(folder)
    with pytest.raises(BrodenFormatError, match="outside the dataset folder"):
        ds.image(0) if column == "image" else ds.segmentation(0)
    ds.image(1)                                  # the other rows still read


def test_a_link_in_the_images_folder_that_leads_out_is_refused(tmp_path):
    folder = tmp_path / "broden"
    _tiny(folder)
    ds = broden.open(folder)
    name = ds.rows[0]["object"][0]
    secret = tmp_path / "secret.png"
    shutil.move(folder / "images" / name, secret)
    (folder / "images" / name).symlink_to(secret)     # a plain file name, but a link out
    with pytest.raises(BrodenFormatError, match="outside the dataset folder"):
        ds.segmentation(0)
    ds.segmentation(1)


# sha256 of the CSV files the writer wrote before it moved to pandas (CRLF line ends,
# as Python's csv module writes them); the tables must stay byte for byte the same
TINY_CSV = {
    "c_object.csv": "04d7bb99204757b2bbebc6612d0676f7405b6432b8e851426c12d3501cce1871",
    "c_scene.csv": "5333fc0f61bc53e564961a4cb13c23906c936275852361edbb1240fd46a0f1ec",
    "c_texture.csv": "46d243f3bd3281da979bf21a615c33af05b741b50c44d90b328ab01d31145414",
    "category.csv": "9fe256ed2ca029fbeaa55e0c11a787c035aaf12d54cd84fff78dccc17f2b7a77",
    "index.csv": "5e9e194503785c57b50b1bcdb8b86b1ee0653a66d4ee37a547b22ce315d6e672",
    "label.csv": "b4a90f13086bfe555b92e1bb4e703efc06647b78d513671f35a4b90a3cb86706"}
SYNTHETIC_CSV = {   # make_synthetic(folder, 70, seed=3, size=32)
    "c_color.csv": "479a749cd1e791a3edd235eec7162489dcb75d1adaf8fedcb2d7f82c67d196b1",
    "c_material.csv": "9a77bdb461c1bb854aea643aecbde8aec1dbc577f56ca33fff451a2c7056d9a6",
    "c_object.csv": "33288caee939711e98d61cd26a34ffcc73a3dddbe060c7c5d755664a7110be78",
    "c_part.csv": "4a71aa52cde5085add61bedeaddfdecd88e3dc1d4560710c371e3427934de814",
    "c_scene.csv": "7ca606fb61859890d7a892f4573bac1b98946236e9e46ddcdb146e4bdad66cc2",
    "c_texture.csv": "9bad0eb9808b65b1a4aaaa62034e161508d7a15b729028c55ec1c4b84c8f789d",
    "category.csv": "c7fa267b2d8e10d353aac6622407bd4b8e18104c68e09f4f9422b01d570e6cb5",
    "index.csv": "3fd3462890f626072353daf2f86ab9b3a87d679d670f262a1768f6661777e160",
    "label.csv": "6f45c8dc6652a5a6ca5640a3ca8f2d57eee2fc3311126116eb37acc2eeeb74de"}


def _csv_hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.csv"))}


def test_the_written_tables_are_byte_for_byte_the_recorded_ones(tmp_path):
    _tiny(tmp_path / "tiny")
    assert _csv_hashes(tmp_path / "tiny") == TINY_CSV
    broden.make_synthetic(tmp_path / "synthetic", 70, seed=3, size=32)
    assert _csv_hashes(tmp_path / "synthetic") == SYNTHETIC_CSV
    assert (tmp_path / "tiny" / "index.csv").read_bytes().count(b"\r\n") == 4


def test_batches_never_mix_sizes_and_follow_the_batch_plan(tmp_path):
    rng = np.random.default_rng(1)
    sizes = [8] * 3 + [12] * 2 + [8] * 4
    records = [{"image": rng.integers(0, 256, (s, s, 3), dtype=np.uint8), "object": [np.ones((s // 2, s // 2), int)]}
               for s in sizes]
    broden.write(tmp_path, ["object"], [("thing", "object")], records)
    ds = broden.open(tmp_path)
    assert ds.batch_plan(2) == [[0, 1], [2], [3, 4], [5, 6], [7, 8]]
    assert ds.batch_plan(4, indices=[0, 3, 1, 2]) == [[0], [3], [1, 2]]
    for batch, group in zip(ds.batches(2), ds.batch_plan(2)):
        assert batch.index == group and batch.images.shape[-1] == sizes[group[0]]
    with pytest.raises(ValueError, match="batch_size"):
        ds.batch_plan(0)


def test_public_names_and_the_builtin_open():
    from xailab.data import synthetic_broden
    from xailab.data.broden import open as open_folder

    assert broden.open is broden.read is open_folder
    assert "open" not in vars(broden)            # the module's own code sees Python's open
    for name in ("make_synthetic", "COLORS", "PARTS", "TEXTURES", "SCENES", "CATEGORIES", "synthetic_labels"):
        assert getattr(broden, name) is getattr(synthetic_broden, name)
    with pytest.raises(AttributeError):
        broden.no_such_name
