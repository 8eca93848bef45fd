"""How the routes under `/users/{sub}/` match a path and read a JSON body.

Their paths spell the sub `{sub:subject}`. Starlette's `{sub:path}` is `.*` in a pattern ending in
`$`: `.` stops at a newline, so a sub holding `%0A` would match no route (an unaudited 404 before
authentication, where any other invalid sub gets 401 or 422), and `$` also matches before a final
newline, so `/users/alice/api-key%0A` would be served as Alice's key. A `subject` takes any
character, and no path ending in a newline.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.convertors import PathConvertor, register_url_convertor

from keyvault.web.json_body import read_json


class SubjectConvertor(PathConvertor):
    regex = r"(?![\s\S]*\n\Z)[\s\S]*"


# Registered on import, before keyvault.api and keyvault.audit_api declare their routes.
register_url_convertor("subject", SubjectConvertor())


class StrictJsonRoute(APIRoute):
    """An APIRoute whose JSON body is read by keyvault.json_body.

    FastAPI reads a JSON body with `request.json()` before it solves any dependency, so a body
    json.loads refuses would be answered there, before authentication (a 422 or, for a body that is
    not UTF-8, an undocumented 400, audited without the caller). Read here it never fails: the
    body's model refuses an UnreadableBody when the dependencies are solved, after authentication.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handler_reading_json_strictly(request: Request) -> Response:
            return await handler(_StrictJsonRequest(request.scope, request.receive))

        return handler_reading_json_strictly


class _StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = read_json(await self.body())
        return self._json
