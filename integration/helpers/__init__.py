"""Test set-up helpers: the local registry's HTTP API and the test images pushed to it."""
