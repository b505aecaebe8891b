"""The README's configuration table stays in step with the settings."""

from pathlib import Path

from controlplane_resolver.config import OPTIONS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_with_its_flag():
    missing = [
        opt.env for opt in OPTIONS if f"`{opt.env}`" not in README or f"`{opt.flag}`" not in README
    ]
    assert not missing, f"README.md's configuration table lacks {missing}"
