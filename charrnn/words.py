"""Counts in messages: "1 character", "3,748 characters"."""


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"
