"""The README documents every setting the code has (one home for settings, docs to match)."""

from pathlib import Path

import pytest

from sam2_service.daemon.config import settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("field", settings(), ids=lambda f: f.name)
def test_every_setting_is_in_the_readme_table(field):
    row = next((l for l in README.splitlines() if l.startswith(f"| `{field.metadata['flag']}` |")), None)
    assert row is not None, f"{field.metadata['flag']} missing from README settings table"
    assert f"`{field.metadata['env']}`" in row


def test_readme_starts_with_the_two_commands():
    head = README.splitlines()[:5]
    assert any(l.strip().startswith("make run") for l in head)
    assert any(l.strip().startswith("make test") for l in head)


PROTOCOL = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()


def _service_error_classes():
    from sam2_service.wire import errors

    return [c for c in vars(errors).values()
            if isinstance(c, type) and issubclass(c, errors.ServiceError)]


def test_every_error_code_is_documented_in_the_protocol():
    from sam2_service.wire.errors import ERROR_CODES

    documented = {l.split("`")[1] for l in PROTOCOL.splitlines() if l.startswith("| `")}
    assert ERROR_CODES <= documented, ERROR_CODES - documented
    assert {c.code for c in _service_error_classes()} == ERROR_CODES


def test_download_script_knows_the_same_checkpoint_files_as_the_config():
    """download_checkpoint.sh keeps its own model -> file table (it runs before any venv
    exists); this keeps it equal to config.MODELS."""
    import re

    from sam2_service.daemon.config import MODELS

    script = (Path(__file__).resolve().parents[2] / "download_checkpoint.sh").read_text()
    table = dict(re.findall(r"^\s+(\w+)\) echo (sam2\.1_hiera_\w+\.pt) ;;$", script, re.M))
    assert table == {name: ckpt for name, (_, ckpt) in MODELS.items()}


#: Formats the README ("Smoke test") and docs/protocol.md ("Image formats") say the client
#: converts to PNG and the daemon rejects; PNG and JPEG go through unchanged.
CONVERTED_FORMATS = ["GIF", "WebP", "BMP", "TIFF"]


@pytest.mark.parametrize("fmt", CONVERTED_FORMATS + ["PNG", "JPEG"])
def test_image_formats_are_as_documented(fmt):
    """The daemon decodes PNG and JPEG only; the client converts the others to PNG."""
    import io

    import numpy as np
    from PIL import Image

    from sam2_service.client.core import encode_image_input
    from sam2_service.daemon.inference.imaging import decode_image
    from sam2_service.wire.errors import ImageDecodeError

    for text in (README, PROTOCOL):
        assert fmt in text
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(buf, format=fmt.upper())
    original = buf.getvalue()
    sent, width, height = encode_image_input(original)
    assert (width, height) == (8, 6)
    if fmt in CONVERTED_FORMATS:
        assert sent.startswith(b"\x89PNG\r\n\x1a\n") and sent != original
        with pytest.raises(ImageDecodeError):
            decode_image(original, 10**6)
    else:
        assert sent == original
    assert decode_image(sent, 10**6).shape == (6, 8, 3)


def test_readme_segment_examples_write_different_files():
    """Run one after the other, the smoke test's examples must not overwrite each other."""
    outputs = [line.split("--output ")[1].split()[0] for line in README.splitlines()
               if "sam2-service segment " in line and "--output " in line]
    assert len(outputs) >= 2 and len(set(outputs)) == len(outputs), outputs


def test_no_work_item_names_in_code_or_docs():
    """Code and docs name features, not the tracker's work items ("issue 13"): a reader of
    the project has no such list."""
    import re

    pattern = re.compile(r"\bissue\s*#?\d+", re.IGNORECASE)
    places = [*ROOT.joinpath("sam2_service").rglob("*.py"), ROOT / "README.md",
              *ROOT.joinpath("docs").glob("*.md")]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in places
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_the_code_map_names_every_daemon_module():
    """Each module of each daemon group appears in the README's code map by its name in
    backticks, under its group's row; each row's group exists."""
    readme = ROOT.joinpath("README.md").read_text()
    code_map = readme[readme.index("## Code map"):readme.index("## Tests")]
    rows = {line.split("`")[1]: line for line in code_map.splitlines()
            if line.startswith("| `sam2_service/daemon/")}
    daemon = ROOT / "sam2_service" / "daemon"
    groups = sorted(p.name for p in daemon.iterdir() if (p / "__init__.py").exists())
    assert sorted(r.split("/")[2] for r in rows if r.endswith("/")) == groups
    for group in groups:
        row = rows[f"sam2_service/daemon/{group}/"]
        missing = [m.stem for m in (daemon / group).glob("*.py")
                   if m.stem != "__init__" and f"`{m.stem}`" not in row]
        assert not missing, f"{group}: {missing}"
