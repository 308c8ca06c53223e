"""The fake backend passes the same contract as the real engines."""

from sandboxer.testing.contract import SandboxContract


class TestFakeBackend(SandboxContract):
    pass
