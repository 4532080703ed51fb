"""The web page (``GET /``, ``GET /estimates/{id}``) and the offline API docs (``/docs``,
``/redoc``), served by the app itself from files in this package: no CDN, no build step.

``install(app)`` adds the routes (left out of the OpenAPI schema) and mounts the static files:
``/static/...`` (this package's ``static/``: the page's HTML, CSS and JavaScript module) and
``/static/docs/...`` (Swagger UI and ReDoc, as shipped by the ``fastapi-offline`` package).
"""

from service.web.routes import install

__all__ = ["install"]
