"""LibvirtBackend: virtual machines (QEMU, KVM or TCG) through libvirt-python."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import ClassVar

import attrs

from sandboxer.backend import (
    LAUNCH,
    LOGS_MAX,
    ArchiveStream,
    Availability,
    Backend,
    Capabilities,
    Check,
    ControlStatus,
    EngineError,
    ExecGenerator,
    ExecRequest,
    ExecTimeout,
    Handle,
    ImageNotFound,
    LaunchPlan,
    NetworkDriver,
    OutputTooLarge,
    ProcessChannel,
    ProcessRequest,
    SandboxExists,
    SandboxInfo,
    SandboxNotFound,
    SandboxState,
    UnsupportedFeature,
    VolumeDriver,
    archive_chunks,
    check_packing,
    drain,
    is_ours,
    logger,
    tar_request,
    timed,
)
from sandboxer.images import ImageConfig, is_disk_image
from sandboxer.images.systemd import boots_systemd

from . import _diagnose, _shares
from ._accel import AcceleratorChooser
from ._accounts import Accounts
from ._agent import Agent
from ._cloud_guest import DISK_IMAGE_CONTROLS, FAILED_FILE, READY_FILE, seed_files
from ._commands import CommandService, has_service
from ._disk import UserDisk, create_overlay, create_seed, user_disk
from ._domain import Boot, Disk, domain_xml
from ._errors import libvirt_errors
from ._exec import WRAPPER_ENV, exec_command, run_to_end, wrapper_args
from ._guest_config import check_mount_targets, config_archive, guest_files, shares
from ._guest_scripts import BUILTIN, OCI, OCI_ROOT, STAGING_DIR, GuestLayout
from ._image import ImageStore
from ._metadata import NAMESPACE, parse_labels
from ._named_networks import LibvirtNetworks
from ._network_xml import Member
from ._oci import OciDisk, exec_request, image_disk, is_oci_image, main_request
from ._refusals import refusals
from ._restart import load_boot, save_boot
from ._sdk import libvirt
from ._seccomp import guest_program
from ._systemd import SYSTEMD_CONTROLS
from ._volumes import LibvirtVolumes

DEFAULT_URI = "qemu:///system"
DEFAULT_STATE_DIR = "/var/lib/sandboxer/vm"
QBOOT = "/usr/share/qemu/qboot.rom"
READY_SECONDS = 180.0  # a TCG guest on a busy host can take a while; KVM needs ~1 s
# A user's image boots systemd and cloud-init (Python): about a minute under TCG.
DISK_READY_SECONDS = 600.0
FAILED_CAP = 64 * 1024  # of the guest's set-up failure reason
# In the run directory of a sandbox that boots an OCI image: the image config its execs
# follow, and the image's disk (a hard link to the store's: it stays while the VM runs).
IMAGE_CONFIG_FILE, IMAGE_DISK_FILE = "image-config.json", "rootfs.ext4"
# In the run directory of a sandbox that boots a user's disk image: its overlay.
OVERLAY_FILE = "overlay.qcow2"

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: SandboxState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: SandboxState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: SandboxState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: SandboxState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTDOWN: SandboxState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: SandboxState.STOPPED,
    libvirt.VIR_DOMAIN_CRASHED: SandboxState.STOPPED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: SandboxState.STOPPED,
}


def uri() -> str:
    return os.environ.get("SANDBOXER_LIBVIRT_URI", DEFAULT_URI)


def state_dir() -> Path:
    return Path(os.environ.get("SANDBOXER_VM_DIR", DEFAULT_STATE_DIR))


def _ignore_error(_context: object, _error: object) -> None:
    """libvirt prints every error to stderr unless a handler is set; ours raise instead."""


class LibvirtBackend(Backend):
    name: ClassVar[str] = "libvirt"
    capabilities: ClassVar[Capabilities] = Capabilities(
        kind="vm",
        isolation="kernel",
        init=True,
        custom_kernel=True,
        nested=False,
        networks=frozenset({"none", "isolated", "bridge"}),
        limits=frozenset({"cpu_limit", "memory_limit", "pids_limit"}),
        mounts=True,
        ports=True,
        disk_images=True,
        start_seconds=3.0,  # launch to exec-ready, measured under TCG (2.9 s median)
        controls={
            "capabilities": "guest: sandboxer's command service (setpriv for the spec's "
            "command) drops the bounding, inheritable and ambient capability sets of every "
            "command (cap_add kept)",
            "no_new_privileges": "guest: no_new_privs on the guest agent and command "
            "service (bwrap) and on every command",
            "seccomp": "guest: the profile's allowlist (default deny) compiled to BPF "
            "(libseccomp) and loaded "
            "by bwrap on the guest agent, inherited by every command; host: QEMU runs "
            "under its own seccomp sandbox (-sandbox on)",
            "read_only_root": "guest: root file system remounted read-only after boot, "
            "the profile's tmpfs paths writable",
            "non_root_user": "guest: every command, the spec's command and the file "
            "calls' tar run as the profile's uid:gid (the command service, or setpriv; the "
            "caller's environment applies only after the drop); root runs only sandboxer's "
            "own guest init, command service, qemu-ga and exec wrapper, with a fixed "
            "environment and absolute paths; host: "
            "QEMU runs as the unprivileged user of qemu.conf",
            "pids_limit": "guest: pids cgroup (pids.max) around every command",
            "memory_limit": "host: the VM's RAM; guest: memory cgroup (memory.max, no "
            "swap) around every command",
            "cpu_limit": "host: vCPU count (cpus rounded up); guest: cpu.max on the "
            "commands' cgroup",
            "network": "no network device in the VM: loopback only (and the NICs of "
            "the named networks the spec joins, nothing else)",
        },
    )

    def __init__(self) -> None:
        libvirt.registerErrorHandler(_ignore_error, None)
        with libvirt_errors():
            self._conn = libvirt.open(uri())
        self._conn_lock = threading.Lock()
        self._root = state_dir()
        self._images = ImageStore(self._root)
        self._accel = AcceleratorChooser(self._root)
        self._volumes = LibvirtVolumes(self._root / "volumes")
        self._networks = LibvirtNetworks(self._connection, self._root)
        self._accel_lock = threading.Lock()
        self._commands = CommandService()

    @classmethod
    def probe(cls) -> Availability:
        return _diagnose.probe(uri())

    @classmethod
    def diagnose(cls) -> list[Check]:
        return _diagnose.diagnose(uri(), state_dir())

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    # connection ---------------------------------------------------------------------
    def _connection(self) -> libvirt.virConnect:
        """The shared connection, opened again if the daemon went away since."""
        with self._conn_lock:
            try:
                alive = bool(self._conn.isAlive())
            except libvirt.libvirtError:
                alive = False
            if not alive:
                logger.info("reconnecting to libvirt at %s", uri())
                with libvirt_errors():
                    self._conn = libvirt.open(uri())
            return self._conn

    def _domain(self, handle: Handle) -> libvirt.virDomain:
        """The sandbox's domain on the current connection."""
        conn = self._connection()
        if handle.native is not None and handle.native.connect() is conn:
            return handle.native
        with libvirt_errors():
            return conn.lookupByUUIDString(handle.id)

    # paths --------------------------------------------------------------------------
    def _run_dir(self, name: str) -> Path:
        return self._root / "run" / name

    def _user_disk(self, image: str) -> UserDisk | None:
        """The user's disk image `image` names; None for any other image."""
        if is_disk_image(image):
            return user_disk(image, _shares.qemu_users(self._connection()))
        return None

    def _guest(self, handle: Handle) -> tuple[GuestLayout, ImageConfig | None]:
        """How the sandbox's guest is laid out, and the config of the OCI image it boots."""
        try:
            document = json.loads((self._run_dir(handle.name) / IMAGE_CONFIG_FILE).read_text())
        except FileNotFoundError:
            return BUILTIN, None
        return OCI, ImageConfig.from_oci({"config": document})

    def busybox(self, handle: Handle) -> str | None:
        # An OCI guest's is with sandboxer's tools; a user's disk image has its own tools.
        if self._guest(handle)[0] is OCI:
            return f"{OCI_ROOT}/bin/busybox"
        return None if (self._run_dir(handle.name) / OVERLAY_FILE).exists() else "/bin/busybox"

    # lifecycle ----------------------------------------------------------------------
    @classmethod
    def refusals(cls, plan: LaunchPlan) -> list[str]:
        return super().refusals(plan) + refusals(plan)

    def create(self, plan: LaunchPlan) -> Handle:
        check_mount_targets(plan)
        disk = self._user_disk(plan.image)
        oci = image_disk(plan) if is_oci_image(plan.image) else None
        # The built-in guest also serves the KVM check, whatever this sandbox boots.
        image = self._images.ensure()
        loader = QBOOT if os.path.exists(QBOOT) else None
        conn = self._connection()
        with self._accel_lock:
            accel = self._accel.choose(conn, image, loader, self._root / "run")
        qemu_gid = _shares.qemu_group(conn, accel.domain_type)
        run = self._claim(plan, qemu_gid)
        try:
            members = self._networks.join(plan, run)
            self._volumes.prepare(plan, _shares.qemu_owner(conn, accel.domain_type))
            exposed = _shares.expose(self._volumes.shares(shares(plan)), run / "shares", qemu_gid)
            bpf = guest_program(plan.seccomp, plan.seccomp_target)
            if disk is None:
                initrd = run / "initrd.img"
                image_config = None if oci is None else oci.config
                config = config_archive(guest_files(plan, bpf, image_config, members))
                _write_initrd(initrd, image.initrd, config, qemu_gid)
                # The guest's command service takes numeric ids only: names resolve here.
                Accounts.of_launch(plan.user, oci).save(run)
                boot = Boot(str(image.kernel), str(initrd), loader, full_system=boots_systemd(plan))
                disks = [] if oci is None else [_attach_image(oci, run, qemu_gid)]
            else:
                boot, disks = None, _prepare_disks(plan, disk, run, bpf, qemu_gid, members)
            xml = domain_xml(
                plan,
                accel=accel.domain_type,
                console_log=str(run / "console.log"),
                boot=boot,
                disks=disks,
                shares=exposed,
                members=members,
            )
            with timed("libvirt createXML", sandbox=plan.name), libvirt_errors():
                domain = conn.createXML(xml, 0)
        except SandboxExists:
            # The name went to a domain that is not ours between the check and now.
            self._delete_files(plan.name, plan.labels[LAUNCH])
            raise
        handle = Handle(domain.UUIDString(), plan.name, domain)
        with timed("guest agent ready", sandbox=plan.name):
            self._wait_ready(handle, run, set_up=disk is not None)
        main = plan_main(plan, oci)
        if disk is None:  # a disk image's set-up runs once: it cannot boot again
            save_boot(run, xml, handle.id, main)
        if main is not None:
            self._start_main(handle, main)
        return handle

    def enforcement(self, plan: LaunchPlan) -> dict[str, ControlStatus]:
        statuses = super().enforcement(plan)
        overrides = DISK_IMAGE_CONTROLS if is_disk_image(plan.image) else {}
        if boots_systemd(plan):
            overrides = SYSTEMD_CONTROLS
        for control, status in statuses.items():
            if status.enforced and control in overrides:
                statuses[control] = overrides[control]
        return statuses

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        with libvirt_errors():
            try:
                return self._connection().lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return None

    def _claim(self, plan: LaunchPlan, qemu_gid: int | None) -> Path:
        """The sandbox's own directory, created exclusively, with its labels in it; only
        QEMU's group (`qemu_gid`) may pass through: the guest's disk and config are there."""
        if self._lookup(plan.name) is not None:
            raise SandboxExists(f"a libvirt domain called {plan.name} exists already")
        run = self._run_dir(plan.name)
        run.parent.mkdir(parents=True, exist_ok=True)
        try:
            run.mkdir(mode=0o700)
        except FileExistsError:
            raise SandboxExists(f"sandbox {plan.name} exists already (remove it first)") from None
        _shares.close_to_others(run, qemu_gid, 0o710)
        (run / "labels.json").write_text(json.dumps(dict(plan.labels)) + "\n")
        return run

    def _wait_ready(self, handle: Handle, run: Path, set_up: bool) -> None:
        """Until the agent answers and, with `set_up` (a disk image), cloud-init ran our
        set-up script."""
        agent = Agent(handle.native)
        seconds = DISK_READY_SECONDS if set_up else READY_SECONDS
        deadline = time.monotonic() + seconds
        while not (agent.ping() and (not set_up or self._set_up(agent, run))):
            with libvirt_errors():
                alive = self._alive(handle.native)
            if not alive:
                raise EngineError(f"the VM stopped while booting:\n{_tail(run / 'console.log')}")
            if time.monotonic() > deadline:
                waited_for = "sandboxer's cloud-init set-up" if set_up else "the guest agent"
                raise EngineError(
                    f"{waited_for} did not finish within {seconds:.0f} s:\n"
                    f"{_tail(run / 'console.log')}"
                )
            time.sleep(0.05 if not set_up else 0.5)

    @staticmethod
    def _set_up(agent: Agent, run: Path) -> bool:
        """Whether the set-up script is done in the guest; EngineError if it failed."""
        if agent.exists(READY_FILE):
            return True
        if agent.exists(FAILED_FILE):
            reason = _read_head(agent, FAILED_FILE, FAILED_CAP).decode(errors="replace").strip()
            raise EngineError(
                f"sandboxer's set-up in the guest failed: {reason}\n{_tail(run / 'console.log')}"
            )
        return False

    @staticmethod
    def _alive(domain: libvirt.virDomain) -> bool:
        try:
            return bool(domain.isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise

    def _start_main(self, handle: Handle, request: ExecRequest) -> None:
        """The main process, detached, its output on the console (see logs())."""
        layout, _ = self._guest(handle)
        args = wrapper_args(uuid.uuid4().hex[:12], request, "", "/dev/console", "/dev/console")
        path, args = layout.command(layout.exec_path, args)
        Agent(handle.native).spawn(path, args, WRAPPER_ENV, capture=False)

    def _exec(self, handle: Handle, request: ExecRequest, stdout_file: str = "") -> ExecGenerator:
        layout, config = self._guest(handle)
        if config is not None:
            request = exec_request(config, request)
        run = self._run_dir(handle.name)
        if not stdout_file and has_service(run):
            return self._commands.exec(self._domain(handle), run, request)
        return exec_command(Agent(self._domain(handle)), request, stdout_file, layout)

    def start_process(self, handle: Handle, request: ProcessRequest) -> ProcessChannel:
        run = self._run_dir(handle.name)
        if not has_service(run):
            return super().start_process(handle, request)  # a user's disk image: qemu-ga only
        _, config = self._guest(handle)
        if config is not None:
            request = attrs.evolve(request, exec=exec_request(config, request.exec))
        return self._commands.start_process(self._domain(handle), run, request)

    def exec(self, handle: Handle, request: ExecRequest) -> ExecGenerator:
        return self._exec(handle, request)

    def put_archive(self, handle: Handle, directory: str, data: bytes, timeout: float) -> None:
        layout, _ = self._guest(handle)
        if layout is BUILTIN:
            super().put_archive(handle, directory, data, timeout)
            return
        # The core's tar-through-exec, with the OCI guest's own tar (see GuestLayout.tar).
        argv = (layout.tar, "-x", "-f", "-", "-C", directory)
        request = ExecRequest(
            argv=argv, env={}, workdir=None, user=None, stdin=data, timeout=timeout
        )
        status, _, err = drain(self._exec(handle, request))
        if status.timed_out:
            raise ExecTimeout(argv, timeout, b"", err)
        if status.exit_code != 0:
            text = err.decode("utf-8", "replace").strip()
            raise EngineError(f"unpacking into {directory} failed: {text}")

    def get_archive(self, handle: Handle, path: str, timeout: float, limit: int) -> ArchiveStream:
        # The tar goes to a guest file and comes back in chunks: a reply through libvirt
        # is limited to 4 MiB. `ulimit -f` bounds the staged file (512-byte blocks in
        # dash, 1024 in bash: at most twice the limit); tar dies of SIGXFSZ past it.
        agent = Agent(self._domain(handle))
        layout, _ = self._guest(handle)
        staged = f"{STAGING_DIR}/out-{uuid.uuid4().hex[:12]}"
        tar = tar_request(path, timeout)
        script = 'ulimit -f "$1" && shift && exec "$@"'
        blocks = str(-(-limit // 512) + 64)
        argv = (layout.sh, "-c", script, "sh", blocks, layout.tar, *tar.argv[1:])
        request = attrs.evolve(tar, argv=argv)
        try:
            status, err = yield from archive_chunks(self._exec(handle, request, staged))
            if status.exit_code == 128 + signal.SIGXFSZ:
                raise OutputTooLarge(f"the archive of {path}", limit, "pass max_size= a bigger cap")
            check_packing(path, status, timeout, err)
            yield from agent.read_chunks(staged)
        finally:
            run_to_end(agent, layout.rm, ["-f", staged])

    def stop(self, handle: Handle, timeout: float) -> None:
        try:
            domain = self._domain(handle)
        except SandboxNotFound:
            return  # already ended
        layout, _ = self._guest(handle)
        with contextlib.suppress(libvirt.libvirtError, EngineError):
            if layout is BUILTIN:
                # qemu-ga runs /sbin/shutdown, which asks the guest init to end everything.
                domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
            else:
                # An OCI image's /sbin/shutdown is the image's: ours, by its own path.
                Agent(domain).spawn(*layout.command(layout.shutdown_path, []), capture=False)
        deadline = time.monotonic() + timeout
        with libvirt_errors():
            while self._alive(domain):
                if time.monotonic() > deadline:
                    with contextlib.suppress(libvirt.libvirtError):
                        domain.destroy()
                    break
                time.sleep(0.1)

    def start(self, handle: Handle) -> Handle:
        """Boot the stopped sandbox again from its record (see _restart): the guest
        starts afresh, its writable state lost, mounts and profile as at create."""
        run = self._run_dir(handle.name)
        record = load_boot(run)
        if record is None:
            raise UnsupportedFeature(
                f"libvirt sandbox {handle.name} cannot be started again: it boots a disk "
                "image, whose set-up cloud-init runs only once; launch a new sandbox"
            )
        running = self._lookup(handle.name)
        if running is not None:
            if running.UUIDString() != record.uuid:
                raise SandboxExists(f"a libvirt domain called {handle.name} is not this sandbox")
            return Handle(record.uuid, handle.name, running)
        self._networks.ready(record.xml)
        with timed("libvirt createXML", sandbox=handle.name), libvirt_errors():
            domain = self._connection().createXML(record.xml, 0)
        handle = Handle(domain.UUIDString(), handle.name, domain)
        with timed("guest agent ready", sandbox=handle.name):
            self._wait_ready(handle, run, set_up=False)
        if record.main is not None:
            self._start_main(handle, record.main)
        return handle

    def remove(self, name: str, launch: str) -> None:
        domain = self._lookup(name)
        with libvirt_errors():
            labels = None if domain is None else self._labels(domain)
            # None: it ended meanwhile. A domain of another launch (or not ours) that has
            # the name stays; the domain object is bound to its UUID, not to the name.
            if domain is not None and labels is not None and labels.get(LAUNCH) == launch:
                with timed("libvirt destroy", sandbox=name):
                    try:
                        domain.destroy()
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() not in (
                            libvirt.VIR_ERR_NO_DOMAIN,
                            libvirt.VIR_ERR_OPERATION_INVALID,
                        ):
                            raise
        self._delete_files(name, launch)

    def _delete_files(self, name: str, launch: str) -> None:
        """The sandbox's directory, if its labels say this launch made it."""
        run = self._run_dir(name)
        try:
            labels = json.loads((run / "labels.json").read_text())
        except (OSError, ValueError):
            labels = None
        if not isinstance(labels, dict) or labels.get(LAUNCH) != launch:
            return
        self._networks.leave(run)  # its names off the networks' DNS
        _shares.release(run)  # raises rather than let rmtree reach into a user's directory
        shutil.rmtree(run)

    def state(self, handle: Handle) -> SandboxState:
        try:
            domain = self._domain(handle)
            with libvirt_errors():
                state = domain.state()[0]
        except SandboxNotFound:
            # Transient domains vanish when they stop; their files stay until remove().
            exists = self._run_dir(handle.name).exists()
            return SandboxState.STOPPED if exists else SandboxState.DESTROYED
        return _STATES.get(state, SandboxState.UNKNOWN)

    def logs(self, handle: Handle) -> str:
        try:
            with open(self._run_dir(handle.name) / "console.log", "rb") as console:
                console.seek(max(0, os.fstat(console.fileno()).st_size - LOGS_MAX))
                return console.read(LOGS_MAX).decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # discovery ----------------------------------------------------------------------
    @staticmethod
    def _labels(domain: libvirt.virDomain) -> dict[str, str] | None:
        """The domain's sandboxer labels ({} when it has none); None if it vanished."""
        try:
            metadata = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return {}
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise
        return parse_labels(metadata)

    def volumes(self) -> VolumeDriver:
        return self._volumes

    def networks(self) -> NetworkDriver:
        return self._networks

    def list_sandboxes(self) -> list[SandboxInfo]:
        found: dict[str, SandboxInfo] = {}
        with libvirt_errors():
            for domain in self._connection().listAllDomains(0):
                labels = self._labels(domain)
                if not labels or not is_ours(labels):
                    continue
                try:
                    state = _STATES.get(domain.state()[0], SandboxState.UNKNOWN)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # it ended while we looked
                    raise
                found[domain.name()] = SandboxInfo(
                    self.name, domain.UUIDString(), domain.name(), state, labels
                )
        # Sandboxes whose VM has ended but whose files remain (stopped, or crashed).
        for labels_file in (self._root / "run").glob("*/labels.json"):
            name = labels_file.parent.name
            if name in found:
                continue
            with contextlib.suppress(OSError, ValueError):
                labels = json.loads(labels_file.read_text())
                if is_ours(labels):
                    record = load_boot(labels_file.parent)
                    # The UUID it boots again with; a disk image's sandbox goes by its name.
                    key = record.uuid if record is not None else name
                    found[name] = SandboxInfo(self.name, key, name, SandboxState.STOPPED, labels)
        return list(found.values())


def _write_initrd(path: Path, base: Path, config: bytes, qemu_gid: int | None) -> None:
    """The shared initramfs followed by this sandbox's config archive."""
    with open(base, "rb") as source, open(path, "wb") as target:
        shutil.copyfileobj(source, target, 1024 * 1024)
        target.write(b"\0" * (-target.tell() % 4))  # the kernel skips zero padding
        target.write(config)
    _shares.close_to_others(path, qemu_gid, 0o640)


def plan_main(plan: LaunchPlan, oci: OciDisk | None) -> ExecRequest | None:
    """The sandbox's main process: the spec's command, or on an OCI image the image
    config's (Entrypoint, Cmd) under Docker's rules; None: the sandbox idles."""
    if oci is not None:
        return main_request(oci.config, plan)
    if not plan.command:
        return None
    return ExecRequest(
        argv=plan.command, env=plan.env, workdir=plan.workdir, user=plan.user, stdin=None,
        timeout=None,
    )  # fmt: skip


def _attach_image(oci: OciDisk, run: Path, qemu_gid: int | None) -> Disk:
    """The OCI image's cached disk, read-only for the guest, readable by QEMU's group.

    A hard link in the sandbox's directory keeps the file while the VM runs, whatever
    the store evicts meanwhile; on another file system the store's own path serves."""
    (run / IMAGE_CONFIG_FILE).write_text(json.dumps(oci.config.to_json()) + "\n")
    path = run / IMAGE_DISK_FILE
    try:
        os.link(oci.path, path)
    except FileNotFoundError:
        # Evicted or removed from the store since image_disk() found it.
        raise ImageNotFound(
            f"the disk of {oci.path.parent.parent.name} was removed from the image store "
            "while this sandbox launched; launch again"
        ) from None
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        path = oci.path
    _shares.close_to_others(path, qemu_gid, 0o640)
    return Disk(str(path), format="raw", read_only=True, shared=True)


def _prepare_disks(
    plan: LaunchPlan,
    disk: UserDisk,
    run: Path,
    bpf: bytes,
    qemu_gid: int | None,
    members: tuple[Member, ...],
) -> list[Disk]:
    """The overlay on the user's image, then the cloud-init seed, in the sandbox's directory."""
    overlay, seed = run / OVERLAY_FILE, run / "seed.iso"
    create_overlay(disk, overlay)
    create_seed(seed_files(plan, bpf, members), seed)
    for path in (overlay, seed):
        _shares.close_to_others(path, qemu_gid, 0o640)
    return [Disk(str(overlay)), Disk(str(seed), format="raw", read_only=True)]


def _read_head(agent: Agent, path: str, cap: int) -> bytes:
    """At most `cap` bytes of a guest file: the guest may have made it endless (/dev/zero)."""
    head = b""
    for chunk in agent.read_chunks(path):
        head += chunk
        if len(head) >= cap:
            break  # the dropped generator closes the guest file
    return head[:cap]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no console output)"


__all__ = ["LibvirtBackend"]
