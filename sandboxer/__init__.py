"""sandboxer: one API to launch isolated sandboxes on Docker, Incus/LXC and libvirt/QEMU."""

from . import aio
from ._attach import attach, detach
from ._backend import (
    Availability,
    Backend,
    Capabilities,
    Check,
    CheckColumn,
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
    CommandFailed,
    EngineError,
    ExecTimeout,
    ImageNotFound,
    ImagePullFailed,
    InvalidSpec,
    NotReady,
    OutputTooLarge,
    SandboxError,
    SandboxExists,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxNotFound,
    SandboxPermissionError,
    UnsupportedFeature,
)
from ._file_ops import DirEntry, FileStat, FileType
from ._gc import GcIncomplete, Inventory, gc, inventory
from ._launch import launch
from ._models import (
    ISOLATION_LEVELS,
    KINDS,
    ExecResult,
    Mount,
    PortMapping,
    Requirements,
    Resources,
    SandboxSpec,
)
from ._networks import Network, NetworkInUse, gc_networks
from ._pool import Pool, PoolClosed, PoolTimeout
from ._process import Process
from ._profiles import CONTROLS, NETWORKS, Profile, builtin_profiles, load_profile
from ._pty import Pty
from ._registry import backend_names, get_backend, register_backend, unregister_backend
from ._sandbox import ExecStream, Sandbox
from ._selector import Selection, probe_all, select
from ._vocabulary import PullPolicy
from ._volumes import Volume, VolumeInUse, gc_volumes

__version__ = "0.1.0"

__all__ = [
    "CONTROLS",
    "ISOLATION_LEVELS",
    "KINDS",
    "NETWORKS",
    "Availability",
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "Check",
    "CheckColumn",
    "CommandFailed",
    "ControlStatus",
    "DirEntry",
    "EngineError",
    "ExecRequest",
    "ExecResult",
    "ExecStream",
    "ExecTimeout",
    "ExitStatus",
    "FileStat",
    "FileType",
    "GcIncomplete",
    "Handle",
    "ImageNotFound",
    "ImagePullFailed",
    "InvalidSpec",
    "Inventory",
    "LaunchPlan",
    "Mount",
    "Network",
    "NetworkInUse",
    "NotReady",
    "OutputTooLarge",
    "Pool",
    "PoolClosed",
    "PoolTimeout",
    "PortMapping",
    "Process",
    "Profile",
    "Pty",
    "PullPolicy",
    "Requirements",
    "Resources",
    "Sandbox",
    "SandboxError",
    "SandboxExists",
    "SandboxFileError",
    "SandboxFileNotFound",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxPermissionError",
    "SandboxSpec",
    "SandboxState",
    "Selection",
    "UnsupportedFeature",
    "Volume",
    "VolumeInUse",
    "aio",
    "attach",
    "backend_names",
    "builtin_profiles",
    "detach",
    "gc",
    "gc_networks",
    "gc_volumes",
    "get_backend",
    "inventory",
    "launch",
    "load_profile",
    "probe_all",
    "register_backend",
    "select",
    "unregister_backend",
]
