"""The devices role of the EPIC testbed."""
