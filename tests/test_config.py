"""params.yaml -> frozen dataclasses: every bad value fails at load, naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from pipeline.classifiers.config import SiameseConfig
from pipeline.config import (
    ParamsError,
    TrainerConfig,
    from_dict,
    load_params,
    section,
)
from pipeline.data.prepare import DataConfig, DownloadConfig
from pipeline.evaluation import EvaluationConfig
from pipeline.generators.gan import GANConfig
from pipeline.profile import overlay
from pipeline.variants import VariantConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class ChoiceConfig:
    loss: Literal["contrastive", "bce", "triplet"] = "contrastive"
    sizes: tuple[int, ...] = (1, 2)
    rate: float = 0.5


def test_from_dict_builds_frozen_config_with_defaults() -> None:
    cfg = from_dict(DataConfig, {"image_size": 32, "max_classes_per_group": 3}, "data")
    assert cfg == DataConfig(image_size=32, max_classes_per_group=3)
    assert cfg.roles == {"source": 20, "calibration": 2, "train": None} and cfg.download is None
    assert cfg.source == "omniglot" and cfg.channels == 1 and cfg.invert is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.image_size = 64  # type: ignore[misc]


def test_unknown_key_names_the_key_and_the_allowed_keys() -> None:
    with pytest.raises(ParamsError) as err:
        from_dict(DataConfig, {"image_size": 28, "imgae_size": 28}, "data")
    msg = str(err.value)
    assert "`data.imgae_size`" in msg
    for allowed in ("image_size", "roles", "max_classes_per_group", "split_seed", "download", "source", "path",
                    "channels", "invert", "split_file"):
        assert allowed in msg


def test_wrong_type_names_key_value_and_expectation() -> None:
    with pytest.raises(ParamsError, match=r"`data\.image_size` = '28' is not allowed; expected an integer"):
        from_dict(DataConfig, {"image_size": "28"}, "data")
    # A bool is not an integer, though Python says isinstance(True, int).
    with pytest.raises(ParamsError, match=r"`data\.split_seed` = True .*expected an integer"):
        from_dict(DataConfig, {"split_seed": True}, "data")
    with pytest.raises(ParamsError, match=r"`trainer\.channels_last` = 'yes' .*expected true or false"):
        from_dict(TrainerConfig, {"channels_last": "yes"}, "trainer")


def test_missing_required_key_is_named() -> None:
    with pytest.raises(ParamsError, match=r"missing key `data\.download\.md5`"):
        from_dict(DownloadConfig, {"base_url": "http://x"}, "data.download")


def test_literal_accepts_listed_values_and_names_them_otherwise() -> None:
    assert from_dict(ChoiceConfig, {"loss": "bce"}, "siamese").loss == "bce"
    with pytest.raises(ParamsError) as err:
        from_dict(ChoiceConfig, {"loss": "hinge"}, "siamese")
    msg = str(err.value)
    assert "`siamese.loss` = 'hinge'" in msg
    assert "'contrastive', 'bce', 'triplet'" in msg


def test_lists_become_tuples_and_ints_become_floats() -> None:
    cfg = from_dict(ChoiceConfig, {"sizes": [4, 8], "rate": 1}, "x")
    assert cfg.sizes == (4, 8) and isinstance(cfg.sizes, tuple)
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    with pytest.raises(ParamsError, match=r"`x\.sizes\[1\]` = 'b' .*expected an integer"):
        from_dict(ChoiceConfig, {"sizes": [1, "b"]}, "x")


def test_union_int_or_str() -> None:
    assert from_dict(TrainerConfig, {"devices": 2}, "trainer").devices == 2
    assert from_dict(TrainerConfig, {"devices": "auto"}, "trainer").devices == "auto"
    with pytest.raises(ParamsError, match=r"`trainer\.devices` = 1\.5 is not allowed; expected an integer or a string"):
        from_dict(TrainerConfig, {"devices": 1.5}, "trainer")


def test_optional_accepts_null_but_not_for_required_values() -> None:
    assert from_dict(DataConfig, {"max_classes_per_group": None}, "data").max_classes_per_group is None
    with pytest.raises(ParamsError, match=r"`data\.image_size` = None .*expected an integer"):
        from_dict(DataConfig, {"image_size": None}, "data")


def test_nested_dataclass_is_built_and_its_errors_name_the_inner_key() -> None:
    cfg = from_dict(DataConfig, {"download": {"base_url": "http://h/x", "md5": {"a.zip": "0" * 32}}}, "data")
    assert cfg.download == DownloadConfig(base_url="http://h/x", md5={"a.zip": "0" * 32})

    with pytest.raises(ParamsError, match=r"`data\.download\.base_url` = 3 is not allowed; expected a string"):
        from_dict(DataConfig, {"download": {"base_url": 3, "md5": {}}}, "data")
    with pytest.raises(ParamsError, match=r"`data\.download\.md5\.a\.zip` = 5 .*expected a string"):
        from_dict(DataConfig, {"download": {"base_url": "u", "md5": {"a.zip": 5}}}, "data")
    with pytest.raises(ParamsError) as err:
        from_dict(DataConfig, {"download": {"base_url": "u", "md5": {}, "mirror": "v"}}, "data")
    assert "unknown key `data.download.mirror`" in str(err.value)
    assert "base_url, md5" in str(err.value)
    with pytest.raises(ParamsError, match=r"`data\.download` = 'http://h' .*expected a mapping"):
        from_dict(DataConfig, {"download": "http://h"}, "data")


@pytest.mark.parametrize("size", [30, 4, 0, -8, 8, 12, 18])
def test_image_size_must_be_a_multiple_of_4_and_at_least_16(size: int) -> None:
    with pytest.raises(ParamsError, match=rf"`data\.image_size` = {size} .*multiple of 4, at least 16"):
        from_dict(DataConfig, {"image_size": size}, "data")


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_channels_must_be_1_or_3(channels: int) -> None:
    with pytest.raises(ParamsError, match=rf"`data\.channels` = {channels} .*1 \(grayscale\) or 3 \(RGB\)"):
        from_dict(DataConfig, {"channels": channels}, "data")


@pytest.mark.parametrize("roles", [{"source": 0, "train": None}, {"source": -1, "train": 3},
                                   {"source": None, "train": None}, {"source": 5}, {"train": 5},
                                   {"source": 5, "train": 5, "novel": 3}, {"source": 5, "train": 5, "test": 1}])
def test_roles_need_source_and_train_counts_and_at_most_one_rest(roles: dict) -> None:
    with pytest.raises(ParamsError, match=r"`data\.roles` = "):
        from_dict(DataConfig, {"roles": roles}, "data")


def test_roles_count_must_be_an_integer_or_null() -> None:
    with pytest.raises(ParamsError, match=r"`data\.roles\.source` = 'many' .*an integer"):
        from_dict(DataConfig, {"roles": {"source": "many", "train": None}}, "data")


def test_source_must_be_a_known_one_and_folder_needs_a_path() -> None:
    with pytest.raises(ParamsError, match=r"`data\.source` = 'imagenet' .*'omniglot', 'folder'"):
        from_dict(DataConfig, {"source": "imagenet"}, "data")
    with pytest.raises(ParamsError, match=r"`data\.path` = None .*data\.source is folder"):
        from_dict(DataConfig, {"source": "folder"}, "data")
    cfg = from_dict(DataConfig, {"source": "folder", "path": "x.zip", "subdir": "kanji", "channels": 3,
                                 "invert": False, "split_file": "split.csv"}, "data")
    assert (cfg.path, cfg.subdir, cfg.channels, cfg.invert, cfg.split_file) == ("x.zip", "kanji", 3, False,
                                                                                   "split.csv")
    assert (cfg.spec.size, cfg.spec.channels, cfg.spec.invert) == (28, 3, False)


def test_validate_accepts_the_edges() -> None:
    assert from_dict(DataConfig, {"image_size": 16, "roles": {"source": 29, "train": None}}, "data").image_size == 16
    assert from_dict(DataConfig, {"roles": {"source": 1, "train": 1}}, "data").roles == {"source": 1, "train": 1}
    assert from_dict(DataConfig, {"roles": {"source": None, "train": 3}}, "data").roles == {"source": None,
                                                                                          "train": 3}
    assert from_dict(DataConfig, {"channels": 3}, "data").channels == 3
    with pytest.raises(ParamsError, match=r"`data\.max_classes_per_group` = 0 .*> 0"):
        from_dict(DataConfig, {"max_classes_per_group": 0}, "data")


def test_old_data_keys_are_refused_by_name() -> None:
    for key, value in (("n_source_alphabets", 20), ("max_classes_per_alphabet", 3)):
        with pytest.raises(ParamsError, match=rf"unknown key `data\.{key}`"):
            from_dict(DataConfig, {key: value}, "data")


def test_within_group_way_may_be_null_but_not_below_2() -> None:
    assert from_dict(EvaluationConfig, {"within_group_way": None}, "evaluation").within_group_way is None
    assert from_dict(EvaluationConfig, {"within_group_way": 5}, "evaluation").within_group_way == 5
    with pytest.raises(ParamsError, match=r"`evaluation\.within_group_way` = 1 "):
        from_dict(EvaluationConfig, {"within_group_way": 1}, "evaluation")
    with pytest.raises(ParamsError, match=r"unknown key `evaluation\.within_alphabet_way`"):
        from_dict(EvaluationConfig, {"within_alphabet_way": 20}, "evaluation")


def test_section_reads_a_dotted_path_and_names_a_missing_one() -> None:
    project = load_params(ROOT / "params.yaml")
    params = {"data": {**project["data"], "image_size": 32}, "a": {"b": {**project["trainer"], "devices": 3}}}
    assert section(params, DataConfig, "data").image_size == 32
    assert section(params, TrainerConfig, "a.b").devices == 3
    with pytest.raises(ParamsError, match=r"missing section `a\.c`"):
        section(params, TrainerConfig, "a.c")
    with pytest.raises(ParamsError, match=r"`data` = 3 .*expected a mapping"):
        section({"data": 3}, DataConfig, "data")


def test_a_key_deleted_from_params_is_an_error_not_a_silent_default() -> None:
    """The profile said 150 steps; with the key gone the code's 2,000 would run. Only keys documented as
    optional (a null default: the feature off; or the class's OPTIONAL) may be left out."""
    project = load_params(ROOT / "params.yaml")
    siamese = {k: v for k, v in project["siamese"].items() if k != "max_steps"}
    with pytest.raises(ParamsError, match=r"missing key `siamese\.max_steps`"):
        section({"siamese": siamese}, SiameseConfig, "siamese")
    gan = {k: v for k, v in project["generator"]["gan"].items() if k != "lr_critic"}
    with pytest.raises(ParamsError, match=r"missing key `generator\.gan\.lr_critic`"):
        section({"generator": {"gan": gan}}, GANConfig, "generator.gan")
    data = {k: v for k, v in project["data"].items() if k not in ("path", "subdir", "split_file", "download")}
    assert section({"data": data}, DataConfig, "data").download is None  # null default: may be left out
    assert section({"v": {"train_on": ["exemplars"], "synthetic": "none"}}, VariantConfig, "v").classic
    assert from_dict(SiameseConfig, {"max_steps": 10}, "siamese").lr == SiameseConfig.lr  # code: defaults fill


@pytest.mark.parametrize("written", ["1e-3", "1E-3", "+1e-3"])
def test_numbers_yaml_reads_as_strings_are_taken(written: str) -> None:
    """YAML 1.1 (PyYAML, DVC) reads `1e-3` as the string '1e-3': it is the number the user meant."""
    raw = yaml.safe_load(f"lr: {written}")
    assert raw["lr"] == written  # what YAML gives
    assert from_dict(SiameseConfig, raw, "siamese").lr == pytest.approx(1e-3)
    with pytest.raises(ParamsError, match=r"`siamese\.lr` = 'fast' .*expected a number"):
        from_dict(SiameseConfig, {"lr": "fast"}, "siamese")


def test_an_accelerator_this_machine_lacks_is_named_at_load() -> None:
    import torch

    # The kind this machine lacks: a CUDA GPU on a CPU machine (this one, CI), Apple's MPS on any CUDA machine.
    missing = "mps" if torch.cuda.is_available() else "gpu"
    with pytest.raises(ParamsError, match=rf"`trainer\.accelerator` = '{missing}' .*none of that kind is visible"):
        from_dict(TrainerConfig, {"accelerator": missing}, "trainer")
    with pytest.raises(ParamsError, match=r"`trainer\.precision` = 'bf16' .*bf16-mixed"):
        from_dict(TrainerConfig, {"precision": "bf16"}, "trainer")


def test_load_params_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml: params file not found"):
        load_params(missing)


def test_load_params_invalid_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  image_size: [28\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML"):
        load_params(bad)


def test_load_params_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="expected a mapping at the top level"):
        load_params(bad)


def test_project_params_load_and_validate() -> None:
    params = load_params(ROOT / "params.yaml")
    data = section(params, DataConfig, "data")
    assert data.download is not None
    assert data.source == "omniglot" and data.roles == {"source": 20, "calibration": 2, "train": None}
    assert section(params, EvaluationConfig, "evaluation").within_group_way == 20
    assert section(params, TrainerConfig, "trainer").devices == 1


def test_overlay_merges_nested_keys() -> None:
    base = {"data": {"image_size": 28, "download": {"base_url": "u", "md5": {"a": "1"}}},
            "siamese": {"lr": 0.1, "seed": 0}, "variants": {"baseline": {"classic": False}, "vae": {"classic": True}}}
    merged = overlay(base, {"data": {"download": {"base_url": "v"}}, "siamese": {"lr": 0.5},
                            "variants": {"only": {"classic": True}}})
    assert merged["data"] == {"image_size": 28, "download": {"base_url": "v", "md5": {"a": "1"}}}
    assert merged["siamese"] == {"lr": 0.5, "seed": 0}
    # `variants` is replaced whole: a profile lists exactly the variants it runs.
    assert merged["variants"] == {"only": {"classic": True}}
    assert base["data"]["download"]["base_url"] == "u" and base["siamese"]["lr"] == 0.1  # base left untouched


def test_overlay_refuses_unknown_keys_with_their_dotted_name() -> None:
    base = {"data": {"image_size": 28, "download": {"base_url": "u"}}}
    with pytest.raises(ParamsError, match=r"profile sets `data\.download\.mirror`, which params\.yaml does not have"):
        overlay(base, {"data": {"download": {"mirror": "x"}}})
    with pytest.raises(ParamsError, match=r"`datta`"):
        overlay(base, {"datta": {}})


def test_smoke_profile_overlays_the_project_params() -> None:
    params = load_params(ROOT / "params.yaml")
    merged = overlay(params, yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text()))
    assert section(merged, DataConfig, "data").max_classes_per_group == 20
    assert merged["data"]["download"] == params["data"]["download"]
