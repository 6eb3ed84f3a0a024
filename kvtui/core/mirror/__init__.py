"""The mirror: an OpenAI-compatible API in front of the sides, for real coding agents (``kvtui mirror``).

An agent's request goes to the primary side (the profile's first), whose answer goes back to the agent
byte for byte; the same request goes to every other side, and the conversation engine runs and records
each side's turn. ``http`` reads and writes HTTP/1.1 on asyncio streams (stdlib only), ``guard`` holds the
security defaults (loopback, API key), ``api`` checks the agent's requests, ``server`` ties them to turns.
"""
