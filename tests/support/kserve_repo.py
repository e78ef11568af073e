"""The model repository of the KServe API tests over gRPC and REST (tests/service/api/): news
versions 1 and 2 (different weights), one repository per test module, and the texts they send."""
from __future__ import annotations

import pytest

from tests.support.onnx_bundle import TinyBundle, make_onnx_bundle

TEXTS = ["shares of the bank rose as the market rallied", "the striker scored twice", "",
         "a new phone with a faster chip 🙂", "ünïcödé and \u202eright-to-left"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyBundle]:
    root = tmp_path_factory.mktemp("models")
    return {"news/1": make_onnx_bundle(root, name="news", version=1, seed=1),
            "news/2": make_onnx_bundle(root, name="news", version=2, seed=2),
            "root": root}  # type: ignore[dict-item]
