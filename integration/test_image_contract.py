"""The contract and the security suite, unchanged, on the Debian built-in image and on an
image pulled from the local registry, on every engine given by --backends.

Both run the whole `EngineContract` on each engine, libvirt included: a VM of either
image boots in seconds (sandboxer's kernel and agent, no cloud-init), so the dozen boots
the full contract takes stay within minutes, and a shared-sandbox subset would leave the
limits and mounts unproven on the engine where the image becomes a disk.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.images import BASE_IMAGE, PushedImages

import sandboxer
from sandboxer import Sandbox
from sandboxer.testing.contract import EngineContract

IMAGES = ("debian", "pulled")


def _image(which: str, pushed: PushedImages) -> str:
    return BASE_IMAGE if which == "debian" else pushed.app


class TestContractOnImages(EngineContract):
    @pytest.fixture(scope="class", params=IMAGES)
    @classmethod
    def image(cls, request: pytest.FixtureRequest, pushed_images: PushedImages) -> str:
        return _image(request.param, pushed_images)

    def test_python3_runs(self, shared: Sandbox) -> None:
        result = shared.exec(["python3", "-c", "import sys; print(sys.version_info[0] * 7)"])
        assert (result.exit_code, result.stdout) == (0, b"21\n"), result


# The security suite ---------------------------------------------------------------------
def _load_security_suite() -> Any:
    """integration/test_security.py as a module of its own (pytest imports test files
    under importlib mode, so it is not importable by name)."""
    path = Path(__file__).with_name("test_security.py")
    spec = importlib.util.spec_from_file_location("sandboxer_security_suite", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


security = _load_security_suite()
# Its module-level fixtures, visible to the subclasses below.
host_dirs = security.host_dirs
hardened = security.hardened


class OnImage:
    """Every launch of the class defaults to the class's image (the security suite names
    none: it runs on the default image), so its tests run unchanged on another one."""

    which: str

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def on_image(cls, pushed_images: PushedImages) -> Iterator[str]:
        image = _image(cls.which, pushed_images)
        launch = sandboxer.launch

        def launch_on_image(spec: Any = None, /, **fields: Any) -> Sandbox:
            if spec is None:
                fields.setdefault("image", image)
            return launch(spec, **fields)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sandboxer, "launch", launch_on_image)
            yield image


_HardenedFromInside: Any = security.TestHardenedFromInside


class HardenedFromInside(_HardenedFromInside):  # type: ignore[misc]
    def test_the_image_is_the_one_asked_for(self, hardened: Sandbox) -> None:
        # Guards OnImage's patch: the suite's sandbox really runs an image with python3
        # (the default image has none).
        assert hardened.exec(["test", "-x", "/usr/bin/python3"]).exit_code == 0


SECURITY_SUITES = (
    security.TestEnforcementReport,
    security.TestUnenforceableIsRefused,
    HardenedFromInside,
    security.TestSetuidProbeHasTeeth,
    security.TestLimits,
    security.TestPorts,
)
# One class per suite and image, so class-scoped sandboxes never outlive their image.
for _which in IMAGES:
    for _suite in SECURITY_SUITES:
        _name = f"Test{_suite.__name__.removeprefix('Test')}On{_which.title()}"
        globals()[_name] = type(_name, (OnImage, _suite), {"which": _which})
