"""The REST API: :func:`callannotate.api.app.create_app` builds the FastAPI application."""
