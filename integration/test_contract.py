"""The backend contract, unchanged, on every real engine given by --backends."""

from sandboxer.testing.contract import EngineContract


class TestContract(EngineContract):
    pass
