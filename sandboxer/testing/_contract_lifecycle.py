"""Contract: a sandbox stopped and started again is the same sandbox, under the same rules.

One test, one sandbox (a VM boots twice in it): what a stopped sandbox keeps of its own
file system differs per engine (docs/backends.md) and is tested in
integration/test_lifecycle.py; what every engine keeps is here.
"""

from __future__ import annotations

from pathlib import Path

import sandboxer
from sandboxer import Mount, PortMapping, SandboxState

from . import contract


class LifecycleContract:
    """Mixed into `SandboxContract`: it stops the sandbox, so none of it is shared."""

    def test_stop_then_start_keeps_the_sandbox_and_its_rules(
        self, make: contract.Make, backend: str, tmp_path: Path
    ) -> None:
        tmp_path.chmod(0o777)  # the hardened user is uid 1000
        sb = make(mounts=[Mount(str(tmp_path), "/data")], ports=[PortMapping(guest_port=8080)])
        url = "http://{}:{}/index.html".format(*sb.ports[8080])
        assert sb.exec(["sh", "-c", "echo kept > /data/before.txt"]).exit_code == 0
        sb.exec(["mkdir", "-p", "/tmp/www"])
        sb.write_file("/tmp/www/index.html", b"before stop")
        contract.serve_http(sb, 8080, "/tmp/www")
        assert contract.http_get(url, wait=30) == b"before stop"
        sb.stop(timeout=5)
        stopped = sb.state
        assert stopped is SandboxState.STOPPED
        assert sb.name in contract._names(backend)  # stopped, not gone
        try:
            contract.http_get(url, wait=0)
            answered = True
        except OSError:
            answered = False
        assert not answered, "a stopped sandbox still serves its port"

        sb.start()
        assert sb.state is SandboxState.RUNNING
        sb.start()  # a running sandbox is left as it is
        # The mount's data is the host's: kept; the profile's tmpfs comes back empty.
        assert sb.exec(["cat", "/data/before.txt"]).stdout == b"kept\n"
        emptied = sb.exec(["cat", "/tmp/www/index.html"])
        assert emptied.exit_code != 0, emptied
        # The hardened profile applies again: a non-root user, a read-only root.
        assert sb.exec(["id", "-u"]).stdout == b"1000\n"
        attack = sb.exec(["sh", "-c", "echo owned > /etc/owned"])
        assert attack.exit_code != 0, attack
        with_owned = sb.exec(["cat", "/etc/owned"])
        assert with_owned.exit_code != 0, with_owned
        # The port is published again: a server started now answers on the same host port.
        sb.exec(["mkdir", "-p", "/tmp/www"])
        sb.write_file("/tmp/www/index.html", b"after start")
        contract.serve_http(sb, 8080, "/tmp/www")
        assert contract.http_get(url, wait=30) == b"after start"
        # The same sandbox as the engine lists it, found again by name.
        assert sandboxer.attach(sb.name, [backend]).id == sb.id
