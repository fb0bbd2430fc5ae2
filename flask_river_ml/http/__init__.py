"""The HTTP API: the blueprint's views, the schemas of their payloads, and who may call them."""
