"""The adapter interface: everything an engine adapter needs, and the only core module it imports.

An adapter is a subclass of `Backend`, registered under a name in the entry-point group
`sandboxer.backends` (see docs/backends.md). The core hands it a `LaunchPlan` with every
default resolved and a `Handle` back for each sandbox; the adapter never sees a user's
`SandboxSpec` defaults or the selector.

What a `Backend` subclass provides
- `name` and `capabilities` (class-level data the selector reads).
- `probe()`: can the engine launch now; fast, never raises. `diagnose()` may add `Check`s
  for `sandboxer doctor`, each carrying its `CheckColumn`.
- `refusals(plan)`: what in a plan it cannot honour beyond its `capabilities`, so that
  `check(plan)` (the one decider `select` and `launch` ask) refuses it before any engine
  call; `probe_capabilities()` narrows the declared capabilities to this host's engine.
- `create(plan) -> Handle`, ready for exec; it refuses nothing `check` could have (only
  engine state fails here). On any failure the core calls
  `remove(plan.name, plan.labels[LAUNCH])`, so a half-made sandbox is always cleaned up.
- `exec(handle, request)`: a generator of ("stdout" | "stderr", chunk) returning an
  `ExitStatus`; closing it early must kill the command (`kill_exec` does that on local
  engines, found by the marker from `new_exec_marker`).
- `stop`, `remove(name, launch)` (by the launch id label only: never what someone else
  named alike), `state`, `logs` (at most `LOGS_MAX` bytes; `log_tail` helps),
  `list_sandboxes` (only what carries `MANAGED`; `is_ours` tells), optionally
  `leftovers`, `close`, `put_archive` and `get_archive` (tar through exec by default;
  `tar_request`, `archive_chunks` and `check_packing` build a native variant), and
  `busybox(handle)`: where in the sandbox the file calls (listdir, stat, remove, mkdir)
  find a busybox (sandboxer's static helper, `sandboxer.images.helper`, where the adapter
  mounts it); by default none, and they use the sandbox's own tools.

Rules every adapter keeps
- Label everything it makes with `plan.labels` (they carry `ownership_labels()`).
- Named volumes (`plan.volumes`, which launch has made sure exist): `volumes()` returns
  the engine's `VolumeDriver` (create, inspect, list, remove: only one carrying
  `MANAGED`); `claim_volume_dir` gives a fresh volume's host directory to the sandbox's
  user.
- Named networks (`plan.networks`, which launch has checked exist and are ours):
  `networks()` returns the engine's `NetworkDriver`; members reach each other by sandbox
  name, and nothing else joins them.
- Map every SDK exception in one place to the errors below (`raise ... from exc`).
- Refuse what it cannot honour (through `refusals`); never ignore part of a plan.
- Log engine calls through `logger` and `timed`, never print.

The built-in images (busybox root file systems every engine can build locally) are the
public package `sandboxer.images`. Reusable tests: `sandboxer.testing.contract`.
"""

from ._backend import (
    LOGS_MAX,
    ArchiveStream,
    Availability,
    Backend,
    Capabilities,
    Check,
    CheckColumn,
    ControlStatus,
    ExecGenerator,
    ExecRequest,
    ExitStatus,
    Handle,
    LaunchPlan,
    NetworkDriver,
    NetworkInfo,
    ProcessChannel,
    ProcessRequest,
    SandboxInfo,
    SandboxState,
    TerminalSize,
    Tmpfs,
    Verdict,
    VolumeDriver,
    VolumeInfo,
    VolumeMount,
    archive_chunks,
    check_packing,
    drain,
    log_tail,
    tar_request,
)
from ._bridge_guard import INTERNAL_BRIDGE_PREFIX, NAMED_BRIDGE_PREFIX, guard_network_bridges
from ._errors import (
    BackendUnavailable,
    CommandFailed,
    EngineError,
    ExecTimeout,
    ImageNotFound,
    ImagePullFailed,
    InvalidSpec,
    OutputTooLarge,
    SandboxError,
    SandboxExists,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxNotFound,
    SandboxPermissionError,
    UnsupportedFeature,
)
from ._labels import EXEC_USER, LAUNCH, MANAGED, PREFIX, is_ours, ownership_labels
from ._log import logger, timed
from ._models import PortMapping, SandboxSpec
from ._proctree import (
    EXEC_MARKER,
    exec_pid,
    kill_exec,
    namespace_pid,
    new_exec_marker,
    signal_process,
    ticks_now,
)
from ._profiles import CONTROLS, Profile
from ._seccomp import (
    ALLOW,
    EPERM,
    ERRNO,
    SYSCALL_NAME,
    ArgFilter,
    SeccompPolicy,
    SeccompRule,
    Target,
    host_kernel,
)
from ._subnets import gateway, member_address
from ._vocabulary import Control, Isolation, Kind, NetworkMode, Protocol, PullPolicy
from ._volume_dir import claim_volume_dir, volume_dir_owner

__all__ = [
    "ALLOW",
    "CONTROLS",
    "EPERM",
    "ERRNO",
    "EXEC_MARKER",
    "EXEC_USER",
    "INTERNAL_BRIDGE_PREFIX",
    "LAUNCH",
    "LOGS_MAX",
    "MANAGED",
    "NAMED_BRIDGE_PREFIX",
    "PREFIX",
    "SYSCALL_NAME",
    "ArchiveStream",
    "ArgFilter",
    "Availability",
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "Check",
    "CheckColumn",
    "CommandFailed",
    "Control",
    "ControlStatus",
    "EngineError",
    "ExecGenerator",
    "ExecRequest",
    "ExecTimeout",
    "ExitStatus",
    "Handle",
    "ImageNotFound",
    "ImagePullFailed",
    "InvalidSpec",
    "Isolation",
    "Kind",
    "LaunchPlan",
    "NetworkDriver",
    "NetworkInfo",
    "NetworkMode",
    "OutputTooLarge",
    "PortMapping",
    "ProcessChannel",
    "ProcessRequest",
    "Profile",
    "Protocol",
    "PullPolicy",
    "SandboxError",
    "SandboxExists",
    "SandboxFileError",
    "SandboxFileNotFound",
    "SandboxInfo",
    "SandboxNotFound",
    "SandboxPermissionError",
    "SandboxSpec",
    "SandboxState",
    "SeccompPolicy",
    "SeccompRule",
    "Target",
    "TerminalSize",
    "Tmpfs",
    "UnsupportedFeature",
    "Verdict",
    "VolumeDriver",
    "VolumeInfo",
    "VolumeMount",
    "archive_chunks",
    "check_packing",
    "claim_volume_dir",
    "drain",
    "exec_pid",
    "gateway",
    "guard_network_bridges",
    "host_kernel",
    "is_ours",
    "kill_exec",
    "log_tail",
    "logger",
    "member_address",
    "namespace_pid",
    "new_exec_marker",
    "ownership_labels",
    "signal_process",
    "tar_request",
    "ticks_now",
    "timed",
    "volume_dir_owner",
]
