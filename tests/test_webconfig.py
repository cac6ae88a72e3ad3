"""Basic auth checks that need no server: odd headers and passwords, and
hashes the web config must refuse."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import pytest

from exporter.webconfig import Authenticator, WebConfig, WebConfigError, load_web_config

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))


def header(user: str, password: bytes, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(user.encode() + b":" + password).decode()


def test_scheme_is_case_insensitive_and_long_passwords_are_refused() -> None:
    config = WebConfig(users={"alice": HASH})
    auth = Authenticator()
    assert auth.allowed(config, header("alice", b"secret", "basic"))
    assert not auth.allowed(config, header("alice", b"x" * 100))  # bcrypt >= 5 raises
    assert not auth.allowed(config, header("mallory", b"secret"))
    assert not auth.allowed(config, "Bearer abc")


@pytest.mark.parametrize("cost", ["03", "32"])
def test_bcrypt_costs_outside_4_to_31_are_refused(tmp_path: Path, cost: str) -> None:
    bad = "$2b$" + cost + HASH.decode()[6:]
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{bad}'\n")
    with pytest.raises(WebConfigError, match=r"basic_auth_users\.alice: must be a bcrypt hash"):
        load_web_config(str(path))
