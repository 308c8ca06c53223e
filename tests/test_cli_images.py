"""`sandboxer images ...` and Dockerfile builds, with the image store and the engines faked."""

from __future__ import annotations

import builtins
import io
import json
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

import sandboxer
from sandboxer import ImageNotFound, ImagePullFailed, InvalidSpec, PullPolicy, _registry, _selector
from sandboxer.cli import _completion, _image_store, _images, _progress, build_parser, main
from sandboxer.images import ImageConfig, build, debian
from sandboxer.images.store import LocalImage, StoredImage
from sandboxer.testing import FakeBackend

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
THIRD = "sha256:" + "ef" * 32


class FakeStore:
    """The image store's public operations, over a dict; records what it was asked."""

    def __init__(self) -> None:
        self.images: dict[str, StoredImage] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None

    def add(self, reference: str, digest: str, size: int = 3 * 1024 * 1024) -> None:
        self.images[digest] = StoredImage((reference,), digest, size, 1000.0, ("rootfs.ext4",))

    def local(self, reference: str, digest: str) -> LocalImage:
        config = ImageConfig(cmd=("python3",), env=(("PATH", "/bin"),), workdir="/app")
        return LocalImage(
            reference, digest, config, Path("/store/rootfs"), 5, Path("/store/oci"), "t"
        )

    def resolve(self, image: str, pull: str = "missing", progress: Any = None) -> LocalImage:
        self.calls.append(("resolve", image, pull))
        if self.fail is not None:
            raise self.fail
        if progress is not None:
            progress(f"pulling {image}", 0, 2)
            progress(f"pulling {image}", 2, 2)
            progress(f"unpacking {image}", 1, 2)
        for stored in self.images.values():
            if image in [ref.split("@recipe:")[0] for ref in stored.references]:
                return self.local(image, stored.digest)
        if pull == "never":
            raise ImageNotFound(f"{image} is not stored")
        self.add(image, DIGEST)
        return self.local(image, DIGEST)

    def import_docker(self, name: str, progress: Any = None) -> LocalImage:
        self.calls.append(("import_docker", name))
        if progress is not None:
            progress(f"unpacking {name}", 1, 1)
        self.add(name, OTHER)
        return self.local(name, OTHER)

    def list(self) -> list[StoredImage]:
        return list(self.images.values())

    def remove(self, image_or_digest: str) -> bool:
        self.calls.append(("remove", image_or_digest))
        return self.images.pop(image_or_digest, None) is not None

    def prune(self, max_bytes: int | None = None) -> builtins.list[StoredImage]:
        self.calls.append(("prune", max_bytes))
        bound = 10**12 if max_bytes is None else max_bytes
        evicted = []
        for digest in sorted(self.images, key=lambda d: self.images[d].last_used):
            if sum(i.size for i in self.images.values()) <= bound:
                break
            evicted.append(self.images.pop(digest))
        return evicted


class FakeDocker(FakeBackend):
    """A Docker-like engine: pulls natively and builds Dockerfiles."""

    name: ClassVar[str] = "docker"
    pulls: ClassVar[list[tuple[str, PullPolicy]]] = []
    builds: ClassVar[list[dict[str, Any]]] = []
    stream: ClassVar[list[dict[str, Any]]] = []

    def pull_image(self, image: str, policy: PullPolicy, progress: Any = None) -> str:
        self.pulls.append((image, policy))
        if progress is not None:
            progress(f"pulling {image}", 512 * 1024, 2 * 1024 * 1024)
        return "sha256:id"

    def build_image(self, context: Path, **fields: Any) -> Iterable[Mapping[str, Any]]:
        self.builds.append({"context": context, **fields})
        return iter(self.stream)


class FakeIncus(FakeBackend):
    """An engine that keeps converted copies of stored images."""

    name: ClassVar[str] = "incus"
    copies: ClassVar[list[str]] = []  # digests

    def converted(self) -> list[str]:
        return list(self.copies)

    def remove_converted(self, digest: str) -> bool:
        FakeIncus.copies = [copy for copy in self.copies if copy != digest]
        return True


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStore]:
    """Only these engines (fake, docker, incus, all fakes) and a fake store."""
    fake = FakeStore()
    monkeypatch.setattr(_images, "default_store", lambda: fake)
    monkeypatch.setattr(_image_store, "default_store", lambda: fake)
    monkeypatch.setattr(_registry, "_entry_points", dict)
    sandboxer.register_backend("docker", FakeDocker)
    sandboxer.register_backend("incus", FakeIncus)
    FakeDocker.pulls, FakeDocker.builds, FakeDocker.stream = [], [], []
    FakeIncus.copies = []
    _selector._probe_cache.clear()
    yield fake
    sandboxer.unregister_backend("docker")
    sandboxer.unregister_backend("incus")
    _selector._probe_cache.clear()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# pull ----------------------------------------------------------------------------------
def test_pull_fills_the_store_and_docker(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    code, out, err = run_cli(capsys, "images", "pull", "127.0.0.1:5000/app:1")
    assert code == 0
    assert store.calls == [("resolve", "127.0.0.1:5000/app:1", PullPolicy.ALWAYS)]
    assert FakeDocker.pulls == [("127.0.0.1:5000/app:1", PullPolicy.ALWAYS)]
    assert out.splitlines() == [
        f"127.0.0.1:5000/app:1 {DIGEST} in the image store (for fake, incus)",
        "127.0.0.1:5000/app:1 pulled into docker",
    ]
    # Not a terminal: one plain line per phase, no bar and no control codes.
    assert err.splitlines() == [
        "pulling 127.0.0.1:5000/app:1",
        "unpacking 127.0.0.1:5000/app:1",
        "pulling 127.0.0.1:5000/app:1",
    ]


def test_pull_for_docker_alone_leaves_the_store_alone(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    code, out, _ = run_cli(capsys, "images", "pull", "--backend", "docker", "app")
    assert code == 0 and out == "app pulled into docker\n"
    assert store.calls == []


def test_pull_failure_prints_the_fix_and_exits_1(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    store.fail = ImagePullFailed(
        "cannot pull 127.0.0.1:1/app:1: the registry is unreachable\n  fix: is it running?"
    )
    code, out, err = run_cli(capsys, "images", "pull", "127.0.0.1:1/app:1")
    assert code == 1 and out == ""
    assert err == (
        "sandboxer: error: cannot pull 127.0.0.1:1/app:1: the registry is unreachable\n"
        "  fix: is it running?\n"
    )
    assert "Traceback" not in err and FakeDocker.pulls == []


@pytest.mark.parametrize(
    "argv, field",
    [
        (["UPPER/case"], "REF"),
        (["sandboxer/debian"], "REF"),  # built in: built, never pulled
        (["app", "--backend", "nope"], None),
    ],
)
def test_pull_checks_its_arguments_before_any_engine(
    capsys: pytest.CaptureFixture[str], store: FakeStore, argv: list[str], field: str | None
) -> None:
    code, _, err = run_cli(capsys, "images", "pull", *argv)
    if field is None:  # an unknown engine: said so, and nothing pulled anywhere
        assert code == 125 and "nope is unavailable" in err
    else:
        assert code == 2 and err.startswith(f"sandboxer: error: {field}: ")
    assert store.calls == [] and FakeDocker.pulls == []


# build -t ------------------------------------------------------------------------------
@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM sandboxer/debian:x\n")
    (tmp_path / "Dockerfile.outside").write_text("FROM scratch\n")
    return tmp_path / "app"


def test_build_request_defaults(context: Path) -> None:
    request = build.build_request(str(context), "myapp")
    assert request == build.BuildRequest(context, "Dockerfile", "myapp", {}, False)
    assert request.reference == "docker.io/library/myapp:latest"
    (context / "Dockerfile").rename(context / "Containerfile")
    assert build.build_request(str(context), "myapp").dockerfile == "Containerfile"


def test_build_request_takes_a_dockerfile_inside_the_context(
    context: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (context / "sub").mkdir()
    (context / "sub" / "Build.file").write_text("FROM x\n")
    monkeypatch.chdir(context)
    request = build.build_request(".", "a/b:1", "sub/Build.file", ["K=v=w", "E"], True, {"E": "1"})
    assert request.dockerfile == "sub/Build.file"
    assert request.build_args == {"K": "v=w", "E": "1"} and request.no_cache


@pytest.mark.parametrize(
    "arguments, field, words",
    [
        ({"context": "missing"}, "context", "is not a directory"),
        ({"tag": "Bad Tag"}, "--tag", "is not an image name"),
        ({"tag": "app@sha256:" + "0" * 64}, "--tag", "has a digest"),
        ({"tag": "sandboxer/debian"}, "--tag", "built-in"),
        ({"tag": "sandboxer/minimal:2"}, "--tag", "built-in"),
        ({"dockerfile": "nope"}, "--file", "is not a file"),
        ({"dockerfile": "OUTSIDE"}, "--file", "outside the build context"),
        ({"dockerfile": "LINK"}, "--file", "outside the build context"),
        ({"build_args": ["=x"]}, "--build-arg", "is not KEY=VALUE"),
        ({"build_args": ["1A=x"]}, "--build-arg", "is not KEY=VALUE"),
        ({"build_args": ["UNSET_HERE"]}, "--build-arg", "not in the environment"),
    ],
)
def test_build_request_names_the_bad_argument(
    context: Path, arguments: dict[str, Any], field: str, words: str
) -> None:
    outside = context.parent / "Dockerfile.outside"
    (context / "link").symlink_to(outside)  # a link in the context to a file outside it
    given: dict[str, Any] = {"context": str(context), "tag": "app", **arguments}
    given["dockerfile"] = {"OUTSIDE": str(outside), "LINK": str(context / "link")}.get(
        given.get("dockerfile", ""), given.get("dockerfile")
    )
    with pytest.raises(InvalidSpec, match=words) as caught:
        build.build_request(environ={}, **given)
    assert caught.value.field == field


def test_build_without_a_dockerfile_in_the_context(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpec, match="no Dockerfile or Containerfile") as caught:
        build.build_request(str(tmp_path), "app")
    assert caught.value.field == "--file"
    (tmp_path / "Dockerfile").symlink_to("/etc/hostname")  # the default name, leading out
    with pytest.raises(InvalidSpec, match="outside the build context") as caught:
        build.build_request(str(tmp_path), "app")
    assert caught.value.field == "--file"


STREAM: list[dict[str, Any]] = [
    {"stream": "Step 1/2 : FROM sandboxer/debian:x\n"},
    {"stream": " ---> 1a2b\n"},
    {"stream": "Step 2/2 : RUN echo \x1b[31mred\x1b[0m"},
    {"stream": "\nred\n"},
    {"aux": {"ID": "sha256:built"}},
    {"stream": "Successfully built built\n"},
]


def test_follow_build_reports_steps_output_and_the_id() -> None:
    seen: list[tuple[str, int, int | None]] = []
    lines: list[str] = []
    image_id = build.follow_build(
        STREAM, "building app", lambda *call: seen.append(call), lines.append
    )
    assert image_id == "sha256:built"
    assert seen == [("building app", 1, 2), ("building app", 2, 2)]
    assert lines == [
        "Step 1/2 : FROM sandboxer/debian:x",
        " ---> 1a2b",
        "Step 2/2 : RUN echo \x1b[31mred\x1b[0m",  # cleaned where it is shown
        "red",
        "Successfully built built",
    ]


def test_follow_build_bounds_a_line_without_end() -> None:
    lines: list[str] = []
    stream = [{"stream": "x" * 3000} for _ in range(3)] + [{"aux": {"ID": "sha256:i"}}]
    build.follow_build(stream, "b", None, lines.append)
    assert [len(line) for line in lines] == [6000, 3000]


@pytest.mark.parametrize(
    "stream, words",
    [
        (
            [{"stream": "Step 1/1 : RUN false\n"}, {"error": "e", "errorDetail": {"message": "m"}}],
            "^m$",
        ),
        ([{"error": "returned a non-zero code: 1\n"}], "^returned a non-zero code: 1$"),
        ([{"stream": "Step 1/1 : FROM x\n"}], "without an image"),
    ],
)
def test_follow_build_failures(stream: list[dict[str, Any]], words: str) -> None:
    with pytest.raises(build.BuildFailed, match=words):
        build.follow_build(stream, "b")


def test_build_dockerfile_through_docker_into_the_store(
    capsys: pytest.CaptureFixture[str], store: FakeStore, context: Path
) -> None:
    FakeDocker.stream = STREAM
    code, out, err = run_cli(
        capsys, "images", "build", "-t", "myapp:1", "--build-arg", "A=1", "--no-cache", str(context)
    )
    assert code == 0, err
    assert FakeDocker.builds == [
        {
            "context": context,
            "dockerfile": "Dockerfile",
            "tag": "myapp:1",
            "build_args": {"A": "1"},
            "no_cache": True,
        }
    ]
    assert store.calls == [("import_docker", "myapp:1")]
    assert out.startswith(f"docker.io/library/myapp:1 {OTHER} built (")
    assert err.splitlines() == [
        "building myapp:1",
        "Step 1/2 : FROM sandboxer/debian:x",
        " ---> 1a2b",
        "Step 2/2 : RUN echo red",  # the escape codes are gone
        "red",
        "Successfully built built",
        "copying myapp:1 into the image store",
        "unpacking myapp:1",
    ]


def test_a_failed_build_exits_1_with_the_engines_message(
    capsys: pytest.CaptureFixture[str], store: FakeStore, context: Path
) -> None:
    FakeDocker.stream = [{"error": "The command '/bin/sh -c false' returned a non-zero code: 1"}]
    code, out, err = run_cli(capsys, "images", "build", "-t", "app", str(context))
    assert (code, out) == (1, "")
    assert err.endswith(
        "sandboxer: error: The command '/bin/sh -c false' returned a non-zero code: 1\n"
    )
    assert store.calls == []


@pytest.mark.parametrize(
    "argv, field",
    [
        (["-t", "app"], "context"),
        (["-t", "app", "--backend", "incus", "CONTEXT"], "--backend"),
        (["-t", "app", "MISSING"], "context"),
        (["-t", "APP", "CONTEXT"], "--tag"),
        (["-f", "Dockerfile"], "--file"),
        (["--build-arg", "A=1", "sandboxer/minimal"], "--build-arg"),
        (["--no-cache"], "--no-cache"),
    ],
)
def test_build_checks_its_arguments_before_any_engine(
    capsys: pytest.CaptureFixture[str],
    store: FakeStore,
    context: Path,
    argv: list[str],
    field: str,
) -> None:
    argv = [{"CONTEXT": str(context), "MISSING": str(context / "no")}.get(a, a) for a in argv]
    code, out, err = run_cli(capsys, "images", "build", *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"sandboxer: error: {field}: ")
    assert FakeDocker.builds == [] and store.calls == []


def test_build_of_a_builtin_image_keeps_its_form(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    code, out, _ = run_cli(capsys, "images", "build", "--backend", "fake", "sandboxer/minimal")
    assert code == 0 and out.startswith("sandboxer/minimal ready on fake")
    assert FakeBackend.sandboxes == {} and store.calls == []  # launched, removed; no store
    code, _, err = run_cli(capsys, "images", "build", "--backend", "fake", "other/image")
    assert code == 125 and "other/image on fake" in err


# ls, inspect, rm, prune -------------------------------------------------------------------
def test_ls_json_shape(capsys: pytest.CaptureFixture[str], store: FakeStore) -> None:
    store.add("docker.io/library/app:1", DIGEST)
    FakeIncus.copies = [DIGEST, OTHER]
    code, out, _ = run_cli(capsys, "images", "ls", "--json")
    entries = json.loads(out)
    assert code == 0
    builtin = [entry for entry in entries if entry["kind"] == "builtin"]
    assert [entry["name"] for entry in builtin] == [
        "sandboxer/minimal",
        "sandboxer/system",
        "sandboxer/debian",
        "sandboxer/systemd",
    ]
    assert all(set(entry) == {"kind", "name", "version", "from"} for entry in builtin)
    assert entries[len(builtin) :] == [
        {
            "kind": "stored",
            "name": "docker.io/library/app:1",
            "references": ["docker.io/library/app:1"],
            "digest": DIGEST,
            "size": 3 * 1024 * 1024,
            "last_used": 1000.0,
            "derived": ["rootfs.ext4"],
        },
        {
            "kind": "converted",
            "name": "docker.io/library/app:1",
            "backend": "incus",
            "digest": DIGEST,
        },
        {"kind": "converted", "name": OTHER, "backend": "incus", "digest": OTHER},
    ]


def test_ls_table(capsys: pytest.CaptureFixture[str], store: FakeStore) -> None:
    store.add("docker.io/library/app:1", DIGEST)
    code, out, _ = run_cli(capsys, "images", "ls")
    assert code == 0
    assert "sandboxer/debian" in out and "CONVERTED" not in out
    FakeIncus.copies = [DIGEST, THIRD]
    converted = run_cli(capsys, "images", "ls")[1].split("\n\n")[-1].splitlines()
    assert [line.split() for line in converted] == [
        ["CONVERTED", "BACKEND", "DIGEST"],
        ["docker.io/library/app:1", "incus", "abababababab"],
        ["(not", "in", "the", "store)", "incus", "efefefefefef"],
    ]
    stored = next(line for line in out.splitlines() if line.startswith("docker.io"))
    assert stored.split()[1:4] == ["abababababab", "3.0", "MB"]
    assert stored.endswith("rootfs.ext4")


def test_inspect_json(capsys: pytest.CaptureFixture[str], store: FakeStore) -> None:
    store.add("docker.io/library/app:1", DIGEST)
    FakeIncus.copies = [DIGEST, OTHER]
    code, out, _ = run_cli(capsys, "images", "inspect", "--json", "app:1")
    assert code == 0
    assert json.loads(out) == {
        "reference": "docker.io/library/app:1",
        "references": ["docker.io/library/app:1"],
        "digest": DIGEST,
        "size": 3 * 1024 * 1024,
        "config": {
            "Entrypoint": [],
            "Cmd": ["python3"],
            "Env": ["PATH=/bin"],
            "WorkingDir": "/app",
            "User": "",
        },
        "cached": {
            "rootfs": "/store/rootfs",
            "layout": "/store/oci",
            "layout_tag": "t",
            "derived": ["rootfs.ext4"],
            "engines": ["incus"],
        },
    }
    assert ("resolve", "docker.io/library/app:1", PullPolicy.NEVER) in store.calls
    code, out, _ = run_cli(capsys, "images", "inspect", DIGEST)
    assert code == 0 and "cmd           python3" in out and "converted on  incus" in out


def test_inspect_shows_no_escape_codes_of_the_image(
    capsys: pytest.CaptureFixture[str], store: FakeStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add("docker.io/library/app:1", DIGEST)
    hostile = ImageConfig(env=(("X", "\x1b]0;owned\x07\x1b[2J"),), user="\x9b6n")
    monkeypatch.setattr(
        store,
        "local",
        lambda ref, digest: LocalImage(ref, digest, hostile, Path("/r"), 1, Path("/l"), "t"),
    )
    code, out, _ = run_cli(capsys, "images", "inspect", "app:1")
    assert code == 0 and "X=]0;owned" in out and "user          6n" in out
    assert not any(char in out for char in "\x1b\x07\x9b")
    assert "\\u001b" in run_cli(capsys, "images", "inspect", "--json", "app:1")[1]


def test_inspect_of_what_is_not_stored(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    code, out, err = run_cli(capsys, "images", "inspect", "app:2")
    assert (code, out) == (1, "")
    assert err == (
        "sandboxer: error: app:2 is not in the image store; fix: sandboxer images pull app:2\n"
    )
    assert store.calls == []  # nothing pulled or built


def test_rm_removes_the_store_copy_and_the_converted_ones(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    store.add("docker.io/library/app:1", DIGEST)
    FakeIncus.copies = [DIGEST, OTHER]
    code, out, err = run_cli(capsys, "images", "rm", "app:1", OTHER, "gone:1")
    assert code == 1
    assert out.splitlines() == [
        "app:1: removed from the image store, incus",
        f"{OTHER}: removed from incus",
    ]
    assert err == "sandboxer: error: gone:1 is not in the image store nor converted on any engine\n"
    assert store.images == {} and FakeIncus.copies == []


def test_prune(capsys: pytest.CaptureFixture[str], store: FakeStore) -> None:
    store.add("old:1", DIGEST, size=2 * 1024**3)
    store.add("new:1", OTHER, size=1024**3)
    store.images[OTHER] = attrs.evolve(store.images[OTHER], last_used=2000.0)
    FakeIncus.copies = [DIGEST, OTHER, THIRD]  # THIRD: converted for another store
    code, out, _ = run_cli(capsys, "images", "prune", "--max-size", "1g")
    assert code == 0 and store.calls == [("prune", 1024**3)]
    assert out.splitlines() == [
        "evicted old:1 (2.0 GB)",
        "1 image(s) evicted, 2.0 GB freed; converted copies removed from incus",
    ]
    assert FakeIncus.copies == [OTHER, THIRD]
    code, out, _ = run_cli(capsys, "images", "prune", "--all")
    assert code == 0 and store.calls[-1] == ("prune", 0)
    assert store.images == {} and FakeIncus.copies == [THIRD]


@pytest.mark.parametrize("argv", [["--max-size", "lots"], ["--max-size", "0"]])
def test_prune_checks_the_bound(
    capsys: pytest.CaptureFixture[str], store: FakeStore, argv: list[str]
) -> None:
    code, _, err = run_cli(capsys, "images", "prune", *argv)
    assert code == 2 and err.startswith("sandboxer: error: --max-size: ")
    assert store.calls == []


def test_prune_bounds_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["images", "prune", "--all", "--max-size", "1g"])
    assert caught.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# progress rendering ---------------------------------------------------------------------
def test_progress_in_a_pipe_is_one_plain_line_per_phase() -> None:
    stream = io.StringIO()
    display = _progress.ProgressDisplay(stream, live=False)
    for done in range(0, 5 * 1024**2, 1024**2):
        display("pulling \x1b[2Japp", done, 5 * 1024**2)
    display.line("a line\r\x1b[1A\x9b2J\x1b]0;title\x07")
    display("unpacking app", 1, 3)
    display.close()
    assert stream.getvalue() == "pulling app\na line2J]0;title\nunpacking app\n"


def test_progress_on_a_terminal_redraws_a_bar() -> None:
    stream = io.StringIO()
    display = _progress.ProgressDisplay(stream, live=True)
    display("pulling app", 1024**2, 4 * 1024**2)
    display("pulling app", 4 * 1024**2, 4 * 1024**2)
    display("copying app", 0, None)
    display("unpacking app", 1, 3)
    display.close()
    text = stream.getvalue()
    assert "\r\x1b[Kcopying app\n" in text
    assert "\r\x1b[Kpulling app [######..................]  25% 1.0 MB/4.0 MB" in text
    assert "pulling app [########################] 100% 4.0 MB/4.0 MB\n" in text
    assert text.endswith("\r\x1b[Kunpacking app [########................]  33% 1/3\n")


@pytest.mark.parametrize(
    "done, total, text",
    [
        (0, None, ""),
        (3, None, "3"),
        (0, 7, "0/7"),
        (2048, None, "2.0 KB"),
        (512, 2048, "512 B/2.0 KB"),
        (5 * 1024**3, 6 * 1024**3, "5.0 GB/6.0 GB"),
    ],
)
def test_amounts(done: int, total: int | None, text: str) -> None:
    assert _progress.amount(done, total) == text


# completion -------------------------------------------------------------------------------
def test_completion_offers_images(capsys: pytest.CaptureFixture[str], store: FakeStore) -> None:
    store.images["sha256:" + "0" * 64] = StoredImage(
        ("sandboxer/debian@recipe:1234", "docker.io/library/app:1"), "sha256:" + "0" * 64, 1, 0, ()
    )
    code, out, _ = run_cli(capsys, "completion", "--list", "images")
    assert code == 0 and out.splitlines() == [
        "sandboxer/minimal",
        "sandboxer/system",
        "sandboxer/debian",
        "sandboxer/systemd",
        "docker.io/library/app:1",
    ]
    script = _completion.bash_script(build_parser())
    for words, expected in [
        (["images", "rm", "do"], {"docker.io/library/app:1"}),
        (["images", "inspect", ""], {"docker.io/library/app:1", "sandboxer/debian"}),
        (["images", "pull", "--backend", ""], {"fake"}),
        (["images", "p"], {"pull", "prune"}),
    ]:
        quoted = " ".join(f"'{word}'" for word in ["sandboxer", *words])
        probe = (
            f"{script}\n"
            # The script asks `sandboxer completion --list ...`: this stands in for it.
            'sandboxer() { case "$3" in images) echo docker.io/library/app:1 sandboxer/debian;;'
            " backends) echo fake;; esac; }\n"
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _sandboxer_complete; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        assert set(done.stdout.split()) == expected, words


def test_build_needs_a_docker_engine_that_builds(
    capsys: pytest.CaptureFixture[str],
    store: FakeStore,
    context: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(FakeDocker, "available", False)
    code, _, err = run_cli(capsys, "images", "build", "-t", "app", str(context))
    assert code == 125 and "backend 'docker' is unavailable: fake engine switched off" in err
    monkeypatch.setattr(FakeDocker, "available", True)
    sandboxer.register_backend("docker", FakeIncus, replace=True)  # an engine without builds
    _selector._probe_cache.clear()
    code, _, err = run_cli(capsys, "images", "build", "-t", "app", str(context))
    assert code == 125 and "cannot build images" in err
    assert store.calls == []


def test_build_of_every_builtin_image_builds_the_stored_ones_first(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    code, out, err = run_cli(capsys, "images", "build", "--backend", "fake")
    assert store.calls == [
        ("resolve", "sandboxer/debian", PullPolicy.MISSING),
        ("resolve", "sandboxer/systemd", PullPolicy.MISSING),
    ]
    assert [line.split(" (")[0] for line in out.splitlines()] == [
        "sandboxer/debian ready in the image store",
        "sandboxer/systemd ready in the image store",
        "sandboxer/minimal ready on fake",
        "sandboxer/system ready on fake",
    ]
    # The fake engine has no Debian images: said so, per image, after the store built them.
    assert code == 125 and "sandboxer/debian on fake: no image" in err


def test_a_builtin_image_the_store_cannot_build_is_not_launched(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    store.fail = ImageNotFound("building sandboxer/debian needs mmdebstrap; fix: apt-get ...")
    code, out, err = run_cli(capsys, "images", "build", "--backend", "fake", "sandboxer/debian")
    assert (code, out) == (125, "")
    assert err == (
        "sandboxer: error: sandboxer/debian: building sandboxer/debian needs mmdebstrap; "
        "fix: apt-get ...\n"
    )


def test_builtin_images_in_the_store_go_by_their_name(
    capsys: pytest.CaptureFixture[str], store: FakeStore
) -> None:
    current = f"sandboxer/debian@recipe:{debian.recipe_key('sandboxer/debian')}"
    store.images[DIGEST] = StoredImage((current,), DIGEST, 1, 5.0, ())
    store.images[OTHER] = StoredImage(("sandboxer/debian@recipe:0ld",), OTHER, 1, 1.0, ())
    stored = [
        e for e in json.loads(run_cli(capsys, "images", "ls", "--json")[1]) if e["kind"] == "stored"
    ]
    assert [(e["name"], e["references"]) for e in stored] == [
        ("sandboxer/debian", [current]),
        ("sandboxer/debian", ["sandboxer/debian@recipe:0ld"]),
    ]
    code, out, _ = run_cli(capsys, "images", "inspect", "--json", "sandboxer/debian")
    assert code == 0 and json.loads(out)["digest"] == DIGEST
    assert store.calls == [("resolve", "sandboxer/debian", PullPolicy.NEVER)]
    # An older recipe's build: resolving its name would build the current one instead.
    code, out, err = run_cli(capsys, "images", "inspect", OTHER)
    assert (code, out) == (1, "") and "an older sandboxer/debian recipe" in err
    assert len(store.calls) == 1
    # rm of the name removes every build of it.
    FakeIncus.copies = [OTHER]
    code, out, _ = run_cli(capsys, "images", "rm", "sandboxer/debian")
    assert (code, out) == (0, "sandboxer/debian: removed from the image store, incus\n")
    assert store.images == {} and FakeIncus.copies == []
    code, _, err = run_cli(capsys, "images", "inspect", "sandboxer/debian")
    assert code == 1 and err.endswith("fix: sandboxer images build sandboxer/debian\n")
