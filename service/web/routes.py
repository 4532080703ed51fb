"""Routes of the web page and of the offline API docs (see the package's docstring)."""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from lipcore import EstimatorConfig

STATIC = Path(__file__).resolve().parent / "static"
#: Swagger UI and ReDoc, from the fastapi-offline package (its static folder, read as files).
DOCS_STATIC = Path(str(resources.files("fastapi_offline") / "static"))

router = APIRouter(include_in_schema=False)

#: Content-Security-Policy of the page: nothing but this origin, no inline script or style.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'self'"
)
#: Of the docs: Swagger UI's page starts it with an inline script, ReDoc styles inline and
#: searches in a blob worker; still nothing from another origin (ReDoc's footer logo, from a
#: CDN, is blocked rather than fetched).
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'self'"
)


@functools.cache
def _page_template() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


def _json_island(value: object) -> str:
    """JSON safe inside a <script type="application/json"> element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e")


def _page(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    auth = getattr(request.app.state, "auth", None)
    boot = {
        "root": root,
        "config_defaults": EstimatorConfig().to_dict(),
        "auth": bool(auth is not None and auth.enabled),  # ask for a key
    }
    html = _page_template().replace("{{root}}", root).replace("{{boot}}", _json_island(boot))
    return HTMLResponse(
        html, headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP}
    )


@router.get("/")
def home(request: Request) -> HTMLResponse:
    """The page: upload two sets, estimate, follow, read the result, browse past estimates."""
    return _page(request)


@router.get("/estimates/{estimate_id}")
def estimate_page(request: Request, estimate_id: str) -> HTMLResponse:
    """The same page, opened on one estimate (the URL to share a result by). An unknown id is
    reported by the page itself, from the API's problem document."""
    return _page(request)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}/static/docs/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/static/docs/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/favicon.svg",
        swagger_ui_parameters={
            "defaultModelsExpandDepth": 1,
            "displayRequestDuration": True,
            "validatorUrl": None,  # no badge from the online validator
        },
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "").rstrip("/")
    page = get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}/static/docs/redoc.standalone.js",
        redoc_favicon_url=f"{root}/static/favicon.svg",
        with_google_fonts=False,
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def install(app: FastAPI) -> None:
    """Adds the page, the docs and their static files to ``app`` (create its FastAPI with
    ``docs_url=None, redoc_url=None``: these replace FastAPI's CDN-loading pages)."""
    app.include_router(router)
    app.mount("/static/docs", StaticFiles(directory=DOCS_STATIC), name="static-docs")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
