"""Turns decoded JSON into the tolerant models of models.py, failing with the client's own error."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from exporter.client import INVALID_RESPONSE, FetchError

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, what: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise FetchError(INVALID_RESPONSE, f"{what}: {where}: {first['msg']}") from None


def parse_list(model: type[M], data: Any, what: str) -> list[M]:
    if not isinstance(data, list):
        raise FetchError(INVALID_RESPONSE, f"{what}: expected a JSON array")
    return [parse_model(model, item, what) for item in data]
