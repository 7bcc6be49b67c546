"""The ``webhooks`` block: where Bitbucket posts, how it signs, and how much the exporter keeps."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator

from exporter.secret_files import readable_secret_file
from exporter.strict import StrictModel


class WebhooksConfig(StrictModel):
    # Where Bitbucket posts; excluded from the web config's basic auth (Bitbucket signs instead).
    path: str = "/webhooks/bitbucket"
    # The webhook's secret: every request must carry X-Hub-Signature (HMAC-SHA256 of the raw body) made with it.
    secret_file: Path | None = None
    # Without a secret the endpoint is off unless this is true (anyone who reaches it could post events).
    allow_unsigned: bool = False
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # A push no mirror confirms within this long is counted unconfirmed (per mirror) and forgotten.
    pending_timeout_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    # Pushes (and synced commits, and request ids) remembered at most: a flood cannot exhaust memory.
    max_pending: int = Field(default=100_000, ge=100, le=10_000_000)
    # Projects whose exporter webhooks' delivery statistics are read (as `webhooks status` does) and exported;
    # empty: not read.
    statistics_projects: list[str] = Field(default_factory=list)
    statistics_interval_seconds: float = Field(default=300.0, ge=1, le=86400)
    # Requests one reading of the statistics may make per project: a project webhook costs about 8 (its listing, the
    # summary and the latest invocation of each event and outcome); a project of 1,000 repositories without one
    # would cost over 1,000, and Bitbucket's rate limit is a token bucket per user.
    statistics_max_requests: int = Field(default=200, ge=10, le=100_000)

    _secret_readable = field_validator("secret_file")(readable_secret_file)

    @field_validator("path")
    @classmethod
    def _path(cls, path: str) -> str:
        if not path.startswith("/") or path.startswith("/-/") or path in ("/metrics", "/", "/runbooks"):
            raise ValueError("must be an absolute path of its own (not /, /metrics, /runbooks or /-/...)")
        if path.startswith("/api/"):
            raise ValueError("must not be under /api/ (the CI gate's)")
        return path.rstrip("/") or path

    @model_validator(mode="after")
    def _checked(self) -> Self:
        if self.secret_file is not None and self.allow_unsigned:
            raise ValueError("set secret_file or allow_unsigned, not both")
        return self

    @property
    def enabled(self) -> bool:
        return self.secret_file is not None or self.allow_unsigned
