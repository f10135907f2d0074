from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from tests.harness import require_tool


@pytest.fixture(scope="session")
def schema(tmp_path_factory) -> etree.RelaxNG:
    """The PS3.15 A.5.1 audit message schema kept in the tests (RELAX NG Compact), converted
    by trang and loaded by lxml."""
    trang = require_tool("trang", "trang")
    rng = tmp_path_factory.mktemp("schema") / "audit-message.rng"
    subprocess.run([trang, "-I", "rnc", "-O", "rng", str(Path(__file__).with_name("audit-message.rnc")), str(rng)],
                   check=True)
    return etree.RelaxNG(etree.parse(str(rng)))
