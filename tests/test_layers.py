"""The package stands in layers (``mst5_dist/layers.py``): no upward import, no import circle, no
module outside a layer, and a bottom layer without torch. The checker is shown to fail on a
synthetic tree with a deliberate upward import, beside the same tree without it."""

from pathlib import Path

import pytest
from conftest import REPO
from layering import cycles, problems

from mst5_dist.layers import FOUNDATION_THIRD_PARTY, LAYERS

pytestmark = pytest.mark.unit

TOY_LAYERS = [("bottom", ["toy", "toy.base"]), ("middle", ["toy.core"]), ("top", ["toy.app"])]


def _toy(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "toy"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_package_keeps_its_layers():
    found = problems(REPO / "mst5_dist", LAYERS, FOUNDATION_THIRD_PARTY)
    assert found == [], "\n".join(found)


CLEAN = {
    "base.py": "import json\n",
    "core/__init__.py": "from toy.base import json\n",
    "core/model.py": "from toy import base\n",
    "app.py": "from toy.core import model\n",
}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, []),  # negative control: the clean tree passes
        (  # a function-level import hides nothing
            {"core/model.py": "from toy import base\ndef f():\n    from toy.app import x\n"},
            ["toy.core.model (middle) imports toy.app (top): an upward import"],
        ),
        (  # a relative import is resolved
            {"base.py": "from .core import model\n"},
            ["toy.base (bottom) imports toy.core.model (middle): an upward import"],
        ),
        ({"extra.py": "x = 1\n"}, ["toy.extra: in no layer (add it to the layer list)"]),
        (
            {"base.py": "import torch\n"},
            ["toy.base (bottom) imports torch: the bottom layer uses the standard library only"],
        ),
    ],
)
def test_the_checker_bites_on_a_synthetic_tree(tmp_path, extra, expected):
    root = _toy(tmp_path, {**CLEAN, **extra})
    found = problems(root, TOY_LAYERS)
    assert [f for f in found if not f.startswith("import circle")] == expected


def test_the_checker_finds_circles_within_one_layer(tmp_path):
    root = _toy(
        tmp_path, {**CLEAN, "core/a.py": "from toy.core import b\n", "core/b.py": "def f():\n    import toy.core.a\n"}
    )
    assert "import circle: toy.core.a <-> toy.core.b" in problems(root, TOY_LAYERS)
    assert cycles({"a": {"b"}, "b": set()}) == []  # no circle, none reported
