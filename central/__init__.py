"""The central role of the EPIC testbed."""
