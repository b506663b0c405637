"""The README documents every setting the code has (one home for settings, docs to match)."""

from pathlib import Path

import pytest

from sam2_service.daemon.config import settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


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
