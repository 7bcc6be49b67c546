"""The optional web config (``--web.config.file``), in the spirit of Prometheus' exporter-toolkit: serve over TLS
and ask for HTTP basic auth on every page except the health endpoints.

    tls_server_config:
      cert_file: /etc/exporter/tls.crt
      key_file: /etc/exporter/tls.key
      client_ca_file: /etc/exporter/ca.crt        # optional, with client_auth_type: RequireAndVerifyClientCert
    basic_auth_users:
      prometheus: $2b$12$...                        # a bcrypt hash (htpasswd -nBC 12 "" | tr -d ':\\n')
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from exporter.config import ConfigError, describe_validation_error
from exporter.strict import StrictModel
from exporter.tls import server_context
from exporter.web.auth import MAX_COST, cost_of

FLAG = "--web.config.file"


class _Frozen(StrictModel):
    # Compared on a reload (tls_server_config may not change without a restart).
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsServerConfig(_Frozen):
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    # exporter-toolkit's names for the two policies offered here.
    client_auth_type: str = "NoClientCert"

    @field_validator("client_auth_type")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in ("NoClientCert", "RequireAndVerifyClientCert"):
            raise ValueError("must be NoClientCert or RequireAndVerifyClientCert")
        return value

    @model_validator(mode="after")
    def _loads(self) -> TlsServerConfig:
        requires = self.client_auth_type == "RequireAndVerifyClientCert"
        if requires != (self.client_ca_file is not None):
            # Both or neither: a CA file that verified nobody would be a silent surprise.
            raise ValueError("client_ca_file and client_auth_type RequireAndVerifyClientCert go together")
        self.context()  # a missing file or a key that does not fit fails at start, naming this section
        return self

    def context(self) -> ssl.SSLContext:
        try:
            return server_context(self.cert_file, self.key_file, self.client_ca_file)
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load client_ca_file: {exc.reason or exc.strerror}") from None
        except OSError as exc:
            raise ValueError(f"cannot read client_ca_file: {exc.strerror or type(exc).__name__}") from None


class WebConfig(_Frozen):
    tls_server_config: TlsServerConfig | None = None
    # Username -> bcrypt hash of the password; no users, no authentication.
    basic_auth_users: dict[str, str] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, str]) -> dict[str, str]:
        for user, hashed in users.items():
            if ":" in user or not user:
                raise ValueError(f"user {user!r}: a username may not be empty or contain ':'")
            try:
                cost = cost_of(hashed)
                # Whether bcrypt itself takes it (a malformed salt passes a look at its shape).
                bcrypt.checkpw(b"", hashed.encode())
            except ValueError:
                # Never echo the value: someone may have pasted a password here instead of its hash.
                raise ValueError(f"user {user!r}: not a bcrypt hash ($2a$, $2b$ or $2y$, 60 characters)") from None
            if cost > MAX_COST:
                raise ValueError(
                    f"user {user!r}: bcrypt cost {cost} is above {MAX_COST}: every new client would wait seconds per "
                    "check; hash the password again with a cost of 10 to 12"
                )
        return users


def load_web_config(path: Path) -> WebConfig:
    """Load and validate the web config, raising ConfigError with one line naming the flag and the key."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"{FLAG}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except yaml.YAMLError:
        raise ConfigError(f"{FLAG}: {path} is not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{FLAG}: {path} must hold a mapping of keys, not {type(data).__name__}")
    try:
        return WebConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{FLAG}: {describe_validation_error(exc)}") from None
