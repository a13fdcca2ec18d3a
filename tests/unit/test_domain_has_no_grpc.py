"""The domain layer is testable without gRPC: it imports with gRPC and the
generated messages made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.modules["grpc"] = None
sys.modules["broker.v1"] = None
import broker.domain.leasing
import broker.domain.inventory
banned = ("grpc", "broker.v1", "google.rpc")
loaded = sorted(name for name, module in sys.modules.items() if module is not None)
print("loaded:", [name for name in loaded if name.startswith(banned)])
"""


def test_domain_imports_without_grpc():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded: []"


def test_the_guard_really_blocks_grpc():
    """The same trick makes an import of grpc fail, so the test above can fail."""
    result = subprocess.run(
        [sys.executable, "-c", 'import sys; sys.modules["grpc"] = None; import broker.api.errors'],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr or "ImportError" in result.stderr
