"""`corral run|analyze|fill --reproduce MANIFEST`: the same job again, and what changed since.

A reviewer's question is "would I get the same answers?". The job is rebuilt from the manifest (the
input file, the prompt defaults, the options, the servers and engine settings), run into a fresh
output and store so every request is really sent again, and then compared with the original: any
model whose digest changed, an input file that is not the one hashed then, and how many answers are
byte-identical to the original ones (same request key, same text).
"""

from __future__ import annotations

import shlex
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .manifest import digest_changes, file_facts, load_manifest


@dataclass
class Reproduction:
    """The original run, where its files are now, and what to compare once the re-run is done."""

    manifest_path: Path
    manifest: dict[str, Any]
    input_path: Path
    warnings: list[str] = field(default_factory=list)

    @property
    def job(self) -> dict[str, Any]:
        return self.manifest.get("job") or {}

    @property
    def engine(self) -> dict[str, Any]:
        return self.manifest.get("engine") or {}

    def default_output(self) -> str:
        """``out.jsonl`` -> ``out.reproduced.jsonl``, beside the manifest (which is beside the output)."""
        original = (self.manifest.get("output") or {}).get("path")
        if not original:
            raise UsageError("the manifest's run wrote no output file: give -o for the re-run")
        name = Path(original)
        return str(self.manifest_path.parent / f"{name.stem}.reproduced{name.suffix}")

    def original_store(self) -> Path | None:
        store = (self.manifest.get("output") or {}).get("store")
        if not store or store == ":memory:":
            return None
        path = self.locate(store)
        return path if path.is_file() else None

    def locate(self, recorded: str) -> Path:
        """A recorded relative path is tried from here, then from the manifest's folder."""
        path = Path(recorded)
        if path.is_absolute() or path.exists():
            return path
        beside = self.manifest_path.parent / path
        return beside if beside.exists() else path


#: Which command re-runs a manifest of each kind (the Python fronts' kinds read DataFrames: no file).
REPRODUCED_BY = {"run": "run", "analyze": "analyze", "fill": "fill"}


def command_line(manifest: dict[str, Any]) -> str:
    """The recorded command line as one shell-quoted string a reader can paste."""
    return shlex.join(manifest.get("command") or []) or "(not recorded)"


def prepare(manifest_path: str, kind: str = "run") -> Reproduction:
    """Read the manifest, find its input, and check the input is still the file that was hashed."""
    manifest = load_manifest(manifest_path)
    found = manifest.get("kind")
    if found != kind:
        how = (f"reproduce it with `corral {REPRODUCED_BY[found]} --reproduce {shlex.quote(manifest_path)}`"
               if found in REPRODUCED_BY else "--reproduce re-runs the jobs of corral run, analyze and fill")
        raise UsageError(f"{manifest_path}: the manifest of a {found!r} job, not {kind!r}; {how}. "
                         f"Its command line was: {command_line(manifest)}")
    recorded = (manifest.get("input") or {}).get("path")
    if not recorded:
        raise UsageError(f"{manifest_path}: the manifest names no input file")
    repro = Reproduction(Path(manifest_path), manifest, Path(recorded))
    repro.input_path = repro.locate(recorded)
    if not repro.input_path.is_file():
        raise UsageError(f"{manifest_path}: the input file {recorded} is not here any more")
    then = (manifest.get("input") or {}).get("sha256")
    now = file_facts(repro.input_path, None)["sha256"]
    if then and now != then:
        repro.warnings.append(f"the input file {repro.input_path} has changed since the original run "
                              f"(sha256 {then[:12]} then, {now[:12]} now)")
    return repro


@dataclass
class Comparison:
    """The re-run against the original: digests, and answers request by request."""

    digest_changes: list[str]
    identical: int = 0
    different: int = 0
    unmatched: int = 0          # requests of the re-run the original store does not have
    examples: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = list(self.digest_changes)
        compared = self.identical + self.different
        if compared:
            out.append(f"{self.identical} of {compared} responses identical to the original run"
                       + (f"; {self.different} differ" if self.different else ""))
        if self.unmatched:
            out.append(f"{self.unmatched} request(s) not in the original store (not compared)")
        out.extend(self.examples)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"digest_changes": self.digest_changes, "identical": self.identical,
                "different": self.different, "unmatched": self.unmatched}


def compare(repro: Reproduction, new_manifest: dict[str, Any], new_store: str) -> Comparison:
    result = Comparison(digest_changes=digest_changes(repro.manifest, new_manifest))
    old_store = repro.original_store()
    if old_store is None:
        return result
    new = _responses(new_store)
    old = _responses(str(old_store), keys=list(new))
    for key, text in new.items():
        if key not in old:
            result.unmatched += 1
        elif old[key] == text:
            result.identical += 1
        else:
            result.different += 1
            if len(result.examples) < 3:
                result.examples.append(f"  differs: {_short(old[key])!r} then, {_short(text)!r} now")
    return result


def _responses(path: str, keys: list[str] | None = None) -> dict[str, str | None]:
    """key -> response text of the successful rows (of ``keys`` only, when given)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        if keys is None:
            rows = db.execute("SELECT key, response FROM results WHERE status = 'ok'").fetchall()
        else:
            rows = []
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ", ".join("?" for _ in chunk)
                rows += db.execute(f"SELECT key, response FROM results WHERE status = 'ok' AND key IN "
                                   f"({marks})", chunk).fetchall()
    finally:
        db.close()
    return dict(rows)


def _short(text: str | None, limit: int = 60) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + "..."


def record_reproduction(manifest_file: str | Path, reproduces: str, comparison: Comparison) -> None:
    """Add the comparison to a finished run's manifest, in its file and in its store (for `corral
    report`), as `corral run --reproduce` does while its run is open."""
    from .manifest import write_manifest
    from .store import Store

    path = Path(manifest_file)
    data = load_manifest(path)
    data["job"] = {**(data.get("job") or {}), "reproduces": reproduces}
    data["reproduction"] = {"manifest": reproduces, **comparison.as_dict()}
    write_manifest(path, data)
    store, run_id = (data.get("output") or {}).get("store"), data.get("run_id")
    if store and store != ":memory:" and run_id is not None and Path(store).is_file():
        with Store(store) as journal:
            journal.save_manifest(data, run_id)
