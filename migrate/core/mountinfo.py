"""/proc/*/mountinfo, parsed: the product reads it to tell a tmpfs from a disk, the lab to find
its own mounts (one parser, so both agree on the octal escapes the kernel writes)."""

from __future__ import annotations

import re

_OCTAL = re.compile(r"\\([0-7]{3})")


def parse_mountinfo(text: str) -> list[str]:
    """Mount points from /proc/*/mountinfo text, octal escapes decoded, in mount order."""
    points = []
    for ln in text.splitlines():
        fields = ln.split()
        if len(fields) >= 5:
            points.append(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def parse_mountinfo_entries(text: str) -> list[tuple[str, str, str]]:
    """(mount point, root, fs type) of each line of /proc/*/mountinfo text."""
    out = []
    for ln in text.splitlines():
        left, sep, right = ln.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        out.append((point, fields[3], right.split()[0]))
    return out
