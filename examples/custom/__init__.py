"""A custom river model (``examples.custom.model``) and the script that serves it."""
