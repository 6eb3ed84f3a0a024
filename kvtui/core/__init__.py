"""The headless core: profiles, servers, streaming, metrics, records. Never imports Textual or rich."""
