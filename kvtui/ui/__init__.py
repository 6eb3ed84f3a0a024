"""The Textual app: a consumer of the core's event stream."""
