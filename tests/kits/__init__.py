"""Helpers shared by unit test modules (which pytest's importlib mode keeps from importing
one another); tests/conftest.py puts this folder's parent on sys.path."""
