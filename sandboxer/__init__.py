"""sandboxer: one API to launch isolated sandboxes on Docker, Incus/LXC and libvirt/QEMU."""

from . import aio
from ._backend import (
    Availability,
    Backend,
    Capabilities,
    Check,
    ControlStatus,
    ExecRequest,
    ExitStatus,
    Handle,
    LaunchPlan,
    SandboxInfo,
    SandboxState,
)
from ._errors import (
    BackendUnavailable,
    EngineError,
    ExecTimeout,
    ImageNotFound,
    InvalidSpec,
    OutputTooLarge,
    SandboxError,
    SandboxExists,
    SandboxFileNotFound,
    SandboxNotFound,
    UnsupportedFeature,
)
from ._launch import launch
from ._models import (
    ExecResult,
    Mount,
    PortMapping,
    Requirements,
    Resources,
    SandboxSpec,
)
from ._pool import Pool, PoolClosed, PoolTimeout
from ._profiles import CONTROLS, Profile, builtin_profiles, load_profile
from ._registry import backend_names, get_backend, register_backend, unregister_backend
from ._sandbox import ExecStream, Sandbox
from ._selector import Selection, select

__version__ = "0.1.0"

__all__ = [
    "CONTROLS",
    "Availability",
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "Check",
    "ControlStatus",
    "EngineError",
    "ExecRequest",
    "ExecResult",
    "ExecStream",
    "ExecTimeout",
    "ExitStatus",
    "Handle",
    "ImageNotFound",
    "InvalidSpec",
    "LaunchPlan",
    "Mount",
    "OutputTooLarge",
    "Pool",
    "PoolClosed",
    "PoolTimeout",
    "PortMapping",
    "Profile",
    "Requirements",
    "Resources",
    "Sandbox",
    "SandboxError",
    "SandboxExists",
    "SandboxFileNotFound",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxSpec",
    "SandboxState",
    "Selection",
    "UnsupportedFeature",
    "aio",
    "backend_names",
    "builtin_profiles",
    "get_backend",
    "launch",
    "load_profile",
    "register_backend",
    "select",
    "unregister_backend",
]
