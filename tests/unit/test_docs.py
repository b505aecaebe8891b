"""The configuration reference stays in step with the settings, and the
README's links resolve inside the repository."""

import re
from pathlib import Path

from controlplane_resolver.config import OPTIONS

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_documented_with_its_flag():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [
        opt.env
        for opt in OPTIONS
        if f"`{opt.env}`" not in reference or f"`{opt.flag}`" not in reference
    ]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_markdown_links_resolve_inside_the_repository():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # absolute URLs are not links into the repository
            path = (page.parent / target).resolve()
            if not path.exists() or (ROOT not in path.parents and path != ROOT):
                broken.append(f"{page.relative_to(ROOT)} → {target}")
    assert not broken, broken
