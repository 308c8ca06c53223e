"""Image references parsed as Docker does, and the image config's launch rules."""

from __future__ import annotations

import pytest

from sandboxer import InvalidSpec, SandboxSpec
from sandboxer.images import ImageConfig, parse_reference


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io", "library/alpine", "latest", None),
        ("alpine:3.20", "docker.io", "library/alpine", "3.20", None),
        ("team/app", "docker.io", "team/app", "latest", None),
        ("127.0.0.1:5000/sandboxer-test/app:1", "127.0.0.1:5000", "sandboxer-test/app", "1", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("registry.example/a/b/c:v1.2-x", "registry.example", "a/b/c", "v1.2-x", None),
        ("app@sha256:" + "a" * 64, "docker.io", "library/app", None, "sha256:" + "a" * 64),
        ("h:5000/app:1@sha256:" + "b" * 64, "h:5000", "app", "1", "sha256:" + "b" * 64),
    ],
)
def test_references_normalise_as_docker_does(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    reference = parse_reference(text)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert parse_reference(str(reference)) == reference


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Alpine",  # upper case repository
        "app@sha256:short",
        "app@md5:" + "a" * 32,
        "app:bad/tag",
        "app:" + "x" * 200,
        "a//b",
        "-app",
        "h:port/app",
        "app:",
        "x" * 300,
    ],
)
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reference(text)


def test_loopback_registries_are_recognised() -> None:
    assert parse_reference("127.0.0.1:5000/a").on_loopback
    assert parse_reference("localhost:5000/a").on_loopback
    assert parse_reference("[::1]:5000/a".replace("[::1]", "localhost")).on_loopback
    assert not parse_reference("registry.example:5000/a").on_loopback
    assert not parse_reference("alpine").on_loopback


def test_the_spec_names_the_image_field_for_a_bad_reference() -> None:
    with pytest.raises(InvalidSpec, match=r"^image: 'Bad/Name' is not an image reference"):
        SandboxSpec(image="Bad/Name")


def test_the_spec_takes_pull_policies_and_entrypoints() -> None:
    spec = SandboxSpec(image="127.0.0.1:5000/a:1", pull="always", entrypoint=[])
    assert spec.pull == "always" and spec.entrypoint == ()
    with pytest.raises(InvalidSpec, match=r"^pull: must be one of"):
        SandboxSpec(pull="sometimes")
    with pytest.raises(InvalidSpec, match=r"^entrypoint: contains a NUL byte"):
        SandboxSpec(entrypoint=["a\0b"])


CONFIG = ImageConfig.from_oci(
    {
        "config": {
            "Entrypoint": ["/entry"],
            "Cmd": ["serve", "--port", "80"],
            "Env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "EMPTY="],
            "WorkingDir": "/app",
            "User": "app",
        }
    }
)


def test_the_main_process_follows_dockers_rules() -> None:
    assert CONFIG.main_process(None, None) == ("/entry", "serve", "--port", "80")
    assert CONFIG.main_process(("sh",), None) == ("/entry", "sh")
    # A new entrypoint drops the image's Cmd; an empty one clears the Entrypoint.
    assert CONFIG.main_process(None, ("/other",)) == ("/other",)
    assert CONFIG.main_process(("sleep", "1"), ()) == ("sleep", "1")
    assert CONFIG.main_process(None, ()) is None
    assert ImageConfig().main_process(None, None) is None


def test_env_workdir_and_user_defaults() -> None:
    assert CONFIG.environment({"LANG": "de_DE"}) == {
        "PATH": "/usr/bin:/bin",
        "LANG": "de_DE",
        "EMPTY": "",
    }
    assert CONFIG.working_directory(None) == "/app"
    assert CONFIG.working_directory("/w") == "/w"
    assert ImageConfig().working_directory(None) == "/"
    assert CONFIG.effective_user(None) == "app"
    assert CONFIG.effective_user("1000:1000") == "1000:1000"
    assert ImageConfig().effective_user(None) is None


@pytest.mark.parametrize(
    "document",
    [{"config": []}, {"config": {"Cmd": "sh"}}, {"config": {"Env": [1]}}, {"config": {"User": 0}}],
)
def test_malformed_configs_are_refused(document: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ImageConfig.from_oci(document)
