"""pylxd, or BackendUnavailable with the install hint when it is missing."""

from sandboxer.backend import BackendUnavailable

try:
    import pylxd
    import pylxd.exceptions
    import requests.exceptions
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailable(
        "incus", f"pylxd is not installed ({exc})", "pip install 'pylxd>=2.3.2' 'requests>=2.32.2'"
    ) from exc

__all__ = ["pylxd", "requests"]
