"""Users resolved on the host: only numbers cross the channel to the guest's service.

At launch, the guest's account files (the built-in image's, or the OCI image's own,
read from its unpacked tree without following a link) and the sandbox's default user
are kept in the sandbox's directory; every command's user is resolved against that
snapshot, so no root-run step in the guest ever parses a file the image controls.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from sandboxer.backend import EngineError
from sandboxer.images import GROUP, PASSWD
from sandboxer.images.accounts import Identity, resolve
from sandboxer.images.tree import read_in_tree

from ._oci import OciDisk

ACCOUNTS_FILE = "accounts.json"


@attrs.frozen
class Accounts:
    default_user: str  # "" = root, as the guest's init runs
    passwd: str
    group: str

    @classmethod
    def builtin(cls, default_user: str | None) -> Accounts:
        return cls(default_user or "", PASSWD, GROUP)

    @classmethod
    def of_tree(cls, default_user: str | None, rootfs: Path) -> Accounts:
        return cls(
            default_user or "",
            read_in_tree(rootfs, "/etc/passwd"),
            read_in_tree(rootfs, "/etc/group"),
        )

    @classmethod
    def of_launch(cls, plan_user: str | None, oci: OciDisk | None) -> Accounts:
        """A launch's: the built-in image's, or the OCI image's own, whose config's User
        is then the default when neither the spec nor the profile sets one."""
        if oci is None:
            return cls.builtin(plan_user)
        return cls.of_tree(oci.config.effective_user(plan_user), oci.rootfs)

    def save(self, run: Path) -> None:
        (run / ACCOUNTS_FILE).write_text(json.dumps(attrs.asdict(self)) + "\n")

    @classmethod
    def load(cls, run: Path) -> Accounts:
        try:
            document = json.loads((run / ACCOUNTS_FILE).read_text())
            return cls(
                str(document["default_user"]), str(document["passwd"]), str(document["group"])
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"the sandbox's account snapshot is unreadable: {exc}") from exc

    def identity(self, user: str | None) -> Identity:
        """`user` (or the default) as ids; InvalidSpec("user") for a name the image lacks."""
        chosen = user or self.default_user
        if not chosen:
            return Identity(0, 0, "/")  # as the exec wrapper had it
        return resolve(chosen, self.passwd, self.group)
