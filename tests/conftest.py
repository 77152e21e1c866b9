"""Shared fixtures: where the real Omniglot zips are, and a small prepared subset of them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.config import DataConfig
from pipeline.data import SPLITS, OmniglotSet, prepare_omniglot


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The folder holding the real images_background.zip and images_evaluation.zip (from OMNIGLOT_DIR)."""
    value = os.environ.get("OMNIGLOT_DIR")
    if not value:
        pytest.fail("OMNIGLOT_DIR is unset: point it at the folder holding images_background.zip and "
                    "images_evaluation.zip (e.g. OMNIGLOT_DIR=/work/shared/data/omniglot pytest)", pytrace=False)
    folder = Path(value).expanduser().resolve()
    missing = [f"{s}.zip" for s in SPLITS if not (folder / f"{s}.zip").is_file()]
    if missing:
        pytest.fail(f"OMNIGLOT_DIR={folder} lacks {', '.join(missing)}", pytrace=False)
    return folder


@pytest.fixture(scope="session")
def omniglot_zips(omniglot_dir: Path) -> dict[str, Path]:
    """Split name -> path of its real zip."""
    return {s: omniglot_dir / f"{s}.zip" for s in SPLITS}


@pytest.fixture(scope="session")
def tiny_omniglot(omniglot_zips: dict[str, Path]) -> tuple[OmniglotSet, dict]:
    """The real data cut to the first 2 characters of every alphabet (100 classes, 2,000 drawings), 28 x 28."""
    return prepare_omniglot(omniglot_zips, DataConfig(max_classes_per_alphabet=2))


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Tiny networks run fastest on one thread, and the result does not depend on how busy the machine is."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
