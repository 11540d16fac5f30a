"""``rehearse`` can fail (issue 16, item 6): a wrong mapping kept by --trust-mapping, an upload
missing when the changes are extracted, or one gone or altered after the rollback → FAIL with the
reason; the clean sample world → PASS (tests/test_check.py)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from recovery.sample import app_dir

from tests.clirun import invoke

APP_INI = app_dir() / "alembic.ini"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command, in this process (:mod:`tests.clirun`)."""
    return invoke(*args)


def backup_of(world: Path) -> Path:
    return next(world.glob("gestima.db.bak.*"))


def post_deploy_uploads(world: Path) -> list[str]:
    """Paths of the file records made after the deploy (the ones the bundle must carry)."""
    backup = backup_of(world)
    with sqlite3.connect(f"file:{backup}?mode=ro", uri=True) as b:
        before = {r[0] for r in b.execute("SELECT path FROM file_records")}
    b.close()
    with sqlite3.connect(f"file:{world / 'gestima.db'}?mode=ro", uri=True) as n:
        now = [r[0] for r in n.execute("SELECT path FROM file_records ORDER BY id")]
    n.close()
    return [p for p in now if p not in before]


def test_rehearse_fails_on_a_wrong_mapping_kept_by_trust_mapping(
    world_copy: Path, tmp_path: Path
) -> None:
    mp = tmp_path / "map.toml"
    mp.write_text('[tables.parts.columns]\nprice = "price_cents / 10.0"\n')
    res = cli(
        "rehearse",
        world_copy / "gestima.db",
        "--backup",
        backup_of(world_copy),
        "--mapping",
        mp,
        "--trust-mapping",
        "--out",
        tmp_path / "r",
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Rollback test: FAIL" in res.stdout
    data = json.loads((tmp_path / "r" / "rehearsal.json").read_text())
    assert data["result"] == "FAIL"
    assert any(
        r.startswith("parts.price = ")
        and "disagrees with the backup" in r
        and "--trust-mapping" in r
        for r in data["reasons"]
    ), data["reasons"]


def test_rehearse_fails_on_an_upload_missing_before_the_rollback(
    world_copy: Path, tmp_path: Path
) -> None:
    paths = post_deploy_uploads(world_copy)
    assert paths
    (world_copy / "uploads" / paths[0]).unlink()
    res = cli(
        "rehearse",
        world_copy / "gestima.db",
        "--backup",
        backup_of(world_copy),
        "--alembic-ini",
        APP_INI,
        "--uploads",
        world_copy / "uploads",
        "--out",
        tmp_path / "r",
    )
    assert res.returncode == 1, res.stdout + res.stderr
    data = json.loads((tmp_path / "r" / "rehearsal.json").read_text())
    assert data["result"] == "FAIL" and data["checks"]["uploads"]["problems"] == 1
    assert any(
        "upload(s) the rollback should carry" in r and paths[0] in r for r in data["reasons"]
    ), data["reasons"]


@pytest.mark.parametrize("damage", ["delete", "alter"])
def test_rehearse_fails_when_a_relinked_upload_is_gone_or_altered(
    world_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    import recovery.pipeline as pipeline
    from recovery.verify.rehearse import rehearse

    paths = post_deploy_uploads(world_copy)
    real = pipeline.rollback

    def sabotaged(db, backup, run_dir, **kwargs):
        res = real(db, backup, run_dir, **kwargs)
        target = Path(kwargs["uploads"]) / paths[0]
        target.unlink() if damage == "delete" else target.write_bytes(b"not the drawing")
        return res

    monkeypatch.setattr(pipeline, "rollback", sabotaged)
    result = rehearse(
        world_copy / "gestima.db",
        backup_of(world_copy),
        APP_INI,
        tmp_path / "run",
        world_copy / "uploads",
    )
    assert not result.passed and result.checks["uploads"]["problems"] == 1
    why = (
        "not in the uploads folder after the rollback"
        if damage == "delete"
        else "its content differs"
    )
    assert any(why in r and paths[0] in r for r in result.reasons), result.reasons
