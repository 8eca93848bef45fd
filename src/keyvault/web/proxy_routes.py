"""The provider proxy as documented: what /openapi.json and the docs page say of
`/proxy/{provider}/{path}`, one operation per method it forwards.

These declarations are never mounted: web.proxy_endpoint serves every method on the path (HEAD and
OPTIONS too, which are not listed). tests/web/test_proxy_documented.py checks that each response
documented here is one the endpoint gives.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Header, Path
from fastapi.routing import APIRoute

from keyvault.web.dependencies import Caller
from keyvault.web.key_routes import problems

PROXY_ROUTE: Final = "/proxy/{provider}/{path}"
METHODS: Final = ("GET", "POST", "PUT", "PATCH", "DELETE")

ProxiedProvider = Annotated[
    str,
    Path(
        description="A configured provider: `openai`, `anthropic`, or one named in"
        " KEYVAULT_PROVIDERS_FILE. Any other name is 404 `unknown-provider`."
    ),
]
ProxiedPath = Annotated[
    str,
    Path(
        description="The provider's path under its base URL, sent on with the query string:"
        " openai's `chat/completions`, `embeddings`, …; anthropic's `v1/messages`, …. Only the"
        " paths the provider allows are forwarded (the providers file lists them); any other, a"
        " `.` or `..` segment or an encoded slash is 404 `path-not-proxied`, with nothing sent.",
    ),
]
NamedUser = Annotated[
    str | None,
    Header(
        alias="X-Keyvault-User",
        description="Whose key: the user's `sub`, percent-encoded as in a path. Needs `users:any`"
        " unless it is the token's own sub; absent, the token's own user.",
    ),
]
KeyHeaderToken = Annotated[
    str | None,
    Header(
        alias="x-api-key",
        description="keyvault's token where the provider's SDK sends its key (anthropic's"
        " `x-api-key`, or a configured provider's key header), when there is no"
        " `Authorization: Bearer`.",
    ),
]

_SUCCESS: Final = {
    "description": "The provider's answer: its status, its headers (less hop-by-hop ones and"
    " `Set-Cookie`) and its body, streamed as it arrives (server-sent events included), with the"
    " user's key replaced by `[redacted by keyvault]` wherever the provider echoed it.",
    "content": {"*/*": {"schema": {}}},
}
_BODY: Final = {
    "requestBody": {
        "description": "The provider's request body, streamed on as it arrives (at most"
        " KEYVAULT_PROXY_MAX_BODY_BYTES).",
        "required": False,
        "content": {"application/json": {"schema": {}}, "multipart/form-data": {"schema": {}}},
    }
}
_RESPONSES: Final = {
    "200": _SUCCESS,
    **problems(
        401,
        403,
        404,
        413,
        422,
        429,
        500,
        502,
        503,
        504,
        _401="No keyvault token (in `Authorization: Bearer` or the provider's key header), or an"
        " invalid one.",
        _403="The token lacks `api-key:use`, or names another user without `users:any`.",
        _404="No provider of that name (`unknown-provider`), a path the provider does not allow"
        " (`path-not-proxied`), or the user has no key for it (`not-found`) or it expired"
        " (`key-expired`). Nothing was sent to the provider.",
        _413="The request body is larger than KEYVAULT_PROXY_MAX_BODY_BYTES (declared, or once"
        " streamed that far; the provider call is then abandoned).",
        _422="`X-Keyvault-User` is not a valid sub (the detail names the rule, never the value),"
        " or the user's key holds characters no HTTP header can carry. Nothing was sent.",
        _502="The provider could not be reached, or broke off before its answer began.",
        _504="The provider did not connect or send its next bytes within KEYVAULT_PROXY_TIMEOUT.",
    ),
}

router = APIRouter()


async def call_provider(
    provider: ProxiedProvider,
    path: ProxiedPath,
    caller: Caller,
    x_keyvault_user: NamedUser = None,
    x_api_key: KeyHeaderToken = None,
) -> Any:
    raise NotImplementedError  # served by web.proxy_endpoint


for _method in METHODS:
    router.add_api_route(
        "/proxy/{provider}/{path:path}",
        call_provider,
        methods=[_method],
        name=f"proxy_{_method.lower()}",
        summary=f"{_method} through the provider proxy, with the user's key (never revealed)",
        description="Forwards the call to `{provider base URL}/{path}` with the user's own key"
        " (scope `api-key:use`), and streams the answer back. Point the provider's SDK here:"
        " `base_url=…/proxy/openai`, with keyvault's token as its API key.",
        tags=["proxy"],
        responses=_RESPONSES,
        openapi_extra=_BODY if _method in ("POST", "PUT", "PATCH") else None,
        response_model=None,
    )


# The route a served request is named by (its `path_format`), in logs and metrics.
def _served_as() -> APIRoute:
    route = router.routes[0]
    assert isinstance(route, APIRoute)
    assert route.path_format == PROXY_ROUTE
    return route


SERVED_AS: Final = _served_as()
