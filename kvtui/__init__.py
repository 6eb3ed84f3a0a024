"""kvtui: compare llama-server KV-cache types side by side, on your model and hardware."""

__version__ = "0.1.0"
