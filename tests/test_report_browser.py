"""The audit's HTML report, opened from the file system by a real browser (headless Chromium).

Skips with the reason where Chromium or ../shared is absent (`make install` installs Chromium
where apt is available).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from anonymize.audit import AuditConfig, run_audit
from anonymize.run import run, run_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
CELEBA = SHARED / "data" / "celeba-ids"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
BROWSER_TIMEOUT_S = 90


def chromium() -> str:
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    pytest.skip("Chromium is not installed (apt-get install chromium, or `make install` where apt is available)")


def browser(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1280,2000", *extra, page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An audit that fails: two CelebA identities blurred, except one photo released as it was."""
    chromium()  # skips early, before any audit work, where there is no browser
    if not CELEBA.is_dir():
        pytest.skip(f"{CELEBA} is absent: the report test audits real CelebA photos")
    root = tmp_path_factory.mktemp("report")
    originals = root / "originals"
    for identity in ("0", "1"):
        (originals / identity).mkdir(parents=True)
        for photo in sorted((CELEBA / identity).glob("*.jpg"))[:2]:
            shutil.copy(photo, originals / identity / photo.name)
    released = root / "released"
    run(run_config(originals, released, method="blur", aligned=True, device="cpu", weights_dir=root / "weights"))
    leaked = sorted((originals / "1").glob("*.jpg"))[0]
    shutil.copy(leaked, released / "1" / leaked.name)
    result = run_audit(AuditConfig(originals, released, detector="dlib-hog", weights_dir=root / "weights",
                                   device="cpu", report_dir=root / "report"))
    assert not result.passed and result.report_path == root / "report" / "index.html"
    return result.report_path


def test_the_report_is_self_contained_static_html(report):
    page = report.read_text(encoding="utf-8")
    assert "<script" not in page
    assert not re.search(r'(src|href)\s*=\s*"(https?:|//)', page) and "url(" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all((report.parent / src).is_file() for src in images)
    assert all(src.startswith("audit-thumbs/") for src in images)


def test_headless_chromium_renders_the_report_with_its_figures(report, tmp_path):
    shot = tmp_path / "shot.png"
    rendered = browser(report, tmp_path / "profile", f"--screenshot={shot}")
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert shot.is_file()
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").resize((320, 500)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 200, "the screenshot is (nearly) blank"

    dom = browser(report, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "Anonymization audit" in text and "FAIL" in text and "<svg" in text
    assert "re-identification rate 25.0% &gt; max 5.0%" in text
    assert 'id="identity-check"' in text and "Missed faces" in text
    assert "1/" in text and "missed</span>" in text
