"""The class-folder source (`data.source: folder`): the user's own images, in a folder or a .zip, into a `FewShotSet`.

Every test reads real image files written here with Pillow (PNG and JPEG, grayscale and RGB, of any
size), real folders and real zips, or the real kanji zip; nothing is mocked.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from pipeline.config import ParamsError, from_dict, load_params
from pipeline.data import folder
from pipeline.data.fewshot import ROLES, DataError, FewShotSet, assign_exemplars, assign_roles
from pipeline.data.images import ImageSpec
from pipeline.data.prepare import DataConfig, prepare_dataset, resolve

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- real image files


def page(stroke: int | tuple[int, int, int], size: tuple[int, int] = (40, 40), mode: str = "L") -> Image.Image:
    """A white page whose left half is one stroke colour (dark): strokes on the left, paper on the right."""
    image = Image.new("RGB", size, "white")
    colour = (stroke, stroke, stroke) if isinstance(stroke, int) else stroke
    ImageDraw.Draw(image).rectangle([0, 0, size[0] // 2 - 1, size[1] - 1], fill=colour)
    if mode == "P":  # an exact palette of the two colours, not the dithered web palette
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    return image.convert(mode)


def write_image(path: Path, stroke: int | tuple[int, int, int], size: tuple[int, int] = (40, 40),
                mode: str = "L") -> Path:
    """An image file whose format follows its suffix (.png, .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = page(stroke, size, mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=95)
    else:
        image.save(path, format="PNG")
    return path


def write_classes(root: Path, classes: dict[str, list[str]], suffix: str = ".png",
                  size: tuple[int, int] = (40, 40), mode: str = "L") -> dict[str, int]:
    """root/<class>/<stem><suffix> for every class and stem; each file gets its own stroke value.

    Returns relative path -> stroke value (0..120: dark on the white page)."""
    strokes = {}
    for c, (name, stems) in enumerate(sorted(classes.items())):
        for s, stem in enumerate(stems):
            rel = f"{name}/{stem}{suffix}"
            strokes[rel] = 10 * c + s
            write_image(root / rel, strokes[rel], size, mode)
    return strokes


def zip_tree(folder_path: Path, dest: Path, prefix: str = "", folder_entries: bool = True) -> Path:
    """Zip every file under `folder_path` as prefix/<relative path>, with folder entries as zip tools write them."""
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(folder_path.rglob("*")):
            rel = prefix + path.relative_to(folder_path).as_posix()
            if path.is_dir():
                if folder_entries:
                    archive.writestr(rel + "/", b"")
            else:
                archive.write(path, rel)
    return dest


def config(path: Path, **kwargs: Any) -> DataConfig:
    return DataConfig(source="folder", path=str(path), **kwargs)


def stroke_of(image: np.ndarray) -> np.ndarray:
    """[C] the value of each channel in the stroke half of a preprocessed image [C, S, S] (one column clear of the
    edge)."""
    s = image.shape[-1]
    region = image[:, :, : s // 2 - 1]
    assert (region == region[:, :1, :1]).all(), "the stroke half is not uniform"
    return region[:, 0, 0]


def paper_of(image: np.ndarray) -> np.ndarray:
    s = image.shape[-1]
    region = image[:, :, s // 2 + 1:]
    assert (region == region[:, :1, :1]).all(), "the paper half is not uniform"
    return region[:, 0, 0]


FLAT = {"cat": ["a", "b", "c"], "dog": ["a", "b", "c", "d"], "eel": ["a", "c"], "fox": ["b", "c", "d"]}
GROUPED = {"greek": {"alpha": ["d01", "d02", "d03"], "beta": ["d01", "d02", "d03"], "gamma": ["d01", "d03"]},
           "latin": {"a": ["d01", "d02", "d03", "d04"], "b": ["d02", "d03"]},
           "runic": {"fehu": ["d01", "d02"], "uruz": ["d01", "d02", "d03"]}}


def write_grouped(root: Path, groups: dict[str, dict[str, list[str]]] = GROUPED, **kwargs: Any) -> dict[str, int]:
    """root/<group>/<class>/<stem>.png; returns '<group>/<class>/<file>' -> stroke value."""
    flat = {f"{g}/{c}": stems for g, classes in groups.items() for c, stems in classes.items()}
    return write_classes(root, flat, **kwargs)


@pytest.fixture
def flat_root(tmp_path: Path) -> Path:
    write_classes(tmp_path / "flat", FLAT)
    return tmp_path / "flat"


@pytest.fixture
def grouped_root(tmp_path: Path) -> Path:
    write_grouped(tmp_path / "grouped")
    return tmp_path / "grouped"


# ---------------------------------------------------------------------------- layouts


def check_images_follow_files(dataset: FewShotSet, strokes: dict[str, int], prefix: str = "") -> None:
    """Every file became the image of its class and its stem, inverted: its stroke value v reads 255 - v."""
    seen = 0
    for i in range(len(dataset.labels)):
        name = str(dataset.class_names[dataset.labels[i]])
        stem = str(dataset.instance_names[dataset.instances[i]])
        assert stroke_of(dataset.images[i]).tolist() == [255 - strokes[f"{prefix}{name}/{stem}.png"]]
        assert paper_of(dataset.images[i]).tolist() == [0]
        seen += 1
    assert seen == len(strokes)


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_flat_layout_each_class_its_own_group(tmp_path: Path, container: str) -> None:
    strokes = write_classes(tmp_path / "flat", FLAT)
    path = tmp_path / "flat" if container == "folder" else zip_tree(tmp_path / "flat", tmp_path / "flat.zip")
    dataset, manifest = folder.load(config(path, roles={"source": 2, "train": 1}))
    assert dataset.class_names.tolist() == ["cat", "dog", "eel", "fox"]
    assert dataset.class_group.tolist() == ["cat", "dog", "eel", "fox"]
    # Instance keys are the file stems, shared across classes.
    assert dataset.instance_names.tolist() == ["a", "b", "c", "d"]
    assert dataset.images.shape == (12, 1, 28, 28) and dataset.images.dtype == np.uint8
    assert dataset.labels.tolist() == [0] * 3 + [1] * 4 + [2] * 2 + [3] * 3
    assert dataset.labels.dtype == dataset.instances.dtype == np.int64
    assert dataset.instance_names[dataset.instances].tolist() == [s for c in sorted(FLAT) for s in FLAT[c]]
    check_images_follow_files(dataset, strokes)
    assert sorted(dataset.class_role.tolist()) == ["novel", "source", "source", "train"]
    assert (manifest["layout"], manifest["classes"], manifest["images"]) == ("flat", 4, 12)
    assert manifest["path"] == str(path) and manifest["subdir"] is None
    assert dataset.inverted is True and dataset.spec == ImageSpec(28, 1, True)


@pytest.mark.parametrize("container", ["folder", "zip", "zip-without-folder-entries"])
def test_grouped_layout_names_classes_group_slash_class(tmp_path: Path, container: str) -> None:
    strokes = write_grouped(tmp_path / "grouped")
    path = tmp_path / "grouped"
    if container != "folder":
        path = zip_tree(path, tmp_path / "grouped.zip", folder_entries=container == "zip")
    dataset, manifest = folder.load(config(path, roles={"source": 1, "train": 1}))
    assert dataset.class_names.tolist() == ["greek/alpha", "greek/beta", "greek/gamma", "latin/a", "latin/b",
                                            "runic/fehu", "runic/uruz"]
    assert dataset.class_group.tolist() == ["greek"] * 3 + ["latin"] * 2 + ["runic"] * 2
    assert dataset.instance_names.tolist() == ["d01", "d02", "d03", "d04"]
    assert dataset.images.shape == (len(strokes), 1, 28, 28)
    check_images_follow_files(dataset, strokes)
    np.testing.assert_array_equal(dataset.group_ids(), [0, 0, 0, 1, 1, 2, 2])
    # A group's classes share its role.
    for g in ("greek", "latin", "runic"):
        assert len(set(dataset.class_role[dataset.class_group == g])) == 1
    assert manifest["layout"] == "grouped"
    assert len(manifest["sha256"]) == 64


def test_folder_and_zip_give_the_same_set(grouped_root: Path, tmp_path: Path) -> None:
    archive = zip_tree(grouped_root, tmp_path / "data.zip")
    a, _ = folder.load(config(grouped_root, roles={"source": 1, "train": 1}))
    b, manifest_b = folder.load(config(archive, roles={"source": 1, "train": 1}))
    for name in ("images", "labels", "instances", "instance_names", "class_names", "class_group", "class_role",
                 "exemplar"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    with archive.open("rb") as fh:
        assert manifest_b["sha256"] == hashlib.file_digest(fh, "sha256").hexdigest()


def test_subdir_inside_a_zip_and_hidden_entries_are_skipped(grouped_root: Path, tmp_path: Path) -> None:
    (grouped_root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (grouped_root / "greek" / "alpha" / "._d01.png").write_bytes(b"AppleDouble")
    archive = zip_tree(grouped_root, tmp_path / "wrapped.zip", prefix="mine/images/")
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("__MACOSX/mine/images/greek/._alpha", b"x")
        z.writestr("mine/README.txt", b"my images")
    dataset, manifest = folder.load(config(archive, subdir="mine/images", roles={"source": 1, "train": 1}))
    assert len(dataset.class_names) == 7 and manifest["subdir"] == "mine/images"
    assert len(dataset.labels) == 19  # no hidden file was read as an image


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_any_size_and_format_to_channels_by_size(tmp_path: Path, channels: int, size: int) -> None:
    """PNG and JPEG, grayscale and RGB, square and not: all become [N, C, S, S]."""
    root = tmp_path / "data"
    write_image(root / "one" / "a.png", 0, (40, 40), "L")
    write_image(root / "one" / "b.jpg", 0, (100, 60), "RGB")
    write_image(root / "two" / "a.png", (200, 0, 0), (64, 64), "RGB")  # a red stroke
    write_image(root / "two" / "b.jpg", 0, (30, 90), "L")
    dataset, _ = folder.load(config(root, image_size=size, channels=channels, roles={"source": 1, "train": 1}))
    assert dataset.images.shape == (4, channels, size, size) and dataset.images.dtype == np.uint8
    assert (dataset.image_size, dataset.channels) == (size, channels)
    png_gray, jpeg_rgb, png_red, jpeg_gray = dataset.images
    assert stroke_of(png_gray).tolist() == [255] * channels and paper_of(png_gray).tolist() == [0] * channels
    for jpeg in (jpeg_rgb, jpeg_gray):  # lossy: near the values, away from the stroke's edge
        assert np.abs(jpeg[:, :, : size // 4].astype(int) - 255).max() <= 8
        assert jpeg[:, :, 3 * size // 4:].max() <= 8
    if channels == 3:
        assert stroke_of(png_red).tolist() == [55, 255, 255]  # RGB order kept, each channel inverted
        assert paper_of(png_red).tolist() == [0, 0, 0]
    else:
        luma = round(200 * 299 / 1000)  # Pillow's L = R * 299/1000 + G * 587/1000 + B * 114/1000
        assert abs(int(stroke_of(png_red)[0]) - (255 - luma)) <= 1


def test_invert_decides_which_is_foreground(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "one" / "a.png", 0)  # black strokes on white
    write_image(root / "one" / "b.png", 100)
    write_image(root / "two" / "a.png", 0)
    write_image(root / "two" / "b.png", 100)
    inverted, _ = folder.load(config(root, invert=True, roles={"source": 1, "train": 1}))
    plain, _ = folder.load(config(root, invert=False, roles={"source": 1, "train": 1}))
    assert [stroke_of(im).item() for im in inverted.images] == [255, 155, 255, 155]
    assert [paper_of(im).item() for im in inverted.images] == [0, 0, 0, 0]
    assert [stroke_of(im).item() for im in plain.images] == [0, 100, 0, 100]
    assert [paper_of(im).item() for im in plain.images] == [255, 255, 255, 255]
    np.testing.assert_array_equal(inverted.images, 255 - plain.images)
    assert inverted.inverted is True and plain.inverted is False
    assert plain.spec == ImageSpec(28, 1, False)


def test_mixed_grayscale_and_rgb_are_converted_not_refused(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_image(root / "one" / "a.png", 40, mode="L")
    write_image(root / "one" / "b.png", 40, mode="RGB")
    write_image(root / "one" / "c.png", 40, mode="P")
    write_image(root / "two" / "a.png", 40, mode="LA")
    write_image(root / "two" / "b.png", 40, mode="RGBA")
    write_image(root / "two" / "c.png", 40, mode="1")  # 1-bit: 40 dithers to black and white, paper stays white
    for channels in (1, 3):
        dataset, _ = folder.load(config(root, channels=channels, roles={"source": 1, "train": 1}))
        assert dataset.images.shape == (6, channels, 28, 28)
        for image in dataset.images[:5]:
            assert stroke_of(image).tolist() == [215] * channels
            assert paper_of(image).tolist() == [0] * channels
        assert paper_of(dataset.images[5]).tolist() == [0] * channels


# ---------------------------------------------------------------------------- roles


def test_seeded_rule_over_groups(tmp_path: Path) -> None:
    groups = {f"g{g}": {f"c{c}": ["x", "y"] for c in range(2)} for g in range(6)}
    write_grouped(tmp_path / "data", groups)
    rule = {"source": 2, "train": 3}
    dataset, manifest = folder.load(config(tmp_path / "data", roles=rule, split_seed=5))
    by_group = {str(g): str(r) for g, r in zip(dataset.class_group, dataset.class_role, strict=True)}
    per_role = {r: sorted(g for g, role in by_group.items() if role == r) for r in ROLES}
    assert {r: len(gs) for r, gs in per_role.items()} == {"source": 2, "calibration": 0, "train": 3, "novel": 1,
                                                          "unused": 0}
    assert by_group == assign_roles([f"g{g}" for g in range(6)], rule, 5)
    assert manifest["split"] == {"roles": rule, "seed": 5, "rest": "novel"}
    again, _ = folder.load(config(tmp_path / "data", roles=rule, split_seed=5))
    np.testing.assert_array_equal(again.class_role, dataset.class_role)
    other, _ = folder.load(config(tmp_path / "data", roles=rule, split_seed=6))
    assert other.class_role.tolist() != dataset.class_role.tolist()
    assert sorted(other.class_role.tolist()) == sorted(dataset.class_role.tolist())  # same counts, other groups


def test_seeded_rule_in_the_flat_layout_splits_classes(tmp_path: Path) -> None:
    write_classes(tmp_path / "data", {f"class{c}": ["x", "y"] for c in range(7)})
    dataset, _ = folder.load(config(tmp_path / "data", roles={"source": 3, "train": 2}))
    assert {r: len(dataset.classes(r)) for r in ROLES} == {"source": 3, "calibration": 0, "train": 2, "novel": 2,
                                                             "unused": 0}
    rest, _ = folder.load(config(tmp_path / "data", roles={"source": 3, "train": None}))
    assert {r: len(rest.classes(r)) for r in ROLES} == {"source": 3, "calibration": 0, "train": 4, "novel": 0,
                                                          "unused": 0}
    held_out, _ = folder.load(config(tmp_path / "data", roles={"source": 3, "calibration": 2, "train": None}))
    assert {r: len(held_out.classes(r)) for r in ROLES} == {"source": 3, "calibration": 2, "train": 2, "novel": 0,
                                                              "unused": 0}


def write_split(path: Path, header: str, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header.split(","))
        writer.writerows(rows)
    return path


def test_split_file_by_class(grouped_root: Path, tmp_path: Path) -> None:
    roles = {"greek/alpha": "source", "greek/beta": "source", "greek/gamma": "train", "latin/a": "train",
             "latin/b": "novel", "runic/fehu": "novel", "runic/uruz": "source"}
    split = write_split(tmp_path / "split.csv", "class,role", list(roles.items()))
    dataset, manifest = prepare_dataset(config(grouped_root, split_file=str(split)))
    assert dict(zip(dataset.class_names.tolist(), dataset.class_role.tolist(), strict=True)) == roles
    assert manifest["split"] == str(split)
    assert manifest["roles"]["train"] == {"groups": ["greek", "latin"], "classes": 2, "images": 6}


def test_split_file_by_group(grouped_root: Path, tmp_path: Path) -> None:
    split = write_split(tmp_path / "split.csv", "group,role",
                        [("greek", "source"), ("latin", "train"), ("runic", "novel")])
    dataset, manifest = prepare_dataset(config(grouped_root, split_file=str(split)))
    assert dataset.class_role.tolist() == ["source"] * 3 + ["train"] * 2 + ["novel"] * 2
    assert {r: v["groups"] for r, v in manifest["roles"].items()} == {"source": ["greek"], "train": ["latin"],
                                                                       "novel": ["runic"]}


def test_split_file_path_is_relative_to_the_project_root(tmp_path: Path) -> None:
    assert resolve("data/split.csv", root=tmp_path) == tmp_path / "data" / "split.csv"
    assert resolve(str(tmp_path / "x.csv")) == tmp_path / "x.csv"
    assert resolve("~/x.zip") == Path.home() / "x.zip"


# ---------------------------------------------------------------------------- exemplars


def test_one_seeded_exemplar_per_train_class(tmp_path: Path) -> None:
    write_classes(tmp_path / "data", {f"class{c}": [f"s{s}" for s in range(6)] for c in range(8)})
    cfg = config(tmp_path / "data", roles={"source": 2, "train": 4}, exemplar_seed=3)
    dataset, manifest = prepare_dataset(cfg)
    train = dataset.classes("train")
    assert len(train) == 4
    np.testing.assert_array_equal(dataset.labels[dataset.exemplar[train]], train)
    others = np.setdiff1d(np.arange(8), train)
    assert (dataset.exemplar[others] == -1).all()
    np.testing.assert_array_equal(dataset.exemplar, assign_exemplars(dataset.labels, dataset.class_role, 3))
    np.testing.assert_array_equal(dataset.exemplar_indices(), dataset.exemplar[train])
    # The manifest names each exemplar by its file stem.
    assert manifest["exemplars"] == {str(dataset.class_names[c]): str(dataset.instance_names[dataset.instances[i]])
                                     for c, i in zip(train, dataset.exemplar[train], strict=True)}
    again, _ = prepare_dataset(cfg)
    np.testing.assert_array_equal(again.exemplar, dataset.exemplar)
    other, _ = prepare_dataset(config(tmp_path / "data", roles={"source": 2, "train": 4}, exemplar_seed=4))
    np.testing.assert_array_equal(other.class_role, dataset.class_role)  # the roles do not move
    assert other.exemplar.tolist() != dataset.exemplar.tolist()


# ---------------------------------------------------------------------------- the real kanji zip


@pytest.fixture(scope="module")
def kanji(kanji_zip: Path) -> tuple[FewShotSet, dict]:
    """The first 3 classes of each of the 24 groups (72 classes x 20 fonts), 64 x 64 source downsized to 32."""
    return prepare_dataset(config(kanji_zip, subdir="kanji", image_size=32, max_classes_per_group=3,
                                  roles={"source": 16, "train": 4, "calibration": 1}))


def test_kanji_zip_fonts_are_the_instances(kanji: tuple[FewShotSet, dict], kanji_zip: Path) -> None:
    dataset, manifest = kanji
    with zipfile.ZipFile(kanji_zip) as archive:
        fonts = [row["font_id"] for row in csv.DictReader(io.StringIO(archive.read("fonts.csv").decode()))]
        first = str(dataset.class_names[0])
        assert first == min("/".join(n.split("/")[1:3]) for n in archive.namelist() if n.startswith("kanji/g00/U+"))
        with Image.open(io.BytesIO(archive.read(f"kanji/{first}/ipaexm.png"))) as original:
            assert original.size == (64, 64) and original.mode == "L"
            expected = 255 - np.asarray(original.resize((32, 32), Image.Resampling.BOX))
    assert len(fonts) == 20
    assert dataset.instance_names.tolist() == sorted(fonts)
    assert dataset.images.shape == (72 * 20, 1, 32, 32)
    assert sorted(set(dataset.class_group.tolist())) == [f"g{g:02d}" for g in range(24)]
    assert all(name.startswith(f"{group}/U+") for name, group in zip(dataset.class_names, dataset.class_group,
                                                                      strict=True))
    for c in range(len(dataset.class_names)):  # each class: every font once
        assert sorted(dataset.instances[dataset.labels == c].tolist()) == list(range(20))
    i = int(np.flatnonzero((dataset.labels == 0) & (dataset.instance_names[dataset.instances] == "ipaexm"))[0])
    np.testing.assert_array_equal(dataset.images[i, 0], expected)
    # Dark glyphs on light paper, inverted: mostly 0, strokes bright.
    assert (dataset.images == 0).mean() > 0.5 and (dataset.images.reshape(len(dataset.images), -1).max(1) > 128).all()
    assert {r: v["classes"] for r, v in manifest["roles"].items()} == {"source": 48, "calibration": 3, "train": 12,
                                                                        "novel": 9}
    assert (manifest["layout"], manifest["source"], manifest["subdir"]) == ("grouped", "folder", "kanji")


def test_kanji_zip_without_subdir_names_the_stray_file(kanji_zip: Path) -> None:
    with pytest.raises(DataError) as err:
        folder.load(config(kanji_zip, max_classes_per_group=1))
    msg = str(err.value)
    assert f"{kanji_zip}:classes.csv" in msg and "a file where a class folder is expected" in msg
    assert "data.subdir" in msg


# ---------------------------------------------------------------------------- bad input


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as err:
        folder.load(config(tmp_path / "empty"))
    assert str(tmp_path / "empty") in str(err.value)
    assert "empty folder; expected class folders (root/<class>/<image> or root/<group>/<class>/<image>)" in \
        str(err.value)
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(DataError, match=r"cat: class folder 'cat' holds no images"):
        folder.load(config(tmp_path / "empty"))


def test_an_empty_zip(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    zipfile.ZipFile(path, "w").close()
    with pytest.raises(DataError) as err:
        folder.load(config(path))
    assert str(err.value).startswith(f"{path}:")


def test_an_empty_zip_says_it_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    zipfile.ZipFile(path, "w").close()
    with pytest.raises(DataError, match="empty folder; expected class folders"):
        folder.load(config(path))


def test_a_class_with_one_image_where_its_role_needs_two(tmp_path: Path) -> None:
    classes = {f"class{c}": ["x", "y"] for c in range(6)} | {"solo": ["x"]}
    write_classes(tmp_path / "data", classes)
    with pytest.raises(DataError) as err:
        prepare_dataset(config(tmp_path / "data", roles={"source": 2, "train": 2}))
    msg = str(err.value)
    assert str(tmp_path / "data") in msg
    assert "solo" in msg and "has 1 image(s)" in msg and "needs at least 2" in msg
    assert "Add images, or drop the class" in msg
    folder.load(config(tmp_path / "data", roles={"source": 2, "train": 2}))  # the loader itself reads it


def test_the_short_class_is_named_as_the_user_wrote_it(tmp_path: Path) -> None:
    write_classes(tmp_path / "data", {f"class{c}": ["x", "y"] for c in range(6)} | {"solo": ["x"]})
    with pytest.raises(DataError, match=r"class 'solo' \("):
        prepare_dataset(config(tmp_path / "data", roles={"source": 2, "train": 2}))


def test_a_role_without_two_classes(tmp_path: Path) -> None:
    write_classes(tmp_path / "data", FLAT)
    with pytest.raises(DataError, match=r"the split gives 1 source class\(es\); a protocol needs at least 2 "
                                        r"\(change data\.roles or data\.split_file\)"):
        prepare_dataset(config(tmp_path / "data", roles={"source": 1, "train": 1}))


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_a_corrupt_image_is_named(grouped_root: Path, tmp_path: Path, container: str) -> None:
    (grouped_root / "latin" / "b" / "d02.png").write_text("this is not a PNG")
    path = grouped_root if container == "folder" else zip_tree(grouped_root, tmp_path / "bad.zip")
    with pytest.raises(DataError) as err:
        folder.load(config(path, roles={"source": 1, "train": 1}))
    msg = str(err.value)
    where = f"{grouped_root}/latin/b/d02.png" if container == "folder" else f"{path}:latin/b/d02.png"
    assert msg.startswith(f"{where}: not a readable image")
    assert "remove or replace it" in msg


def test_a_truncated_image_is_named(flat_root: Path) -> None:
    data = (flat_root / "dog" / "c.png").read_bytes()
    (flat_root / "dog" / "c.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"dog/c\.png: not a readable image"):
        folder.load(config(flat_root, roles={"source": 1, "train": 1}))


def test_a_file_where_a_class_folder_is_expected(flat_root: Path, grouped_root: Path) -> None:
    (flat_root / "notes.txt").write_text("my classes")
    with pytest.raises(DataError) as err:
        folder.load(config(flat_root))
    msg = str(err.value)
    assert f"{flat_root}/notes.txt: a file where a class folder is expected" in msg
    assert "move it out of the data folder" in msg
    write_image(grouped_root / "latin" / "loose.png", 0)
    with pytest.raises(DataError, match=r"latin/loose\.png: a file where a class folder is expected"):
        folder.load(config(grouped_root))


def test_a_folder_inside_a_class_folder(flat_root: Path) -> None:
    write_image(flat_root / "cat" / "more" / "x.png", 0)
    with pytest.raises(DataError, match=r"cat/more: a folder inside class folder 'cat'"):
        folder.load(config(flat_root))


def test_split_file_naming_an_unknown_class(grouped_root: Path, tmp_path: Path) -> None:
    split = write_split(tmp_path / "split.csv", "class,role", [("greek/alpha", "source"), ("greek/omega", "train")])
    with pytest.raises(DataError) as err:
        folder.load(config(grouped_root, split_file=str(split)))
    msg = str(err.value)
    assert msg.startswith(f"{split}:3: unknown class 'greek/omega'")
    assert "e.g. greek/alpha" in msg


def test_split_file_naming_an_unknown_group(grouped_root: Path, tmp_path: Path) -> None:
    split = write_split(tmp_path / "split.csv", "group,role", [("greek", "source"), ("coptic", "train")])
    with pytest.raises(DataError, match=r"split\.csv:3: unknown group 'coptic'"):
        folder.load(config(grouped_root, split_file=str(split)))


def test_split_file_naming_an_unknown_role(grouped_root: Path, tmp_path: Path) -> None:
    split = write_split(tmp_path / "split.csv", "group,role", [("greek", "source"), ("latin", "test")])
    with pytest.raises(DataError) as err:
        folder.load(config(grouped_root, split_file=str(split)))
    assert str(err.value) == f"{split}:3: unknown role 'test'; roles are source, calibration, train, novel, unused"


def test_split_file_leaving_a_class_without_a_role(grouped_root: Path, tmp_path: Path) -> None:
    split = write_split(tmp_path / "split.csv", "group,role", [("greek", "source"), ("latin", "train")])
    with pytest.raises(DataError) as err:
        folder.load(config(grouped_root, split_file=str(split)))
    msg = str(err.value)
    assert msg.startswith(f"{split}: 2 classes have no role (e.g. 'runic/fehu')")
    assert "give every group a role" in msg
    by_class = write_split(tmp_path / "by_class.csv", "class,role", [("greek/alpha", "source")])
    with pytest.raises(DataError, match=r"6 classes have no role .*give every class a role"):
        folder.load(config(grouped_root, split_file=str(by_class)))


def test_split_file_with_a_wrong_header_or_missing(grouped_root: Path, tmp_path: Path) -> None:
    split = write_split(tmp_path / "split.csv", "name,role", [("greek", "source")])
    with pytest.raises(DataError, match=r"split\.csv: the first line must be `class,role` or `group,role`"):
        folder.load(config(grouped_root, split_file=str(split)))
    with pytest.raises(DataError, match=r"data\.split_file: .*absent\.csv not found"):
        folder.load(config(grouped_root, split_file=str(tmp_path / "absent.csv")))


def test_data_path_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        folder.load(config(tmp_path / "nowhere.zip"))
    msg = str(err.value)
    assert msg.startswith(f"data.path: {tmp_path / 'nowhere.zip'} not found")
    assert "point it at a folder or .zip of class folders" in msg


def test_data_path_neither_a_folder_nor_a_zip(tmp_path: Path) -> None:
    (tmp_path / "data.zip").write_text("not a zip")
    with pytest.raises(DataError, match=r"data\.path: .*data\.zip is neither a folder nor a readable \.zip"):
        folder.load(config(tmp_path / "data.zip"))


def test_subdir_that_does_not_exist(grouped_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"grouped/kanji: no such folder"):
        folder.load(config(grouped_root, subdir="kanji"))
    archive = zip_tree(grouped_root, tmp_path / "g.zip")
    with pytest.raises(DataError, match=r"g\.zip:kanji: no such folder in the zip"):
        folder.load(config(archive, subdir="kanji"))


def test_roles_asking_for_more_groups_than_exist(grouped_root: Path) -> None:
    with pytest.raises(DataError) as err:
        folder.load(config(grouped_root, roles={"source": 2, "train": 2}))
    msg = str(err.value)
    assert "data.roles asks for 4 groups (source: 2, train: 2), but there are only 3" in msg
    assert "lower the counts" in msg


@pytest.mark.parametrize(("key", "value"), [("image_size", 8), ("image_size", 30), ("image_size", 12),
                                            ("channels", 2), ("channels", 4)])
def test_bad_image_params_are_refused_at_load(key: str, value: int) -> None:
    with pytest.raises(ParamsError, match=rf"`data\.{key}` = {value} is not allowed"):
        from_dict(DataConfig, {"source": "folder", "path": "images.zip", key: value}, "data")


def test_folder_source_without_a_path_is_refused_at_load() -> None:
    with pytest.raises(ParamsError, match=r"`data\.path` = None"):
        from_dict(DataConfig, {"source": "folder"}, "data")


# ---------------------------------------------------------------------------- known library bugs


def test_zip_members_with_a_dot_slash_prefix(flat_root: Path, tmp_path: Path) -> None:
    archive = tmp_path / "dot.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(flat_root.rglob("*.png")):
            z.writestr("./" + path.relative_to(flat_root).as_posix(), path.read_bytes())
    dataset, _ = folder.load(config(archive, roles={"source": 1, "train": 1}))
    assert dataset.class_names.tolist() == sorted(FLAT)


def test_split_file_with_a_byte_order_mark(grouped_root: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.csv"
    split.write_text("group,role\ngreek,source\nlatin,train\nrunic,novel\n", encoding="utf-8-sig")
    dataset, _ = folder.load(config(grouped_root, split_file=str(split)))
    assert dataset.class_role.tolist() == ["source"] * 3 + ["train"] * 2 + ["novel"] * 2


def test_sixteen_bit_grayscale_png_keeps_its_strokes(tmp_path: Path) -> None:
    pixels = np.full((40, 40), 60000, np.uint16)  # paper at 92 %
    pixels[:, :20] = 10000  # strokes at 15 %
    for c in ("one", "two"):
        for stem in ("a", "b"):
            (tmp_path / "data" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / "data" / c / f"{stem}.png")
    dataset, _ = folder.load(config(tmp_path / "data", roles={"source": 1, "train": 1}))
    assert abs(int(stroke_of(dataset.images[0])[0]) - (255 - 10000 * 255 // 65535)) <= 2
    assert abs(int(paper_of(dataset.images[0])[0]) - (255 - 60000 * 255 // 65535)) <= 2


# ---------------------------------------------------------------------------- the saved set


def test_save_is_byte_deterministic_and_round_trips(tmp_path: Path) -> None:
    write_classes(tmp_path / "data", {f"class{c}": [f"s{s}" for s in range(3)] for c in range(6)}, mode="RGB")
    cfg = config(tmp_path / "data", channels=3, invert=False, image_size=16, roles={"source": 2, "train": 2})
    dataset, _ = prepare_dataset(cfg)
    dataset.save(tmp_path / "a.npz")
    dataset.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # A rerun with the same inputs gives the same file, so DVC reruns nothing downstream.
    prepare_dataset(cfg)[0].save(tmp_path / "c.npz")
    assert (tmp_path / "c.npz").read_bytes() == (tmp_path / "a.npz").read_bytes()
    loaded = FewShotSet.load(tmp_path / "a.npz")
    for name in ("images", "labels", "instances", "instance_names", "class_names", "class_group", "class_role",
                 "exemplar"):
        original, back = getattr(dataset, name), getattr(loaded, name)
        assert back.dtype == original.dtype and back.shape == original.shape, name
        np.testing.assert_array_equal(back, original, err_msg=name)
    assert loaded.inverted is False
    assert loaded.spec == ImageSpec(16, 3, False) == dataset.spec
    loaded.save(tmp_path / "d.npz")
    assert (tmp_path / "d.npz").read_bytes() == (tmp_path / "a.npz").read_bytes()


# ---------------------------------------------------------------------------- the prepare stage


def run_prepare(params: Path, out: Path, none: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    return subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(params), "--out", str(out),
                           "--no-synthetic", str(none)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def snapshot(folder_path: Path) -> dict[str, bytes]:
    return {p.relative_to(folder_path).as_posix(): p.read_bytes() for p in sorted(folder_path.rglob("*"))
            if p.is_file()}


def test_prepare_stage_reads_a_zip_and_keeps_its_output_on_bad_input(grouped_root: Path, tmp_path: Path) -> None:
    archive = zip_tree(grouped_root, tmp_path / "images.zip")
    data = {**load_params(ROOT / "params.yaml")["data"], "source": "folder", "path": str(archive),
            "roles": {"source": 1, "train": 1}, "image_size": 16}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data}))
    out, none = tmp_path / "prepared", tmp_path / "none"
    done = run_prepare(params, out, none)
    assert done.returncode == 0, done.stderr
    assert "prepared folder (1 x 16 x 16)" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["source"], manifest["layout"], manifest["path"]) == ("folder", "grouped", str(archive))
    assert (manifest["classes"], manifest["images"], manifest["image_size"], manifest["channels"]) == (7, 19, 16, 1)
    assert sum(v["classes"] for v in manifest["roles"].values()) == 7
    dataset = FewShotSet.load(out / "dataset.npz")
    assert dataset.images.shape == (19, 1, 16, 16)
    assert dataset.class_names.tolist()[0] == "greek/alpha"
    assert sorted(p.name for p in none.iterdir()) == ["manifest.json", "synthetic.npz"]

    before = snapshot(out), snapshot(none), sorted(p.name for p in tmp_path.iterdir())
    (grouped_root / "runic" / "fehu" / "d02.png").write_text("not an image")
    bad = zip_tree(grouped_root, tmp_path / "bad.zip")
    params.write_text(yaml.safe_dump({"data": data | {"path": str(bad)}}))
    before = before[0], before[1], sorted([*before[2], "bad.zip"])
    failed = run_prepare(params, out, none)
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert f"{bad}:runic/fehu/d02.png: not a readable image" in last
    assert (snapshot(out), snapshot(none), sorted(p.name for p in tmp_path.iterdir())) == before
