"""pylxd, or BackendUnavailable with the install hint when it is missing."""

from sandboxer.backend import BackendUnavailable

try:
    import pylxd
    import pylxd.exceptions
    import requests.exceptions
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailable(
        "incus", f"pylxd is not installed ({exc})", "pip install 'sandboxer[incus]'"
    ) from exc

__all__ = ["pylxd", "requests"]
