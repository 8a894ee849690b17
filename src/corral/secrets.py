"""Keys and passwords out of every text corral keeps or prints.

Two kinds of secret reach error texts, logs, manifests and journals:

* an API key that a server quotes back (some proxies echo the key they refused, sometimes with its
  end hidden: ``sk-abc...xyz****``). `mask_key` hides any run of ``KEY_RUN`` or more characters
  of the key, not only the whole key, so a quoted prefix or suffix is hidden too;
* credentials written into a URL: ``http://alice:PASSWORD@host`` and ``?api_key=...`` (or
  ``token=``, ``password=``...). `redact_url` hides both, in any text that holds a URL.

Mask first, cut afterwards: a text cut before masking may end inside the key, and the cut-off part
no longer matches it.
"""

from __future__ import annotations

import re

__all__ = ["KEY_RUN", "REDACTED", "mask_key", "redact", "redact_url"]

REDACTED = "***"
#: The shortest run of a key's characters that is hidden wherever it appears.
KEY_RUN = 8

_URL_USERINFO = re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/@\s\"'<>]+@", re.I)
_URL_SECRET_PARAM = re.compile(
    r"([?&;](?:[\w.-]*[-_])?(?:api[-_]?key|key|token|secret|password|passwd|pass|auth|"
    r"access[-_]?token|signature|sig)=)[^&#\s\"'<>]*", re.I)


def mask_key(text: str, key: str | None) -> str:
    """``text`` with the key, and every run of at least `KEY_RUN` of its characters, as ``***``.

    A key shorter than `KEY_RUN` is masked whole only (shorter runs would hide ordinary words)."""
    if not key or not text:
        return text
    if len(key) <= KEY_RUN:
        return text.replace(key, REDACTED)
    windows = {key[i:i + KEY_RUN] for i in range(len(key) - KEY_RUN + 1)}
    hidden = bytearray(len(text))
    found = False
    for i in range(len(text) - KEY_RUN + 1):
        if text[i:i + KEY_RUN] in windows:
            hidden[i:i + KEY_RUN] = b"\x01" * KEY_RUN
            found = True
    if not found:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if hidden[i]:
            while i < len(text) and hidden[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def redact_url(text: str) -> str:
    """``http://user:pass@host/?api_key=K`` -> ``http://***@host/?api_key=***``, in any text."""
    if "@" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    if "=" in text:
        text = _URL_SECRET_PARAM.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return text


def redact(text: str, key: str | None = None) -> str:
    """Both: the key's runs masked, then URL credentials."""
    return redact_url(mask_key(text, key))
