"""A git repository holding this working tree as it is (committed or not), for tests that clone it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def snapshot(tmp: Path) -> Path:
    """Commit every tracked and not-ignored file of the working tree into ``tmp/snapshot``."""
    snap = tmp / "snapshot"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, snap / rel)
    git = ["git", "-C", str(snap), "-c", "user.name=test", "-c", "user.email=test@invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + args, check=True, capture_output=True)
    return snap
