"""Old home of :func:`resolve_data` and :func:`check_data_fits`, kept for one release:
they are now :mod:`vlae.data.checks` (``vlae.data`` may read the configuration)."""

from __future__ import annotations

from ..data.checks import check_data_fits, resolve_data

__all__ = ["resolve_data", "check_data_fits"]
