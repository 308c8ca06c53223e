"""The Docker adapter's image handling against a fake engine API: pull policies, built-ins
loaded once, progress and logs, every pull failure mapped to ImagePullFailed with a fix,
and the build stream."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

import sandboxer
from sandboxer import ImageNotFound, ImagePullFailed, PullPolicy
from sandboxer.backends.docker import _images
from sandboxer.backends.docker._build import build_stream
from sandboxer.backends.docker._images import DockerImages
from sandboxer.backends.docker._pull import PLATFORM, pull, pull_failure
from sandboxer.images import IMAGE_VERSION, ImageConfig, parse_reference

REF = "127.0.0.1:5000/sandboxer-test/app:1"
NAME = "127.0.0.1:5000/sandboxer-test/app"
DIGEST = "sha256:" + "ab" * 32
IMAGE_ID = "sha256:" + "cd" * 32
CONFIG = {"Entrypoint": ["/entry"], "Cmd": ["serve"], "Env": ["A=1"], "User": "app"}


def _api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("error", response, explanation=explanation)


class FakeAPI:
    """The few APIClient calls image handling makes, over an in-memory set of images."""

    def __init__(self, images: dict[str, dict[str, Any]] | None = None) -> None:
        self.images: dict[str, dict[str, Any]] = dict(images or {})
        self.calls: list[tuple[str, Any]] = []
        self.events: list[dict[str, Any]] = []  # what the next pull streams
        self.pull_error: Exception | None = None
        self.pulled_as: dict[str, str] = {}  # what a successful pull adds: name -> id

    def inspect_image(self, name: str) -> dict[str, Any]:
        self.calls.append(("inspect", name))
        if name not in self.images:
            response = requests.Response()
            response.status_code = 404
            raise docker.errors.ImageNotFound(f"No such image: {name}", response)
        return self.images[name]

    def reload_config(self) -> None:
        self.calls.append(("reload_config", None))

    def pull(self, repository: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("pull", (repository, kwargs)))
        if self.pull_error is not None:
            raise self.pull_error
        return self._stream()

    def _stream(self) -> Iterator[dict[str, Any]]:
        yield from self.events
        for name, image_id in self.pulled_as.items():
            self.images[name] = {"Id": image_id, "Config": CONFIG}

    def import_image_from_data(self, data: bytes, **kwargs: Any) -> None:
        self.calls.append(("import", kwargs))
        self.images[f"{kwargs['repository']}:{kwargs['tag']}"] = {"Id": "sha256:busybox"}

    def tag(self, image: str, repository: str, tag: str) -> None:
        self.calls.append(("tag", (image, repository, tag)))
        self.images[f"{repository}:{tag}"] = self.images.get(image, {"Id": IMAGE_ID})

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


def _present() -> dict[str, dict[str, Any]]:
    return {REF: {"Id": IMAGE_ID, "Config": CONFIG}}


# pull policies ---------------------------------------------------------------------------
def test_missing_finds_a_local_image_without_pulling() -> None:
    api = FakeAPI(_present())
    ready = DockerImages(api).ready(REF, PullPolicy.MISSING)
    assert api.kinds() == ["inspect"]
    assert ready.reference == IMAGE_ID  # exactly the image inspected, whatever the tag does
    assert ready.config == ImageConfig.from_oci({"config": CONFIG})
    assert not ready.builtin


def test_missing_pulls_an_absent_image_once_for_linux_amd64() -> None:
    api = FakeAPI()
    api.pulled_as = {REF: IMAGE_ID}
    images = DockerImages(api)
    images.ready(REF, PullPolicy.MISSING)
    images.ready(REF, PullPolicy.MISSING)
    pulls = [args for kind, args in api.calls if kind == "pull"]
    assert pulls == [(NAME, {"tag": "1", "stream": True, "decode": True, "platform": PLATFORM})]
    # Credentials are read again before the pull: a `docker login` since then counts.
    assert api.kinds()[:3] == ["inspect", "reload_config", "pull"]


def test_always_pulls_even_a_local_image() -> None:
    api = FakeAPI(_present())
    images = DockerImages(api)
    images.ready(REF, PullPolicy.ALWAYS)
    images.ready(REF, PullPolicy.ALWAYS)
    assert api.kinds().count("pull") == 2


def test_always_follows_a_moved_tag() -> None:
    api = FakeAPI(_present())
    api.pulled_as = {REF: "sha256:" + "ef" * 32}
    assert DockerImages(api).ready(REF, PullPolicy.ALWAYS).reference == "sha256:" + "ef" * 32


def test_never_refuses_an_absent_image_with_the_fix_and_pulls_nothing() -> None:
    api = FakeAPI()
    with pytest.raises(ImageNotFound) as caught:
        DockerImages(api).ready(REF, PullPolicy.NEVER)
    assert not isinstance(caught.value, ImagePullFailed)  # nothing was pulled
    assert f"sandboxer images pull {REF}" in str(caught.value)
    assert f"docker pull {REF}" in str(caught.value)
    assert "pull" not in api.kinds()


def test_never_uses_a_local_image() -> None:
    api = FakeAPI(_present())
    assert DockerImages(api).ready(REF, PullPolicy.NEVER).reference == IMAGE_ID
    assert "pull" not in api.kinds()


def test_a_digest_reference_is_pulled_and_found_by_its_digest() -> None:
    pinned = f"{NAME}@{DIGEST}"
    api = FakeAPI()
    api.pulled_as = {pinned: IMAGE_ID}
    # A tag beside the digest changes nothing: the digest decides.
    DockerImages(api).ready(f"{NAME}:1@{DIGEST}", PullPolicy.MISSING)
    [(repository, kwargs)] = [args for kind, args in api.calls if kind == "pull"]
    assert (repository, kwargs["tag"]) == (NAME, DIGEST)
    assert ("inspect", pinned) in api.calls


def test_a_short_name_is_pulled_by_its_canonical_name() -> None:
    api = FakeAPI()
    api.pulled_as = {"docker.io/library/alpine:3": IMAGE_ID}
    DockerImages(api).ready("alpine:3", PullPolicy.MISSING)
    [(repository, kwargs)] = [args for kind, args in api.calls if kind == "pull"]
    assert (repository, kwargs["tag"]) == ("docker.io/library/alpine", "3")


def test_the_config_is_parsed_once_per_image_id() -> None:
    api = FakeAPI(_present())
    images = DockerImages(api)
    first, second = images.ready(REF, PullPolicy.MISSING), images.ready(REF, PullPolicy.MISSING)
    assert first.config is second.config


def test_a_pull_that_leaves_no_image_is_image_not_found() -> None:
    api = FakeAPI()
    with pytest.raises(ImageNotFound, match="pulled but is not on the Docker engine"):
        DockerImages(api).ready(REF, PullPolicy.MISSING)


# failures --------------------------------------------------------------------------------
# What dockerd 20.10 answered here to each failure (an HTTP error before any progress).
FAILURES = [
    (
        "manifest for 127.0.0.1:5000/sandboxer-test/app:9 not found: manifest unknown: "
        "manifest unknown",
        "has no",
        "/v2/sandboxer-test/app/tags/list",
    ),
    (
        'Get "http://127.0.0.1:5000/v2/": dial tcp 127.0.0.1:5000: connect: connection refused',
        "cannot be reached",
        "curl http://127.0.0.1:5000/v2/",
    ),
    (
        'Head "http://127.0.0.1:5000/v2/sandboxer-test/app/manifests/1": no basic auth credentials',
        "refused the credentials",
        "docker login 127.0.0.1:5000",
    ),
    (
        "unauthorized: authentication required",
        "refused the credentials",
        "$DOCKER_CONFIG/config.json",
    ),
    (
        "filesystem layer verification failed for digest sha256:" + "12" * 32,
        "does not match its digest",
        "push 127.0.0.1:5000/sandboxer-test/app:1 again",
    ),
    (
        "manifest verification failed for digest sha256:" + "12" * 32,
        "does not match its digest",
        "push",
    ),
    (
        "no matching manifest for linux/amd64 in the manifest list entries",
        "has no linux/amd64 image",
        "built for linux/amd64",
    ),
    (
        "image with reference x was found but does not match the specified platform: "
        "wanted linux/amd64, actual: linux/arm64",
        "has no linux/amd64 image",
        "built for linux/amd64",
    ),
    (
        "pull access denied for sandboxer-test/app, repository does not exist or may "
        "require 'docker login': denied: requested access to the resource is denied",
        "or it needs credentials",
        "docker login 127.0.0.1:5000",
    ),
    ("something new went wrong", "something new went wrong", f"sandboxer images pull {REF}"),
]


@pytest.mark.parametrize(("message", "what", "fix"), FAILURES, ids=lambda v: str(v)[:30])
def test_an_http_error_from_the_pull_is_image_pull_failed(
    message: str, what: str, fix: str
) -> None:
    api = FakeAPI()
    api.pull_error = _api_error(404 if "not found" in message else 500, message)
    with pytest.raises(ImagePullFailed) as caught:
        DockerImages(api).ready(REF, PullPolicy.MISSING)
    text = str(caught.value)
    assert isinstance(caught.value, ImageNotFound)
    assert what in text and "fix: " in text and fix in text, text
    assert caught.value.__cause__ is api.pull_error


@pytest.mark.parametrize(("message", "what", "fix"), FAILURES[:5], ids=lambda v: str(v)[:30])
def test_an_error_in_the_pull_stream_is_image_pull_failed(
    message: str, what: str, fix: str
) -> None:
    api = FakeAPI()
    api.events = [
        {"status": "Pulling fs layer", "progressDetail": {}, "id": "aaa"},
        {"errorDetail": {"message": message}, "error": message},
    ]
    with pytest.raises(ImagePullFailed, match="fix: ") as caught:
        DockerImages(api).ready(REF, PullPolicy.MISSING)
    assert what in str(caught.value) and fix in str(caught.value)


def test_the_raw_404_never_reaches_the_user() -> None:
    api = FakeAPI()
    response = requests.Response()
    response.status_code = 404
    api.pull_error = docker.errors.ImageNotFound(
        "404 Client Error for http+docker://localhost/v1.41/images/create: Not Found",
        response,
        explanation="pull access denied for no/such-image, repository does not exist or may "
        "require 'docker login'",
    )
    with pytest.raises(ImagePullFailed) as caught:
        DockerImages(api).ready("no/such-image", PullPolicy.MISSING)
    assert "404 Client Error" not in str(caught.value)
    assert "docker login docker.io" in str(caught.value)


def test_the_registry_words_in_an_error_are_bounded() -> None:
    error = pull_failure(parse_reference(REF), "x" * 100_000)
    assert len(str(error)) < 2_000


def test_an_engine_that_does_not_answer_is_backend_unavailable() -> None:
    api = FakeAPI()
    api.pull_error = requests.exceptions.ConnectionError("refused")
    with pytest.raises(sandboxer.BackendUnavailable):
        DockerImages(api).ready(REF, PullPolicy.MISSING)


# progress --------------------------------------------------------------------------------
def _layer_events(layer: str, total: int) -> list[dict[str, Any]]:
    half = {"current": total // 2, "total": total}
    return [
        {"status": "Pulling fs layer", "progressDetail": {}, "id": layer},
        {"status": "Downloading", "progressDetail": half, "id": layer},
        {
            "status": "Downloading",
            "progressDetail": {"current": total, "total": total},
            "id": layer,
        },
        {"status": "Download complete", "progressDetail": {}, "id": layer},
        {"status": "Extracting", "progressDetail": half, "id": layer},
        {"status": "Extracting", "progressDetail": half, "id": layer},
        {"status": "Pull complete", "progressDetail": {}, "id": layer},
    ]


def test_progress_adds_up_the_layers_bytes(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI()
    api.pulled_as = {REF: IMAGE_ID}
    api.events = [
        {"status": "Pulling from sandboxer-test/app", "id": "1"},
        *_layer_events("aaa", 100),
        *_layer_events("bbb", 300),
        {"status": "Digest: " + DIGEST},
    ]
    seen: list[tuple[str, int, int | None]] = []
    with caplog.at_level(logging.INFO, logger="sandboxer"):
        DockerImages(api).ready(REF, PullPolicy.MISSING, lambda *a: seen.append(a))
    assert seen[-1] == (f"pulling {REF}", 400, 400)
    assert all(phase == f"pulling {REF}" for phase, _, _ in seen)
    done = [d for _, d, _ in seen]
    assert done == sorted(done)
    # One line per status change of a layer, not one per progress tick.
    lines = [r.getMessage() for r in caplog.records if r.name == "sandboxer"]
    assert sum("aaa Extracting" in line for line in lines) == 1
    assert sum("aaa Downloading" in line for line in lines) == 1
    assert any("Digest: " + DIGEST in line for line in lines)


def test_the_log_of_a_long_pull_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeAPI()
    api.pulled_as = {REF: IMAGE_ID}
    api.events = [e for n in range(500) for e in _layer_events(f"l{n}", 10)]
    with caplog.at_level(logging.INFO, logger="sandboxer"):
        DockerImages(api).ready(REF, PullPolicy.MISSING)
    lines = [r.getMessage() for r in caplog.records if r.name == "sandboxer"]
    assert len(lines) <= 202
    assert lines[-1].endswith("further progress not logged")


def test_malformed_events_are_skipped() -> None:
    api = FakeAPI()
    api.pulled_as = {REF: IMAGE_ID}
    api.events = [
        "not a mapping",  # type: ignore[list-item]
        {"status": "Downloading", "progressDetail": "x", "id": "aaa"},
        {"status": "Downloading", "progressDetail": {"current": "1"}, "id": "aaa"},
    ]
    seen: list[Any] = []
    DockerImages(api).ready(REF, PullPolicy.MISSING, lambda *a: seen.append(a))
    assert seen == []


# built-ins -------------------------------------------------------------------------------
def test_a_busybox_builtin_is_imported_once_then_costs_no_engine_call() -> None:
    api = FakeAPI()
    images = DockerImages(api)
    first = images.ready("sandboxer/minimal", PullPolicy.ALWAYS)
    calls = len(api.calls)
    second = images.ready("sandboxer/minimal", PullPolicy.NEVER)
    assert first == second and first.reference == f"sandboxer/minimal:{IMAGE_VERSION}"
    assert first.builtin and first.config == ImageConfig()  # runs nothing of its own
    assert api.kinds().count("import") == 1 and len(api.calls) == calls
    assert "pull" not in api.kinds()


class FakeStore:
    def __init__(self, layout: Path) -> None:
        self.layout = layout
        self.resolved: list[tuple[str, str]] = []

    def resolve(self, image: str, pull: str, progress: Any = None) -> Any:
        self.resolved.append((image, str(pull)))
        return _images.LocalImage(
            reference=image,
            digest=DIGEST,
            config=ImageConfig(cmd=("bash",)),
            rootfs=self.layout / "rootfs",
            size=1,
            layout=self.layout,
            layout_tag="debian-tag",
        )


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeStore:
    fake = FakeStore(tmp_path)
    monkeypatch.setattr(_images, "default_store", lambda: fake)
    return fake


@pytest.fixture
def skopeo(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The skopeo commands run; each 'loads' nothing, so the fake API adds the image."""
    runs: list[list[str]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        runs.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(_images.subprocess, "run", run)
    return runs


def test_a_debian_builtin_is_loaded_from_the_store_once(
    store: FakeStore, skopeo: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    api = FakeAPI()
    images = DockerImages(api)
    ready = images.ready("sandboxer/debian", PullPolicy.MISSING)
    name = f"sandboxer/debian:{'ab' * 8}"
    assert ready.reference == name and ready.builtin
    assert ready.config == ImageConfig()  # its Cmd does not stop it idling
    assert skopeo == [
        ["skopeo", "copy", "--quiet", f"oci:{store.layout}:debian-tag", f"docker-daemon:{name}"]
    ]
    # Also tagged with the plain name, for `FROM sandboxer/debian` in a Dockerfile.
    assert ("tag", (name, "sandboxer/debian", "latest")) in api.calls
    api.images[name] = {"Id": IMAGE_ID}
    calls = len(api.calls)
    images.ready("sandboxer/debian", PullPolicy.MISSING)
    assert len(skopeo) == 1 and len(api.calls) == calls  # no load, no engine call
    assert store.resolved == [("sandboxer/debian", "missing")] * 2
    # Another process (a new DockerImages) finds it on the engine and loads nothing.
    DockerImages(api).ready("sandboxer/debian", PullPolicy.MISSING)
    assert len(skopeo) == 1


def test_skopeo_talks_to_the_engine_docker_host_names(
    store: FakeStore, skopeo: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    DockerImages(FakeAPI()).ready("sandboxer/debian", PullPolicy.MISSING)
    assert "--dest-daemon-host=tcp://127.0.0.1:2375" in skopeo[0]


def test_a_failed_load_says_why(store: FakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess(argv, 1, b"", b"x" * 100_000 + b"no space left")

    monkeypatch.setattr(_images.subprocess, "run", run)
    with pytest.raises(sandboxer.SandboxError, match="no space left") as caught:
        DockerImages(FakeAPI()).ready("sandboxer/debian", PullPolicy.MISSING)
    assert len(str(caught.value)) < 5_000


def test_a_missing_skopeo_is_image_not_found_with_the_fix(
    store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        raise FileNotFoundError("skopeo")

    monkeypatch.setattr(_images.subprocess, "run", run)
    with pytest.raises(ImageNotFound, match="apt-get install -y skopeo"):
        DockerImages(FakeAPI()).ready("sandboxer/debian", PullPolicy.MISSING)


# builds ----------------------------------------------------------------------------------
class BuildingAPI:
    def __init__(self, records: list[Any], error: Exception | None = None) -> None:
        self.records, self.error = records, error
        self.kwargs: dict[str, Any] = {}

    def build(self, **kwargs: Any) -> Iterator[Any]:
        self.kwargs = kwargs
        yield from self.records
        if self.error is not None:
            raise self.error


def test_a_build_streams_the_engines_records_for_linux_amd64(tmp_path: Path) -> None:
    api = BuildingAPI([{"stream": "Step 1/1 : FROM x\n"}, "junk", {"aux": {"ID": IMAGE_ID}}])
    records = list(
        build_stream(
            api, tmp_path, dockerfile="Dockerfile", tag="t:1", build_args={"A": "1"}, no_cache=True
        )
    )
    assert records == [{"stream": "Step 1/1 : FROM x\n"}, {"aux": {"ID": IMAGE_ID}}]
    assert api.kwargs["path"] == str(tmp_path) and api.kwargs["platform"] == PLATFORM
    assert (api.kwargs["buildargs"], api.kwargs["nocache"], api.kwargs["forcerm"]) == (
        {"A": "1"},
        True,
        True,
    )


def test_a_build_failing_midway_is_a_sandboxer_error(tmp_path: Path) -> None:
    api = BuildingAPI([{"stream": "Step 1/2\n"}], _api_error(500, "Cannot locate Dockerfile"))
    stream = build_stream(
        api, tmp_path, dockerfile="Dockerfile", tag="t:1", build_args={}, no_cache=False
    )
    with pytest.raises(sandboxer.EngineError, match="Cannot locate Dockerfile"):
        list(stream)


# credentials -----------------------------------------------------------------------------
class _Sent(Exception):
    pass


def test_a_pull_sends_the_credentials_docker_config_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK's own client (no engine: the request is caught before it leaves), made
    # before a `docker login` changed the config it read.
    config = tmp_path / "config.json"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    token = base64.b64encode(b"tester:secret").decode()
    config.write_text(json.dumps({"auths": {"elsewhere.example:5000": {"auth": token}}}))
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    sent: dict[str, Any] = {}

    def post(url: str, **kwargs: Any) -> None:
        sent.update(kwargs)
        raise _Sent

    monkeypatch.setattr(api, "_post", post)
    config.write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": token}}}))
    with pytest.raises(_Sent):
        pull(api, parse_reference(REF), None)
    header = json.loads(base64.urlsafe_b64decode(sent["headers"]["X-Registry-Auth"]))
    assert (header["username"], header["password"]) == ("tester", "secret")
    assert sent["params"] == {"tag": "1", "fromImage": NAME, "platform": PLATFORM}
