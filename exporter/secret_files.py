"""Passwords given inline or in files (Kubernetes Secret mounts). A file is read on every use, so a rotated secret
applies at once."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator


def read_secret_file(path: Path) -> SecretStr:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        # Only the reason, never the content.
        raise ValueError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not secret:
        # An empty file is a Secret mounted before it was filled in: sending an empty password only earns a 401.
        raise ValueError(f"{path} is empty")
    return SecretStr(secret)


def readable_secret_file(path: Path | None) -> Path | None:
    """A field validator: the file must be readable when the config is loaded, not first at a poll."""
    if path is not None:
        read_secret_file(path)
    return path


class UserPassword(BaseModel):
    """A username with a password or a password_file; subclasses decide which combinations are valid."""

    model_config = ConfigDict(extra="forbid")

    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None

    _password_file_readable = field_validator("password_file")(readable_secret_file)

    def password_given(self) -> bool:
        """For validators: whether a password was given, raising ValueError if it was given both ways."""
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self.password is not None or self.password_file is not None

    def resolved_password(self) -> SecretStr | None:
        if self.password_file is not None:
            return read_secret_file(self.password_file)
        return self.password
