"""Modal screens: help and a side's server log."""
