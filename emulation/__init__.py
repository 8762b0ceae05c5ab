"""The emulation role of the EPIC testbed."""
