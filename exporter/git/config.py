"""The ``git_mirrors`` and ``git_mirrors_dir`` blocks: local bare repositories to compare with their remotes."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Self
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from exporter.secret_files import UserPassword
from exporter.strict import StrictModel
from exporter.urls import check_base_url

DEFAULT_REFS = ["refs/heads/*", "refs/tags/*"]
# Bitbucket's pull-request refs sync only periodically to mirrors: never counted.
DEFAULT_EXCLUDE = ["refs/pull-requests/*"]


def check_remote(url: str) -> str:
    """A git remote the exporter may show in labels and logs: no credentials in it."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https", "ssh", "git", "file"):
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain credentials; use username and password_file")
        return url
    if "@" in url.split(":", 1)[0] and ":" in url:  # scp-like ssh: user@host:path carries no password
        return url
    if url.startswith("/"):
        return url
    raise ValueError("must be an http(s)://, ssh://, git://, file:// URL, user@host:path or an absolute path")


class GitCredentials(UserPassword):
    """For an http(s) remote: a username with a password or password_file; the password reaches git through an
    askpass helper and the environment, never its command line."""

    @model_validator(mode="after")
    def _username_with_password(self) -> Self:
        if self.password_given() and self.username is None:
            raise ValueError("password: a password needs a username")
        return self


class _GitCommon(GitCredentials):
    remote: str | None = None
    refs: list[str] = Field(default_factory=lambda: list(DEFAULT_REFS), min_length=1)
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    interval_seconds: float = Field(default=60.0, gt=0, le=86400)
    timeout_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("remote")
    @classmethod
    def _remote(cls, remote: str | None) -> str | None:
        return None if remote is None else check_remote(remote)

    @field_validator("refs", "exclude")
    @classmethod
    def _globs(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            if not glob.startswith("refs/"):
                raise ValueError(f"{glob!r}: a ref glob starts with refs/")
        return globs

    def counted(self, ref: str) -> bool:
        return any(fnmatch.fnmatchcase(ref, g) for g in self.refs) and not any(
            fnmatch.fnmatchcase(ref, g) for g in self.exclude
        )


class GitMirrorConfig(_GitCommon):
    name: str = Field(min_length=1, max_length=128)
    # A bare repository, mounted read-only: never written, never locked.
    path: Path

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        if not path.is_absolute():
            raise ValueError("must be an absolute path")
        return path


class GitMirrorsDirConfig(_GitCommon):
    """Every bare repository a glob finds (``/mirrors/*.git``), named by its directory name without ``.git``;
    ``remote`` unset: each repository's own ``remote.origin.url``."""

    glob: str

    @field_validator("glob")
    @classmethod
    def _glob(cls, glob: str) -> str:
        if not glob.startswith("/"):
            raise ValueError("must be an absolute glob, like /mirrors/*.git")
        return glob

    @model_validator(mode="after")
    def _no_shared_remote(self) -> Self:
        if self.remote is not None:
            raise ValueError("remote: each repository under the glob has its own (remote.origin.url)")
        return self

    def found(self) -> list[GitMirrorConfig]:
        """The repositories the glob finds now (a directory with HEAD and objects/), each with this block's settings."""
        root = Path("/")
        mirrors = []
        for path in sorted(root.glob(self.glob.lstrip("/"))):
            if (path / "HEAD").is_file() and (path / "objects").is_dir():
                settings = self.model_dump(exclude={"glob"})
                mirrors.append(GitMirrorConfig(name=path.name.removesuffix(".git"), path=path, **settings))
        return mirrors


class RefsVerification(StrictModel):
    """A Bitbucket mirror's ``verify_refs`` keys (the composition root's ``MirrorConfig`` includes them)."""

    # Repositories (KEY/slug) whose refs `git ls-remote` compares on the primary and this mirror: which branch and
    # which commit differ, where content hashes only say that something does.
    verify_refs: list[str] = Field(default_factory=list, max_length=50)
    # Where git clones a repository over HTTP; {base} is the primary's or the mirror's URL.
    clone_url_template: str = "{base}/scm/{project}/{slug}.git"

    @field_validator("verify_refs")
    @classmethod
    def _repositories(cls, repositories: list[str]) -> list[str]:
        for repository in repositories:
            project, _, slug = repository.partition("/")
            if not project or not slug or "/" in slug:
                raise ValueError(f"{repository!r}: give each as PROJECTKEY/slug")
        return repositories

    @field_validator("clone_url_template")
    @classmethod
    def _clone_template(cls, template: str) -> str:
        try:
            url = template.format(base="https://mirror.example", project="PRJ", slug="repo")
        except (KeyError, IndexError, ValueError):
            raise ValueError("may use only the placeholders {base}, {project}, {slug}") from None
        check_base_url(url)
        return template
