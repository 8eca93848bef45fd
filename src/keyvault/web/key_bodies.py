"""What a key operation reads from its request besides the token: the sub's rules, and a PUT's
body as ApiKeyWrite and its `validate` query parameter. Their refusals name the field and the
rule, worded as for any route's validation error (web.problems), never the value.

A body is JSON when its Content-Type is `application/json` or `application/*+json`; it is read as
UTF-8 JSON only (web.json_body). Any other body, or none, is refused by the model like any input
that is not an object.
"""

from __future__ import annotations

import email.message
import urllib.parse
from typing import Annotated, Any, Final

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError
from starlette.types import Receive, Scope

from keyvault.auth.subjects import SUB_MAX_LENGTH, sub_problem
from keyvault.errors import InvalidRequest, Problem
from keyvault.keys.schemas import ApiKeyWrite
from keyvault.web.json_body import read_json
from keyvault.web.problems import validation_reasons


class BodyCutOff(Problem):
    """The client went away before its body ended."""

    status, slug, title = 400, "http-400", "Error"

    def __init__(self) -> None:
        super().__init__("There was an error parsing the body")


def _acceptable_sub(value: str) -> str:
    problem = sub_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# The sub's rules as the documented path parameter states them (auth.tokens.SubjectPath), for
# the wording of a refusal; a sub that passes sub_problem never gets here.
_SUB_RULES: Final = TypeAdapter(
    Annotated[str, Field(min_length=1, max_length=SUB_MAX_LENGTH), AfterValidator(_acceptable_sub)]
)
_MISSING: Final = object()
# A query flag as FastAPI reads a `bool` parameter (true/false, 1/0, yes/no, on/off, …).
_FLAG: Final = TypeAdapter(bool)


def sub_reasons(sub: str, where: tuple[str, ...] = ("path", "sub")) -> list[str]:
    """Why `sub` (at `where` in the request) is refused, one reason per broken rule."""
    try:
        _SUB_RULES.validate_python(sub)
    except ValidationError as error:
        return validation_reasons(error.errors(), where)
    return []


def validate_flag(scope: Scope) -> tuple[bool, list[str]]:
    """A PUT's `?validate=`: whether to ask the provider first, and why the value is refused."""
    query = scope.get("query_string", b"")
    if b"validate" not in query:
        return False, []
    values = [
        value
        for name, value in urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if name == "validate"
    ]
    if not values:
        return False, []
    try:
        return _FLAG.validate_python(values[-1]), []
    except ValidationError as error:
        return False, validation_reasons(error.errors(), ("query", "validate"))


async def read_key_write(scope: Scope, receive: Receive) -> ApiKeyWrite:
    """The PUT's body as ApiKeyWrite; InvalidRequest naming every broken rule otherwise."""
    body = await read_body(receive)
    try:
        return _validated(scope, body)
    except ValidationError as error:
        raise InvalidRequest("; ".join(validation_reasons(error.errors(), ()))) from None


async def body_reasons(scope: Scope, receive: Receive) -> list[str]:
    """Why the PUT's body is refused (empty when it is acceptable)."""
    try:
        _validated(scope, await read_body(receive))
    except ValidationError as error:
        return validation_reasons(error.errors(), ())
    return []


async def read_body(receive: Receive) -> bytes:
    """The whole body (middleware.BodySizeLimit bounds it); BodyCutOff if the client went away."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise BodyCutOff()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _validated(scope: Scope, body: bytes) -> ApiKeyWrite:
    value: Any = body if body else _MISSING
    if body and _is_json(scope):
        value = read_json(body)
    if value is _MISSING:
        # No body at all is a missing one, as for any required field.
        raise ValidationError.from_exception_data(
            "ApiKeyWrite", [{"type": "missing", "loc": (), "input": None}]
        )
    # from_attributes: the model refuses a body that is not an object as any route's would.
    return ApiKeyWrite.model_validate(value, from_attributes=True)


def _is_json(scope: Scope) -> bool:
    content_type = next(
        (value for name, value in scope["headers"] if name == b"content-type"), None
    )
    if content_type is None:
        return False
    if content_type.split(b";", 1)[0].strip().lower() == b"application/json":
        return True
    message = email.message.Message()
    message["content-type"] = content_type.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )
