"""Beside the core: one file per production concern, each named in its first line and reached
from the core by a one-line hook (docs/helper.md maps them). A lesson imports one directly only
when that concern is the lesson (claim-check: blobs.py); the tools may."""
