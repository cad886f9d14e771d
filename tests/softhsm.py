"""A real SoftHSM2 token in a temporary directory (softhsm2-util --init-token)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE = next((p for p in ("/usr/lib/softhsm/libsofthsm2.so",
                           "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                           "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")
               if Path(p).exists()), "/usr/lib/softhsm/libsofthsm2.so")
PIN = "4821-test-pin"
SO_PIN = "5678-so-pin"


@dataclass
class Token:
    conf: Path
    label: str
    module: str = MODULE
    pin: str = PIN

    @property
    def env(self) -> dict[str, str]:
        return {"SOFTHSM2_CONF": str(self.conf)}


def init_token(root: Path, label: str = "imm") -> Token:
    if shutil.which("softhsm2-util") is None or not Path(MODULE).exists():
        pytest.fail("softhsm2 is not installed (scripts/test installs it)")
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", label,
                    "--pin", PIN, "--so-pin", SO_PIN], check=True, capture_output=True,
                   env={"SOFTHSM2_CONF": str(conf), "PATH": "/usr/bin:/bin"})
    return Token(conf, label)
