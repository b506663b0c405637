"""sam2_compat: the version check, its state helpers, and that it is the only module of
the package touching sam2's private attributes (an :mod:`ast` scan, shown able to fail)."""

from __future__ import annotations

import ast
import inspect
import types
import warnings
from pathlib import Path

import pytest

from sam2_service.daemon.inference import sam2_compat

PACKAGE = Path(__file__).resolve().parents[2] / "sam2_service"
COMPAT = PACKAGE / "daemon" / "inference" / "sam2_compat.py"

#: Names that hold sam2 objects in the package (a predictor, its model and the model's
#: parts, the automatic mask generator), as variables or as attributes (``self.predictor``).
SAM2_OBJECTS = {"predictor", "pred", "model", "gen", "generator", "encoder", "decoder",
                "sam_prompt_encoder", "sam_mask_decoder", "image_encoder", "transforms"}


def _holder(node: ast.expr) -> str | None:
    """The name an attribute is read from: ``x`` for ``x.attr``, ``y`` for ``x.y.attr``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def private_accesses(source: str) -> list[str]:
    """``line N: name`` for each access to a sam2 internal in ``source``: an attribute or
    a ``getattr``/``setattr``/``hasattr`` name in :data:`sam2_compat.TOUCHED`, on whatever
    object, and any other ``_private`` attribute of a name in :data:`SAM2_OBJECTS`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            name = node.attr
            private = name.startswith("_") and not name.startswith("__")
            if name in sam2_compat.TOUCHED or (private and _holder(node.value) in SAM2_OBJECTS):
                found.append(f"line {node.lineno}: {name}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and node.args[1].value in sam2_compat.TOUCHED):
            found.append(f"line {node.lineno}: {node.args[1].value}")
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != COMPAT)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_but_sam2_compat_touches_sam2_internals(path: Path) -> None:
    bad = private_accesses(path.read_text())
    assert not bad, f"{path.name}: use sam2_compat instead: " + ", ".join(bad)


def test_the_scan_can_fail() -> None:
    src = ("def f(self, pred, model):\n"
           "    pred._features = None\n"
           "    x = self.predictor._orig_hw[0]\n"
           "    done = getattr(model, '_sam2_service_compiled', None)\n"
           "    self.gen._process_batch(1)\n"
           "    model.sam_mask_decoder.output_upscaling.to()\n"
           "    self.predictor._bb_feat_sizes\n"
           "    self._cache, self.predictor.model, other._x, pred.__class__\n")
    assert sorted(private_accesses(src)) == [
        "line 2: _features", "line 3: _orig_hw", "line 4: _sam2_service_compiled",
        "line 5: _process_batch", "line 6: output_upscaling", "line 7: _bb_feat_sizes"]


def test_touched_lists_exactly_what_sam2_compat_touches() -> None:
    """Each name in TOUCHED is used in sam2_compat, and each private attribute sam2_compat
    reads or writes is in TOUCHED, so the scan above covers them all."""
    tree = ast.parse(COMPAT.read_text())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.args[1].value for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "getattr"}
    assert sam2_compat.TOUCHED <= used
    private = {name for name in used if name.startswith("_") and not name.startswith("__")}
    assert private <= sam2_compat.TOUCHED


def test_a_differing_version_warns_naming_both_and_does_not_refuse() -> None:
    with pytest.warns(sam2_compat.Sam2VersionWarning) as caught:
        message = sam2_compat.check_version("1.2.0")
    assert message is not None and str(caught[0].message) == message
    assert "sam2 1.2.0 is installed" in message
    assert "written for sam2 1.1.0" in message and "sam2==1.1.0" in message


def test_the_version_written_for_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sam2_compat.check_version("1.1.0") is None
    assert sam2_compat.version_message(None) is None  # not installed: start-up's error
    assert sam2_compat.version_message("2.0", written_for="2.0") is None


def test_the_import_check_reads_the_installed_version(monkeypatch) -> None:
    monkeypatch.setattr(sam2_compat, "installed_version", lambda: "0.9")
    with pytest.warns(sam2_compat.Sam2VersionWarning, match="sam2 0.9 is installed"):
        sam2_compat.check_version()
    assert sam2_compat.WRITTEN_FOR == "1.1.0"


def test_image_state_round_trip() -> None:
    """What set_image leaves, written and read back on a stand-in predictor."""
    pred = types.SimpleNamespace(_features=None, _orig_hw=None, _is_image_set=False)
    feats = {"image_embed": object(), "high_res_feats": []}
    sam2_compat.set_image_state(pred, feats, (720, 1280))
    assert sam2_compat.image_features(pred) is feats
    assert sam2_compat.image_size(pred) == (720, 1280)
    assert pred._orig_hw == [(720, 1280)] and pred._is_image_set is True
    model = types.SimpleNamespace()
    assert sam2_compat.compiled_parts(model) is None
    sam2_compat.mark_compiled(model, {"sam_mask_decoder": "default"})
    assert sam2_compat.compiled_parts(model) == {"sam_mask_decoder": "default"}


def test_the_installed_sam2_has_what_sam2_compat_uses() -> None:
    """The methods exist and SAM2ImagePredictor's constructor sets the attributes (read from
    its source: building one needs a model)."""
    predictor_module = pytest.importorskip("sam2.sam2_image_predictor")
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.modeling.sam.prompt_encoder import PromptEncoder

    cls = predictor_module.SAM2ImagePredictor
    assert callable(cls._prep_prompts) and callable(cls._predict)
    assert callable(SAM2AutomaticMaskGenerator._process_batch)
    assert callable(PromptEncoder.get_dense_pe)
    init = inspect.getsource(cls.__init__)
    for name in ("_features", "_orig_hw", "_is_image_set", "_transforms"):
        assert f"self.{name} =" in init
    assert list(inspect.signature(cls._prep_prompts).parameters)[1:6] == [
        "point_coords", "point_labels", "box", "mask_logits", "normalize_coords"]
