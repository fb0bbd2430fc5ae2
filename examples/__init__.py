"""Examples of flask-river-ml: an example server (``examples.app``) and riverapi scripts.

This is a package so that gunicorn can import ``examples.app:app`` from the repository root,
and so that the server can unpickle the custom model of ``examples.custom.model``.
"""
