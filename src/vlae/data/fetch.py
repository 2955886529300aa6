"""Downloading a dataset's files into the data directory (:func:`download`).

The module is not called ``download``: ``vlae.data.download`` is the function,
and a submodule of the same name would be shadowed by it.
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import VLAEError, one_line, require
from . import catalogue
from .catalogue import DATASETS, EMBEDDED, INFO
from .embedded import mnist_csv, photo_files
from .files import file_digests, resolve_data_dir

__all__ = ["DOWNLOAD_RETRIES", "download"]

#: Retries after a failed download from one URL (pooch waits 1 s, 2 s, ... between tries).
DOWNLOAD_RETRIES = 2


def download(name: str, data_dir: str | os.PathLike | None = None, *, progressbar: bool | None = None) -> list[Path]:
    """Fetch ``name``'s files into ``<data_dir>/<files>/``; return their paths.

    Uses ``pooch``: each file is tried from its canonical URL, then its
    mirrors, each with :data:`DOWNLOAD_RETRIES` retries, checked against its
    known digest, and moved into place only when intact, so a failed or
    interrupted download leaves no partial file. Files already present and
    matching a known digest are kept. ``file://`` URLs are copied (tests,
    local mirrors). ``progressbar``: default when stderr is a terminal.
    Embedded datasets return the packaged files.

    Raises:
        VLAEError: unknown name, or a file that no URL delivered intact (the
            message lists the URLs tried and why each failed).
    """
    require(name in DATASETS, f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name in EMBEDDED:
        return photo_files() if INFO[name].files == "photos-embedded" else [mnist_csv()]
    files = INFO[name].files
    folder = resolve_data_dir(data_dir) / files
    bar = sys.stderr.isatty() if progressbar is None else progressbar
    paths = []
    for filename, urls in catalogue.URLS[files].items():
        dest = folder / filename
        digests = catalogue.DIGESTS.get((files, filename), ())
        if dest.is_file() and (not digests or set(digests) & set(file_digests(dest, digests))):
            paths.append(dest)
            continue
        failures = []
        for url in urls:
            try:
                _fetch(url, dest, digests[0] if digests else None, bar)
                break
            except (OSError, ValueError) as error:  # requests' errors and URLError are OSErrors
                reason = "checksum mismatch" if "hash" in str(error) else one_line(error)
                failures.append(f"{url} ({reason})")
        else:
            raise VLAEError(f"could not download {filename} for {name}; tried: {'; '.join(failures)}")
        paths.append(dest)
    return paths


def _fetch(url: str, dest: Path, known_hash: str | None, progressbar: bool) -> None:
    """Download ``url`` to ``dest`` with pooch (temporary file, digest check, rename)."""
    import pooch  # imports requests: only when downloading

    fetcher = pooch.create(
        path=dest.parent,
        base_url="",
        registry={dest.name: known_hash},
        urls={dest.name: url},
        retry_if_failed=DOWNLOAD_RETRIES,
    )
    if url.startswith("file:"):
        downloader: Any = _copy_file
    elif url.startswith(("http:", "https:")):
        downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=60)
    else:
        downloader = pooch.downloaders.choose_downloader(url, progressbar=progressbar)
    fetcher.fetch(dest.name, downloader=downloader)


def _copy_file(url: str, output_file: str, _pooch: object) -> None:
    """A pooch downloader for ``file://`` URLs."""
    shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlparse(url).path), output_file)
