"""Omniglot: preprocessing, finding or downloading the zips, listing and decoding them, and the prepared split."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import itertools
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from pipeline.config import load_params, section
from pipeline.data.fewshot import ROLES, DataError, FewShotSet, role_summary
from pipeline.data.images import ImageSpec, preprocess_image
from pipeline.data.omniglot import (
    DRAWERS,
    SPLITS,
    decode_members,
    list_zip,
    locate_zips,
)
from pipeline.data.prepare import DataConfig, DownloadConfig, prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_MD5 = {"images_background.zip": "68d2efa1b9178cc56df9314c21c6e718",
                "images_evaluation.zip": "6b91aef0f799c5bb55b94e3f2daec811"}
ZIP_NAMES = [f"{s}.zip" for s in SPLITS]
SPEC = ImageSpec(28)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def drawing(mode: str = "1", size: tuple[int, int] = (105, 105)) -> Image.Image:
    """White page with a black bar over the left half: strokes on the left, background on the right."""
    image = Image.new(mode, size, "white")
    ImageDraw.Draw(image).rectangle([0, 0, size[0] // 2 - 1, size[1] - 1], fill="black")
    return image


# ---------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(105, 105), (40, 64), (300, 200)])
def test_preprocess_image_makes_strokes_high_and_background_zero(mode: str, size: tuple[int, int]) -> None:
    out = preprocess_image(drawing(mode, size), SPEC)
    assert out.dtype == np.uint8 and out.shape == (1, 28, 28)
    assert (out[:, :, :13] == 255).all()  # strokes (the black left half)
    assert (out[:, :, 15:] == 0).all()  # white background


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "RGBA"])
def test_preprocess_image_to_three_channels_and_without_inverting(mode: str) -> None:
    rgb = preprocess_image(drawing(mode), ImageSpec(32, channels=3))
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 32, 32)
    assert (rgb[:, :, :15] == 255).all() and (rgb[:, :, 17:] == 0).all()
    plain = preprocess_image(drawing(mode), ImageSpec(32, channels=1, invert=False))
    assert plain.shape == (1, 32, 32)
    assert (plain[:, :, :15] == 0).all() and (plain[:, :, 17:] == 255).all()  # as drawn: black strokes on white


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_preprocess_image_reads_a_transparent_page_as_paper(mode: str) -> None:
    """Strokes drawn on a transparent page, whose hidden colour is black: the page must not become ink."""
    image = Image.new(mode, (60, 60), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    ImageDraw.Draw(image).rectangle([0, 0, 29, 59], fill=(0, 0, 0, 255) if mode == "RGBA" else (0, 255))
    out = preprocess_image(image, SPEC)
    assert (out[:, :, :13] == 255).all() and (out[:, :, 15:] == 0).all()


def test_preprocess_image_keeps_thin_strokes_as_grey() -> None:
    image = Image.new("1", (105, 105), "white")
    ImageDraw.Draw(image).line([(52, 0), (52, 104)], fill="black", width=1)
    out = preprocess_image(image, SPEC)
    assert out.max() > 0, "a 1-pixel stroke vanished when shrinking 105 -> 28"
    assert out.max() < 255  # averaged over the 3.75 pixels each output pixel covers
    assert (out[:, :, :10] == 0).all()


def test_preprocess_image_of_a_real_drawing(omniglot_zips: dict[str, Path]) -> None:
    with zipfile.ZipFile(omniglot_zips["images_background"]) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".png"))
        with Image.open(io.BytesIO(archive.read(name))) as image:
            assert image.mode == "1" and image.size == (105, 105)
            out = preprocess_image(image, SPEC)
    assert out.shape == (1, 28, 28)
    # Omniglot is mostly white page: background 0 dominates, and some stroke pixels are bright.
    assert (out == 0).mean() > 0.5
    assert out.max() > 128


# ---------------------------------------------------------------------------- locating the zips


def test_locate_zips_omniglot_dir_not_a_folder(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    with pytest.raises(DataError, match=r"OMNIGLOT_DIR=.*file\.txt is not a folder"):
        locate_zips(DataConfig(), env={"OMNIGLOT_DIR": str(not_a_folder)})
    with pytest.raises(DataError, match="is not a folder"):
        locate_zips(DataConfig(), env={"OMNIGLOT_DIR": str(tmp_path / "absent")})


def test_locate_zips_folder_missing_a_zip_names_it(tmp_path: Path, omniglot_dir: Path) -> None:
    (tmp_path / "images_background.zip").symlink_to(omniglot_dir / "images_background.zip")
    with pytest.raises(DataError) as err:
        locate_zips(DataConfig(), env={"OMNIGLOT_DIR": str(tmp_path)})
    msg = str(err.value)
    assert "has no images_evaluation.zip" in msg
    assert "has no images_background.zip" not in msg


def test_locate_zips_from_omniglot_dir(omniglot_dir: Path) -> None:
    zips = locate_zips(DataConfig(local_dir="/nonexistent"), env={"OMNIGLOT_DIR": str(omniglot_dir)})
    assert zips == {s: omniglot_dir / f"{s}.zip" for s in SPLITS}


def test_locate_zips_from_local_dir_when_omniglot_dir_unset(tmp_path: Path, omniglot_dir: Path) -> None:
    for name in ZIP_NAMES:
        (tmp_path / name).symlink_to(omniglot_dir / name)
    assert locate_zips(DataConfig(local_dir=str(tmp_path)), env={}) == {s: tmp_path / f"{s}.zip" for s in SPLITS}


def test_locate_zips_without_zips_or_download_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path and OMNIGLOT_DIR are unset .*set one of them or configure "
                                        r"data\.download"):
        locate_zips(DataConfig(local_dir=str(tmp_path)), env={})


def test_locate_zips_from_data_path_before_omniglot_dir(tmp_path: Path, omniglot_dir: Path) -> None:
    zips = locate_zips(DataConfig(path=str(omniglot_dir)), env={"OMNIGLOT_DIR": str(tmp_path)})
    assert zips == {s: omniglot_dir / f"{s}.zip" for s in SPLITS}
    (tmp_path / "images_background.zip").symlink_to(omniglot_dir / "images_background.zip")
    with pytest.raises(DataError, match=r"data\.path=.* has no images_evaluation\.zip"):
        locate_zips(DataConfig(path=str(tmp_path)), env={"OMNIGLOT_DIR": str(omniglot_dir)})


# ---------------------------------------------------------------------------- downloading


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def omniglot_server(omniglot_dir: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving the shared Omniglot folder; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                   directory=str(omniglot_dir)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def shared_md5(omniglot_dir: Path) -> dict[str, str]:
    return {name: md5_of(omniglot_dir / name) for name in ZIP_NAMES}


def test_download_fetches_both_zips_byte_for_byte(tmp_path: Path, omniglot_dir: Path, omniglot_server: str,
                                                  shared_md5: dict[str, str]) -> None:
    local = tmp_path / "raw" / "omniglot"
    cfg = DataConfig(local_dir=str(local), download=DownloadConfig(base_url=omniglot_server + "/", md5=shared_md5))
    zips = locate_zips(cfg, env={})
    assert zips == {s: local / f"{s}.zip" for s in SPLITS}
    for name in ZIP_NAMES:
        assert (local / name).read_bytes() == (omniglot_dir / name).read_bytes()
    assert sorted(p.name for p in local.iterdir()) == ZIP_NAMES  # no .part left over
    # A second call finds them and downloads nothing, even with the server's URL gone.
    offline = DataConfig(local_dir=str(local), download=DownloadConfig(base_url="http://127.0.0.1:9/", md5={}))
    assert locate_zips(offline, env={}) == zips


def test_download_with_wrong_md5_leaves_nothing(tmp_path: Path, omniglot_server: str,
                                                shared_md5: dict[str, str]) -> None:
    local = tmp_path / "raw"
    wrong = {name: "0" * 32 for name in shared_md5}
    cfg = DataConfig(local_dir=str(local), download=DownloadConfig(base_url=omniglot_server, md5=wrong))
    with pytest.raises(DataError) as err:
        locate_zips(cfg, env={})
    msg = str(err.value)
    assert f"MD5 {shared_md5['images_background.zip']} does not match the expected {'0' * 32}" in msg
    assert "images_background.zip" in msg
    assert list(local.iterdir()) == []


def test_download_without_a_checksum_for_a_zip_refuses(tmp_path: Path, omniglot_server: str) -> None:
    cfg = DataConfig(local_dir=str(tmp_path), download=DownloadConfig(base_url=omniglot_server, md5={}))
    with pytest.raises(DataError, match=r"`data\.download\.md5` has no checksum for images_background\.zip"):
        locate_zips(cfg, env={})
    assert list(tmp_path.iterdir()) == []


def test_download_of_a_missing_file_is_a_data_error(tmp_path: Path, omniglot_server: str,
                                                    shared_md5: dict[str, str]) -> None:
    cfg = DataConfig(local_dir=str(tmp_path),
                     download=DownloadConfig(base_url=omniglot_server + "/no/such/folder", md5=shared_md5))
    with pytest.raises(DataError, match=r"could not download .*/no/such/folder/images_background\.zip: HTTP Error 404"):
        locate_zips(cfg, env={})
    assert list(tmp_path.iterdir()) == []


def test_download_from_an_unreachable_url_says_so(tmp_path: Path, shared_md5: dict[str, str]) -> None:
    # A bound but not listening socket: connecting to its port is refused, and no other process can take it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/omniglot"
        cfg = DataConfig(local_dir=str(tmp_path / "raw"), download=DownloadConfig(base_url=url, md5=shared_md5))
        with pytest.raises(DataError) as err:
            locate_zips(cfg, env={})
    msg = str(err.value)
    assert f"could not download {url}/images_background.zip" in msg
    assert "refused" in msg.lower()
    assert "Set OMNIGLOT_DIR" in msg
    assert not (tmp_path / "raw").exists() or list((tmp_path / "raw").iterdir()) == []


def test_project_params_carry_the_official_md5s() -> None:
    download = section(load_params(ROOT / "params.yaml"), DataConfig, "data").download
    assert download is not None
    assert download.md5 == OFFICIAL_MD5
    assert download.base_url.startswith("https://")
    # Read raw too: the checksums must be in the file itself, not a default.
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert raw["data"]["download"]["md5"] == OFFICIAL_MD5


# ---------------------------------------------------------------------------- listing and decoding


def test_list_zip_real_background(omniglot_zips: dict[str, Path]) -> None:
    listing = list_zip(omniglot_zips["images_background"], "images_background")
    assert len({info.alphabet for info in listing}) == 30
    assert len(listing) == 964
    assert all(len(members) == DRAWERS for members in listing.values())
    assert all(info.split == "images_background" for info in listing)
    # Members are in drawer order: XXXX_01.png ... XXXX_20.png.
    first_info, first = next(iter(listing.items()))
    assert [m[-6:-4] for m in first] == [f"{d:02d}" for d in range(1, DRAWERS + 1)]
    assert all(m.startswith(f"images_background/{first_info.alphabet}/{first_info.character}/") for m in first)


def test_list_zip_of_the_wrong_split_names_the_member(omniglot_zips: dict[str, Path]) -> None:
    with pytest.raises(DataError, match=r"member 'images_background/.*\.png' is not in the official layout"):
        list_zip(omniglot_zips["images_background"], "images_evaluation")


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def official_members(split: str, alphabet: str, character: str, char_id: int) -> dict[str, bytes]:
    page = png_bytes(drawing())
    return {f"{split}/{alphabet}/{character}/{char_id:04d}_{d:02d}.png": page for d in range(1, DRAWERS + 1)}


def test_list_zip_wrong_layout_names_the_member(tmp_path: Path) -> None:
    members = official_members("images_background", "Greek", "character01", 1)
    members["images_background/Greek/0001_01.png"] = png_bytes(drawing())  # no character folder
    path = write_zip(tmp_path / "images_background.zip", members)
    with pytest.raises(DataError, match=r"member 'images_background/Greek/0001_01\.png' is not in the official layout"):
        list_zip(path, "images_background")


def test_list_zip_counts_drawings_per_character(tmp_path: Path) -> None:
    members = official_members("images_background", "Greek", "character01", 1)
    del members["images_background/Greek/character01/0001_07.png"]
    path = write_zip(tmp_path / "images_background.zip", members)
    with pytest.raises(DataError, match=r"Greek/character01 has 19 drawings, expected 20"):
        list_zip(path, "images_background")


def test_list_zip_of_a_non_zip(tmp_path: Path) -> None:
    path = tmp_path / "images_background.zip"
    path.write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="not a readable zip"):
        list_zip(path, "images_background")


def test_decode_members_names_a_corrupt_png(tmp_path: Path) -> None:
    members = official_members("images_evaluation", "Atlantean", "character03", 965)
    bad = "images_evaluation/Atlantean/character03/0965_12.png"
    members[bad] = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    path = write_zip(tmp_path / "images_evaluation.zip", members)
    listing = list_zip(path, "images_evaluation")  # the layout is fine: only decoding finds the damage
    (names,) = listing.values()
    assert bad in names
    good = decode_members(path, names[:11], SPEC, desc="test")
    assert good.shape == (11, 1, 28, 28) and (good[:, :, :, :13] == 255).all()
    with pytest.raises(DataError, match=rf"{bad}.* is not a readable PNG"):
        decode_members(path, names, SPEC, desc="test")


# ---------------------------------------------------------------------------- the prepared set


@pytest.fixture(scope="module")
def tiny_prepared(omniglot_dir: Path) -> tuple[FewShotSet, dict]:
    """The same subset as `tiny_omniglot`, through the prepare stage's entry point (roles checked, full manifest)."""
    return prepare_dataset(DataConfig(path=str(omniglot_dir), max_classes_per_group=2))


def test_prepare_small_subset_roles(tiny_omniglot: tuple[FewShotSet, dict],
                                    tiny_prepared: tuple[FewShotSet, dict]) -> None:
    dataset, _ = tiny_omniglot
    summary = role_summary(dataset)
    assert {r: len(dataset.classes(r)) for r in ROLES} == {"source": 40, "calibration": 4, "train": 16, "novel": 40,
                                                          "unused": 0}
    assert {r: v["classes"] for r, v in summary.items()} == {"source": 40, "calibration": 4, "train": 16, "novel": 40}
    assert {r: v["images"] for r, v in summary.items()} == {"source": 800, "calibration": 80, "train": 320,
                                                          "novel": 800}
    assert dataset.images.shape == (2000, 1, 28, 28) and dataset.images.dtype == np.uint8
    assert (dataset.image_size, dataset.channels, dataset.inverted) == (28, 1, True)
    assert dataset.spec == ImageSpec(28, 1, True)
    assert len(dataset.labels) == len(dataset.instances) == 2000
    assert dataset.instance_names.tolist() == [f"drawer{d:02d}" for d in range(1, DRAWERS + 1)]
    for c in range(len(dataset.class_role)):
        assert sorted(dataset.instances[dataset.labels == c]) == list(range(DRAWERS))
    assert {r: len(v["groups"]) for r, v in summary.items()} == {"source": 20, "calibration": 2, "train": 8,
                                                                 "novel": 20}
    # Class names are "<Alphabet>/characterNN", unique; each class's group is its alphabet.
    assert len(set(dataset.class_names.tolist())) == len(dataset.class_names) == 100
    for name, group in zip(dataset.class_names, dataset.class_group, strict=True):
        alphabet, character = name.split("/")
        assert alphabet == group and character.startswith("character")
    # Strokes high on a black background: most pixels are 0, each drawing has some ink.
    assert (dataset.images == 0).mean() > 0.5
    assert (dataset.images.reshape(2000, -1).max(axis=1) > 0).all()
    # The stage's entry point gives the same set, and a manifest that says so.
    prepared, manifest = tiny_prepared
    for name in ("images", "labels", "instances", "class_names", "class_group", "class_role", "exemplar"):
        np.testing.assert_array_equal(getattr(prepared, name), getattr(dataset, name), err_msg=name)
    assert manifest["roles"] == summary
    assert (manifest["source"], manifest["image_size"], manifest["channels"], manifest["inverted"]) == \
        ("omniglot", 28, 1, True)


def test_manifest_alphabets_are_disjoint_and_split_by_zip(tiny_omniglot: tuple[FewShotSet, dict],
                                                          omniglot_zips: dict[str, Path]) -> None:
    dataset, manifest = tiny_omniglot
    groups = {r: v["groups"] for r, v in role_summary(dataset).items()}
    source, calibration, train, novel = (set(groups[r]) for r in ("source", "calibration", "train", "novel"))
    assert "unused" not in groups, "an empty optional role is not listed"
    for a, b in itertools.combinations((source, calibration, train, novel), 2):
        assert not a & b
    background = {i.alphabet for i in list_zip(omniglot_zips["images_background"], "images_background")}
    assert source | calibration | train == background
    assert not novel & background
    for r in groups:
        assert set(dataset.class_group[dataset.classes(r)]) == set(groups[r])
    assert manifest["zips"]["images_background"]["sha256"] == \
        "893d6690ed806e2bbef92262130b80a7975e48ef4039c7469b136062ae2c18f7"


def test_each_train_class_has_one_exemplar(tiny_prepared: tuple[FewShotSet, dict],
                                           omniglot_zips: dict[str, Path]) -> None:
    dataset, manifest = tiny_prepared
    train = dataset.classes("train")
    assert (dataset.exemplar[train] >= 0).all()
    np.testing.assert_array_equal(dataset.labels[dataset.exemplar[train]], train)  # an image of its own class
    assert (dataset.exemplar[np.setdiff1d(np.arange(len(dataset.class_role)), train)] == -1).all()
    exemplars = dataset.exemplar_indices()
    assert len(exemplars) == len(train)
    assert list(dataset.labels[exemplars]) == list(train)
    np.testing.assert_array_equal(exemplars, dataset.exemplar[train])
    assert len(set(dataset.instances[exemplars])) > 1, "every class got the same exemplar drawer"
    # The exemplar is the drawing the manifest names (drawer01..drawer20, as numbered in the file names).
    listing = list_zip(omniglot_zips["images_background"], "images_background")
    by_name = {f"{i.alphabet}/{i.character}": names for i, names in listing.items()}
    assert len(manifest["exemplars"]) == len(train)
    for idx in exemplars[:5]:
        c = dataset.labels[idx]
        drawer_name = manifest["exemplars"][str(dataset.class_names[c])]
        assert drawer_name == dataset.instance_names[dataset.instances[idx]]
        drawer = int(drawer_name.removeprefix("drawer"))
        member = by_name[str(dataset.class_names[c])][drawer - 1]
        assert member.endswith(f"_{drawer:02d}.png")
        expected = decode_members(omniglot_zips["images_background"], [member], SPEC, desc="test")[0]
        np.testing.assert_array_equal(dataset.images[idx], expected)


def test_prepare_is_seeded(omniglot_dir: Path, tiny_prepared: tuple[FewShotSet, dict]) -> None:
    dataset, manifest = tiny_prepared
    again, again_manifest = prepare_dataset(DataConfig(path=str(omniglot_dir), max_classes_per_group=2))
    assert again_manifest == manifest
    np.testing.assert_array_equal(again.exemplar, dataset.exemplar)
    np.testing.assert_array_equal(again.images, dataset.images)

    other_split = prepare_dataset(DataConfig(path=str(omniglot_dir), max_classes_per_group=2, split_seed=1))[1]
    assert set(other_split["roles"]["train"]["groups"]) != set(manifest["roles"]["train"]["groups"])
    assert len(other_split["roles"]["train"]["groups"]) == 8
    # The evaluation alphabets never move.
    assert other_split["roles"]["novel"]["groups"] == manifest["roles"]["novel"]["groups"]

    other_exemplars = prepare_dataset(DataConfig(path=str(omniglot_dir), max_classes_per_group=2,
                                                 exemplar_seed=1))[1]
    assert other_exemplars["roles"] == manifest["roles"]
    assert other_exemplars["exemplars"].keys() == manifest["exemplars"].keys()
    assert other_exemplars["exemplars"] != manifest["exemplars"]


def small_omniglot(tmp_path: Path) -> Path:
    """A folder with both zips in the official layout: 2 background alphabets and 1 evaluation alphabet, 2
    characters each."""
    bg = official_members("images_background", "Greek", "character01", 1)
    bg.update(official_members("images_background", "Greek", "character02", 2))
    bg.update(official_members("images_background", "Latin", "character01", 3))
    bg.update(official_members("images_background", "Latin", "character02", 4))
    ev = official_members("images_evaluation", "Atlantean", "character01", 965)
    ev.update(official_members("images_evaluation", "Atlantean", "character02", 966))
    write_zip(tmp_path / "images_background.zip", bg)
    write_zip(tmp_path / "images_evaluation.zip", ev)
    return tmp_path


def test_too_many_source_alphabets_for_the_zip(tmp_path: Path) -> None:
    folder = small_omniglot(tmp_path)
    with pytest.raises(DataError, match=r"data\.roles asks for 3 groups \(source: 3, train: None\), but there are "
                                        r"only 2; lower the counts"):
        prepare_dataset(DataConfig(path=str(folder), roles={"source": 3, "train": None}))
    # Every background alphabet a source alphabet: no one-shot training classes are left.
    with pytest.raises(DataError, match=r"data\.roles: no group is left for `train` \(2 groups: source: 2, "
                                        r"train: None\); lower the other counts"):
        prepare_dataset(DataConfig(path=str(folder), roles={"source": 2, "train": None}))
    dataset, manifest = prepare_dataset(DataConfig(path=str(folder), roles={"source": 1, "train": None},
                                                   image_size=16))
    assert {r: v["classes"] for r, v in manifest["roles"].items()} == {"source": 2, "train": 2, "novel": 2}
    assert manifest["roles"]["novel"]["groups"] == ["Atlantean"]
    assert dataset.images.shape == (120, 1, 16, 16)


def test_few_shot_set_save_load_round_trip(tiny_omniglot: tuple[FewShotSet, dict], tmp_path: Path) -> None:
    dataset, _ = tiny_omniglot
    path = tmp_path / "dataset.npz"
    dataset.save(path)
    loaded = FewShotSet.load(path)
    for name in ("images", "labels", "instances", "instance_names", "class_names", "class_group", "class_role",
                 "exemplar"):
        original, back = getattr(dataset, name), getattr(loaded, name)
        assert back.dtype == original.dtype, name
        np.testing.assert_array_equal(back, original, err_msg=name)
    assert loaded.inverted is dataset.inverted is True
    np.testing.assert_array_equal(loaded.exemplar_indices(), dataset.exemplar_indices())
    np.testing.assert_array_equal(loaded.indices("novel"), dataset.indices("novel"))


def test_few_shot_set_load_missing_says_which_stage(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"prepared data not found; run `dvc repro prepare`"):
        FewShotSet.load(tmp_path / "dataset.npz")


def test_few_shot_set_load_of_another_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "dataset.npz"
    np.savez(path, images=np.zeros((2, 1, 4, 4), np.uint8))  # an .npz, but not a prepared set
    with pytest.raises(DataError, match=r"dataset\.npz: not a prepared dataset of this pipeline"):
        FewShotSet.load(path)
    path.write_text("not a zip")
    with pytest.raises(DataError, match=r"not a prepared dataset of this pipeline"):
        FewShotSet.load(path)


def test_unknown_role_is_refused(tiny_omniglot: tuple[FewShotSet, dict]) -> None:
    with pytest.raises(ValueError, match="role 'test' is not one of"):
        tiny_omniglot[0].classes("test")
