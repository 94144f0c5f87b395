"""HTTP only: each blueprint parses, calls the service, shapes the answer."""

from flask import Flask

from proxy.api import chat, completions, health, metrics, models, stainedglass

BLUEPRINTS = (chat.bp, completions.bp, models.bp, health.bp, metrics.bp, stainedglass.bp)


def register(app: Flask) -> None:
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
