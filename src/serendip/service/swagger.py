"""The interactive API documentation (Swagger UI at ``/docs``), served from this process.

The Swagger UI files come from an installed package (``swagger-ui-bundle-v2``), so ``/docs``
works offline and loads nothing from another origin; the page has no inline script, so it
runs under the service's ``Content-Security-Policy`` of ``'self'`` only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

__all__ = ["add_docs", "swagger_ui_dir", "DOCS_ASSETS"]

#: Where the Swagger UI files are served.
DOCS_ASSETS = "/docs/assets"

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="referrer" content="no-referrer">
  <title>{title} - API documentation</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" href="data:,">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="/docs/init.js"></script>
</body>
</html>
"""

_INIT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "%s",
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  });
});
"""

_MISSING = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} - API documentation</title></head>
<body><p>The Swagger UI package (swagger-ui-bundle-v2) is not installed. The API is described
by <a href="{openapi}">{openapi}</a>.</p></body></html>
"""


def swagger_ui_dir() -> Path | None:
    """The installed Swagger UI files, or None when the package is missing."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(str(swagger_ui_bundle.swagger_ui_path))
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def add_docs(app: FastAPI) -> None:
    """``/docs`` (the page), ``/docs/init.js`` and the assets under ``DOCS_ASSETS``."""
    openapi = app.openapi_url or "/openapi.json"
    assets = swagger_ui_dir()
    if assets is None:
        page = _MISSING.format(title=app.title, openapi=openapi)
    else:
        from fastapi.staticfiles import StaticFiles

        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
        page = _PAGE.format(title=app.title, assets=DOCS_ASSETS)
    init = _INIT % openapi

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs/init.js", include_in_schema=False)
    def docs_init() -> Response:
        return Response(init, media_type="text/javascript; charset=utf-8")
