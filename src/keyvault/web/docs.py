"""/docs: Swagger UI served by the service itself, so it works where no CDN can be reached.

FastAPI's default page loads its JavaScript, CSS and favicon from public CDNs; a vault often runs
where the internet is unreachable. The assets come from the `fastapi-offline` package (a pinned
dependency that tracks swagger-ui releases) and are served under /docs/static.
"""

from __future__ import annotations

import os
from importlib.resources import files
from os import PathLike
from pathlib import Path
from typing import Final

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

DOCS_PATH: Final = "/docs"
STATIC_PATH: Final = "/docs/static"
ASSETS_DIRECTORY: Final = Path(str(files("fastapi_offline") / "static"))
# Swagger UI's assets change only with the package: let browsers keep them for a day.
ASSET_CACHE_CONTROL: Final = "public, max-age=86400"

SWAGGER_UI_PARAMETERS: Final = {
    # No online validator badge (it would call validator.swagger.io from the browser).
    "validatorUrl": None,
    # Tokens stay in the page's memory, never in the browser's localStorage.
    "persistAuthorization": False,
    "displayRequestDuration": True,
}


class _DocsAssets(StaticFiles):
    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = ASSET_CACHE_CONTROL
        return response


def install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs from local assets. The app must be built with docs_url=None."""
    app.mount(STATIC_PATH, _DocsAssets(directory=ASSETS_DIRECTORY), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - API documentation",
            swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
