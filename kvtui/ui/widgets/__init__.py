"""Widgets, one per screen area."""
