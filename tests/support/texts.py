"""Texts the in-process service tests send (tests/service/)."""
from __future__ import annotations

SHORT = "the market rallied"
TEXTS = [
    SHORT,
    "the striker scored twice and the team won the match",
    "software update fixes a security bug in the browser and the new phone has a faster chip " * 3,
    "",
    "unknownword zzz",
    "investors expect the central bank to raise rates",
]
