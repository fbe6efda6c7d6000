"""Every playbook passes `ansible-playbook --syntax-check` and ansible-lint (production
profile); the lab inventory that `migrate lab inventory` prints is what Ansible parses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.lab.config import LabConfig, ansible_inventory

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = sorted(
    p for p in (ROOT / "playbooks").glob("*.yml") if not p.name.startswith("inventory")
)
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    # ansible-lint looks for ansible-playbook on PATH; keep the venv first and colours off.
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        "ANSIBLE_NOCOLOR": "1",
    }


def test_there_are_playbooks() -> None:
    assert {p.name for p in PLAYBOOKS} >= {"prepare.yml", "evacuate.yml", "drill.yml"}


@pytest.mark.parametrize("playbook", PLAYBOOKS, ids=lambda p: p.name)
def test_syntax_check(playbook: Path, tmp_path: Path) -> None:
    p = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "--syntax-check", str(playbook)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_ansible_lint(tmp_path: Path) -> None:
    p = subprocess.run(
        [
            str(BIN / "ansible-lint"),
            "--offline",
            "--nocolor",
            "--profile",
            "production",
            *map(str, PLAYBOOKS),
            str(ROOT / "playbooks" / "roles" / "migrate"),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_example_inventory_parses(tmp_path: Path) -> None:
    p = subprocess.run(
        [
            str(BIN / "ansible-inventory"),
            "-i",
            str(ROOT / "playbooks" / "inventory.example.yml"),
            "--list",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["migrate_hosts"]["hosts"] == ["node1", "node2", "standby1"]


def test_lab_inventory_parses(tmp_path: Path) -> None:
    cfg = LabConfig(
        name="minv", subnet="10.213.99.0/24", state_dir=tmp_path / "s", run_dir=tmp_path / "r"
    )
    inv = tmp_path / "inventory.yml"
    inv.write_text(ansible_inventory(cfg))
    p = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(inv), "--list"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    data = json.loads(p.stdout)
    assert data["migrate_hosts"]["hosts"] == ["a", "b"]
    meta = data["_meta"]["hostvars"]
    assert meta["a"]["ansible_host"] == "10.213.99.1"
    assert meta["b"]["ansible_host"] == "10.213.99.2"
    assert meta["a"]["migrate_copy_source"] is False
    # The lab hosts install from this checkout: prepare.yml runs its scripts/setup.sh.
    assert (Path(meta["a"]["migrate_source"]) / "scripts" / "setup.sh").is_file()
    assert meta["b"]["migrate_known_hosts"] == str(cfg.known_hosts)
