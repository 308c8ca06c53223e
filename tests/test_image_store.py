"""The image store with a fake registry: pull policies, digests, checks of what a registry
sends, built-in and Docker-engine images, derived artifacts, LRU eviction under the bound,
and skopeo's command lines and error messages."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sandboxer import EngineError, ImageNotFound, ImagePullFailed, InvalidSpec
from sandboxer.images import _cache, _fetch, store
from sandboxer.images.reference import ImageReference, parse_reference
from sandboxer.images.store import ImageStore, LocalImage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
HOST = "127.0.0.1:5000"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def descriptor(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha(data), "size": len(data), **extra}


class FakeRegistry:
    """A registry in memory, reached as the store reaches skopeo; it counts its calls."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, bytes] = {}  # "repo:tag" or "repo@digest" -> raw manifest
        self.calls: list[str] = []
        self.docker: dict[str, bytes] = {}  # Docker engine images: name -> manifest

    def blob(self, data: bytes) -> str:
        self.blobs[sha(data)] = data
        return sha(data)

    def image(
        self,
        files: dict[str, bytes],
        *,
        media_type: str = OCI_MANIFEST,
        config: dict[str, Any] | None = None,
        layers: list[bytes] | None = None,
        platform: tuple[str, str] = ("linux", "amd64"),
    ) -> bytes:
        """A manifest (stored by digest) of an image holding `files`."""
        document = {
            "os": platform[0],
            "architecture": platform[1],
            "config": config or {"Cmd": ["/bin/app"], "Env": ["A=1"]},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
        config_blob = json.dumps(document).encode()
        self.blob(config_blob)
        blobs = layers if layers is not None else [layer(files)]
        for data in blobs:
            self.blob(data)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": descriptor(config_blob, "application/vnd.oci.image.config.v1+json"),
                "layers": [descriptor(data, GZIP_LAYER) for data in blobs],
            }
        ).encode()
        self.blob(manifest)
        return manifest

    def push(self, name: str, manifest: bytes) -> str:
        """Publish `manifest` as the repository:tag `name`; its digest."""
        repository = name.rsplit(":", 1)[0]
        self.manifests[f"{HOST}/{name}"] = manifest
        self.manifests[f"{HOST}/{repository}@{sha(manifest)}"] = manifest
        return sha(manifest)

    def manifest(self, reference: ImageReference) -> bytes:
        self.calls.append(f"manifest {reference}")
        try:
            return self.manifests[str(reference)]
        except KeyError:
            raise ImagePullFailed(f"cannot pull {reference}: no such tag") from None

    def copy(
        self,
        reference: ImageReference,
        layout: Path,
        tag: str,
        layers: int,
        progress: _fetch.CopyProgress | None,
    ) -> None:
        self.calls.append(f"copy {reference}")
        assert reference.digest is not None and reference.tag is None  # always pinned
        self._write(layout, self.blobs[reference.digest], tag)
        if progress is not None:
            progress(layers, layers)

    def copy_from_docker(self, name: str, layout: Path, tag: str) -> None:
        self.calls.append(f"docker {name}")
        self._write(layout, self.docker[name], tag)

    def _write(self, layout: Path, manifest: bytes, tag: str) -> None:
        """What skopeo writes: the blobs, and the manifest named `tag` in index.json."""
        document = json.loads(manifest)
        folder = layout / "blobs" / "sha256"
        folder.mkdir(parents=True, exist_ok=True)
        for item in [document["config"], *document["layers"]]:
            (folder / item["digest"][7:]).write_bytes(self.blobs[item["digest"]])
        (folder / sha(manifest)[7:]).write_bytes(manifest)
        index_path = layout / "index.json"
        index = json.loads(index_path.read_text()) if index_path.exists() else {"manifests": []}
        index["manifests"] = [m for m in index["manifests"] if m["annotations"][REF_NAME] != tag]
        entry = descriptor(manifest, OCI_MANIFEST, annotations={REF_NAME: tag})
        index["manifests"].append(entry)
        index_path.write_text(json.dumps(index))


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def image_store(tmp_path: Path, registry: FakeRegistry) -> ImageStore:
    return ImageStore(tmp_path / "store", fetcher=registry)


def resolve(image_store: ImageStore, image: str, pull: str = "missing") -> LocalImage:
    return image_store.resolve(image, pull)


# -- pulls and pull policies ----------------------------------------------------------------


def test_a_pull_unpacks_the_image_and_gives_its_config(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    digest = registry.push("app:1", registry.image({"etc/os-release": b"ID=test\n"}))
    seen: list[tuple[str, int, int | None]] = []
    local = image_store.resolve(f"{HOST}/app:1", "missing", lambda *step: seen.append(step))
    assert local.digest == digest and local.reference == f"{HOST}/app:1"
    assert (local.rootfs / "etc/os-release").read_bytes() == b"ID=test\n"
    assert local.config.cmd == ("/bin/app",) and local.config.env == (("A", "1"),)
    assert local.size > 0 and local.layout_tag == f"sha256-{digest[7:]}"
    index = json.loads((local.layout / "index.json").read_text())
    assert [m["annotations"][REF_NAME] for m in index["manifests"]] == [local.layout_tag]
    assert (f"pulling {HOST}/app:1", 1, 1) in seen and (f"unpacking {HOST}/app:1", 1, 1) in seen
    assert registry.calls == [f"manifest {HOST}/app:1", f"copy {HOST}/app@{digest}"]
    # Only root may reach the tree: an image's setuid files are not for the host's users.
    assert os.stat(local.rootfs.parent).st_mode & 0o777 == 0o700


def test_missing_uses_the_local_copy_without_asking(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    first = resolve(image_store, f"{HOST}/app:1")
    registry.calls.clear()
    assert resolve(image_store, f"{HOST}/app:1") == first
    assert registry.calls == []


def test_a_short_reference_is_the_same_image(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    registry.manifests["docker.io/library/alpine:latest"] = registry.image({"a": b"1"})
    first = resolve(image_store, "alpine")
    registry.calls.clear()
    assert resolve(image_store, "docker.io/library/alpine:latest").digest == first.digest
    assert registry.calls == []


def test_never_without_a_local_copy_names_the_fix(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    with pytest.raises(ImageNotFound, match=f"pull it first: sandboxer images pull {HOST}/app:1"):
        resolve(image_store, f"{HOST}/app:1", "never")
    assert registry.calls == []


def test_never_uses_a_local_copy(image_store: ImageStore, registry: FakeRegistry) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    first = resolve(image_store, f"{HOST}/app:1")
    registry.calls.clear()
    assert resolve(image_store, f"{HOST}/app:1", "never") == first
    assert registry.calls == []


def test_a_digest_reference_is_found_by_digest(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    digest = registry.push("app:1", registry.image({"a": b"1"}))
    resolve(image_store, f"{HOST}/app:1")
    registry.calls.clear()
    assert resolve(image_store, f"{HOST}/app@{digest}", "never").digest == digest
    assert resolve(image_store, f"{HOST}/app:9@{digest}").digest == digest
    assert registry.calls == []


def test_always_asks_and_follows_a_moved_tag(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    old = registry.push("app:1", registry.image({"v": b"1"}))
    resolve(image_store, f"{HOST}/app:1")
    registry.calls.clear()
    assert resolve(image_store, f"{HOST}/app:1", "always").digest == old
    assert registry.calls == [f"manifest {HOST}/app:1"]  # same digest: nothing to copy
    new = registry.push("app:1", registry.image({"v": b"2"}))
    local = resolve(image_store, f"{HOST}/app:1", "always")
    assert local.digest == new and (local.rootfs / "v").read_bytes() == b"2"
    assert resolve(image_store, f"{HOST}/app:1").digest == new  # the tag now means the new one
    listed = {item.digest: item.references for item in image_store.list()}
    assert listed == {new: (f"{HOST}/app:1",), old: ()}


def test_a_multi_arch_index_gives_its_linux_amd64_image(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    arm = registry.image({"arch": b"arm64"}, platform=("linux", "arm64"))
    amd = registry.image({"arch": b"amd64"})
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(arm, OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64"}),
                descriptor(amd, OCI_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
            ],
        }
    ).encode()
    index_digest = registry.push("multi:1", index)
    registry.manifests[f"{HOST}/multi@{sha(amd)}"] = amd
    local = resolve(image_store, f"{HOST}/multi@{index_digest}")
    assert local.digest == sha(amd) and (local.rootfs / "arch").read_bytes() == b"amd64"
    registry.calls.clear()
    assert resolve(image_store, f"{HOST}/multi@{index_digest}", "never").digest == sha(amd)
    assert registry.calls == []


def test_an_index_without_linux_amd64_is_refused(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    arm = registry.image({}, platform=("linux", "arm64"))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            descriptor(arm, OCI_MANIFEST, platform={"os": "linux", "architecture": "arm64"})
        ],
    }
    registry.push("arm:1", json.dumps(index).encode())
    with pytest.raises(ImagePullFailed, match=r"no linux/amd64 image .only linux/arm64"):
        resolve(image_store, f"{HOST}/arm:1")


def test_a_single_image_for_another_platform_is_refused(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    registry.push("arm:1", registry.image({}, platform=("linux", "arm64")))
    with pytest.raises(ImagePullFailed, match="built for linux/arm64"):
        resolve(image_store, f"{HOST}/arm:1")
    assert_empty(image_store)


def assert_empty(image_store: ImageStore) -> None:
    """Nothing of a refused image is left: no entry, no tree, no blob, no layout entry."""
    assert image_store.list() == []
    assert not any((image_store.root / "images").glob("*/tree/*"))
    assert json.loads((image_store.layout / "index.json").read_text())["manifests"] == []
    assert os.listdir(image_store.layout / "blobs" / "sha256") == []


def test_a_manifest_that_does_not_match_the_pinned_digest_is_refused(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    wanted = "sha256:" + "ab" * 32
    registry.manifests[f"{HOST}/app@{wanted}"] = registry.image({"evil": b"1"})
    with pytest.raises(ImagePullFailed, match="not the one asked for"):
        resolve(image_store, f"{HOST}/app@{wanted}")
    assert not any(call.startswith("copy") for call in registry.calls)


def test_stored_blobs_that_do_not_match_their_digest_are_refused(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    manifest = registry.image({"a": b"good"})
    layer_digest = json.loads(manifest)["layers"][0]["digest"]
    registry.blobs[layer_digest] = layer({"a": b"evil!"})  # the copy writes other bytes
    registry.push("app:1", manifest)
    with pytest.raises(ImagePullFailed, match=r"does not match its digest|longer than its"):
        resolve(image_store, f"{HOST}/app:1")
    assert_empty(image_store)


def test_a_stored_image_other_than_the_manifest_asked_is_refused(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    asked = registry.image({"a": b"asked"})
    other = registry.image({"a": b"other"})
    registry.push("app:1", asked)
    registry.blobs[sha(asked)] = other  # the copy stores another image under the name
    with pytest.raises(ImagePullFailed, match="not the one its manifest"):
        resolve(image_store, f"{HOST}/app:1")
    assert_empty(image_store)


def test_a_converted_docker_manifest_keeps_its_registry_digest(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    """skopeo stores a Docker v2 manifest as OCI: the layers must be the same."""
    files = {"a": b"1"}
    docker = registry.image(files, media_type=DOCKER_MANIFEST)
    converted = registry.image(files)
    digest = registry.push("app:1", docker)
    registry.blobs[digest] = converted
    assert resolve(image_store, f"{HOST}/app:1").digest == digest


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ({"schemaVersion": 1, "fsLayers": []}, "schema 1"),
        ({"schemaVersion": 2, "mediaType": "text/plain"}, "unknown kind"),
        ({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": []}, "descriptor"),
    ],
)
def test_malformed_manifests_are_refused(
    image_store: ImageStore, registry: FakeRegistry, document: dict[str, Any], match: str
) -> None:
    registry.push("app:1", json.dumps(document).encode())
    with pytest.raises(ImagePullFailed, match=match):
        resolve(image_store, f"{HOST}/app:1")


def test_too_many_layers_are_refused(image_store: ImageStore, registry: FakeRegistry) -> None:
    registry.push("app:1", registry.image({}, layers=[layer({f"f{i}": b""}) for i in range(129)]))
    with pytest.raises(ImagePullFailed, match="at most 128 layers"):
        resolve(image_store, f"{HOST}/app:1")


def test_zstd_layers_are_refused_before_the_copy(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    manifest = json.loads(registry.image({"a": b"1"}))
    manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    registry.push("app:1", json.dumps(manifest).encode())
    with pytest.raises(ImagePullFailed, match=r"(?s)zstd.*dest-compress-format gzip"):
        resolve(image_store, f"{HOST}/app:1")
    assert not any(call.startswith("copy") for call in registry.calls)


def test_bad_arguments_are_refused_before_any_registry_call(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    with pytest.raises(InvalidSpec, match=r"^pull: "):
        resolve(image_store, f"{HOST}/app:1", "sometimes")
    with pytest.raises(InvalidSpec, match=r"^image: "):
        resolve(image_store, "Not A Reference")
    assert registry.calls == []


def test_two_threads_resolving_one_image_both_get_it(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(resolve(image_store, f"{HOST}/app:1").digest)
        )
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert sum(call.startswith("copy") for call in registry.calls) >= 1
    assert len(image_store.list()) == 1


# -- built-in images and the Docker engine --------------------------------------------------


class FakeRecipes:
    """Stands in for sandboxer.images.debian: builds an image into the layout it is given."""

    BUILTIN_OCI_IMAGES = ("sandboxer/debian",)

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.key = "1"
        self.builds = 0

    def recipe_key(self, name: str) -> str:
        return self.key

    def build_layout(self, name: str, layout: Path, tag: str, progress: Any) -> None:
        self.builds += 1
        manifest = self.registry.image({"etc/debian_version": f"12.{self.key}".encode()})
        self.registry._write(layout, manifest, tag)


def test_built_in_images_are_built_once_per_recipe(
    image_store: ImageStore, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = FakeRecipes(registry)
    monkeypatch.setattr(
        store, "_builtin_module", lambda image: recipes if image == "sandboxer/debian" else None
    )
    first = image_store.resolve("sandboxer/debian", "always")
    assert (first.rootfs / "etc/debian_version").read_bytes() == b"12.1"
    assert image_store.resolve("sandboxer/debian", "never") == first
    assert recipes.builds == 1 and registry.calls == []
    recipes.key = "2"
    second = image_store.resolve("sandboxer/debian")
    assert recipes.builds == 2 and second.digest != first.digest
    assert (second.rootfs / "etc/debian_version").read_bytes() == b"12.2"
    assert not any((image_store.root / "tmp").iterdir())  # the build's scratch layout is gone
    listed = {item.digest: item.references for item in image_store.list()}
    assert listed[second.digest] == ("sandboxer/debian", "sandboxer/debian@recipe:2")
    assert listed[first.digest] == ("sandboxer/debian@recipe:1",)
    assert image_store.remove("sandboxer/debian") and not second.rootfs.exists()


def test_an_image_from_the_docker_engine(image_store: ImageStore, registry: FakeRegistry) -> None:
    registry.docker["docker.io/team/app:latest"] = registry.image({"built": b"yes"})
    local = image_store.import_docker("team/app")
    assert (local.rootfs / "built").read_bytes() == b"yes"
    assert resolve(image_store, "team/app", "never") == local
    assert registry.calls == ["docker docker.io/team/app:latest"]


# -- derived artifacts ----------------------------------------------------------------------


def test_a_derived_artifact_is_built_once(image_store: ImageStore, registry: FakeRegistry) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    local = resolve(image_store, f"{HOST}/app:1")
    built: list[Path] = []

    def build(path: Path) -> None:
        built.append(path)
        path.write_bytes(b"d" * 50_000)

    first = image_store.derived(local, "rootfs.ext4", build)
    assert image_store.derived(local, "rootfs.ext4", build) == first
    assert len(built) == 1 and built[0] != first and first.read_bytes() == b"d" * 50_000
    (listed,) = image_store.list()
    assert listed.derived == ("rootfs.ext4",) and listed.size >= local.size + 50_000


def test_a_failed_build_leaves_nothing(image_store: ImageStore, registry: FakeRegistry) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    local = resolve(image_store, f"{HOST}/app:1")

    def build(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("mke2fs failed")

    with pytest.raises(RuntimeError, match="mke2fs"):
        image_store.derived(local, "rootfs.ext4", build)
    assert os.listdir(local.rootfs.parent.parent / "derived") == []
    assert image_store.list()[0].derived == ()


@pytest.mark.parametrize("name", ["", "../x", ".hidden", "a/b", "x" * 200])
def test_artifact_names_are_plain_file_names(
    image_store: ImageStore, registry: FakeRegistry, name: str
) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    local = resolve(image_store, f"{HOST}/app:1")
    with pytest.raises(InvalidSpec, match=r"^name: "):
        image_store.derived(local, name, lambda path: None)


def test_an_evicted_image_has_no_artifacts(image_store: ImageStore, registry: FakeRegistry) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    local = resolve(image_store, f"{HOST}/app:1")
    image_store.remove(local.digest)
    with pytest.raises(ImageNotFound, match="resolve it again"):
        image_store.derived(local, "rootfs.ext4", lambda path: path.touch())


# -- the cache: list, remove, prune, the bound ----------------------------------------------


def pull_apps(image_store: ImageStore, registry: FakeRegistry, count: int) -> list[LocalImage]:
    """`count` images, each used a second after the one before."""
    images = []
    for number in range(count):
        registry.push(f"app:{number}", registry.image({"n": str(number).encode() * 20_000}))
        images.append(resolve(image_store, f"{HOST}/app:{number}"))
        _age(image_store, images[-1].digest, count - number)
    return images


def _age(image_store: ImageStore, digest: str, seconds: float) -> None:
    """Pretend the image was last used `seconds` ago."""
    with image_store._index() as index:
        index.images[digest].last_used = time.time() - seconds


def test_remove_by_reference_or_digest(image_store: ImageStore, registry: FakeRegistry) -> None:
    one, two = pull_apps(image_store, registry, 2)
    assert image_store.remove(f"{HOST}/app:0")
    assert image_store.remove(two.digest)
    assert not image_store.remove(two.digest) and not image_store.remove("nothing:1")
    assert image_store.list() == []
    assert not one.rootfs.exists() and not two.rootfs.exists()
    assert os.listdir(image_store.layout / "blobs" / "sha256") == []
    with pytest.raises(ImageNotFound):
        resolve(image_store, f"{HOST}/app:0", "never")


def test_removal_keeps_blobs_that_another_image_uses(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    base = layer({"base": b"shared"})
    registry.push("a:1", registry.image({}, layers=[base, layer({"a": b"1"})]))
    registry.push("b:1", registry.image({}, layers=[base, layer({"b": b"1"})]))
    resolve(image_store, f"{HOST}/a:1")
    b = resolve(image_store, f"{HOST}/b:1")
    assert image_store.remove(f"{HOST}/a:1")
    assert (image_store.layout / "blobs" / "sha256" / sha(base)[7:]).exists()
    assert image_store.resolve(f"{HOST}/b:1", "never") == b


def test_prune_evicts_the_least_recently_used_first(
    image_store: ImageStore, registry: FakeRegistry
) -> None:
    images = pull_apps(image_store, registry, 3)
    resolve(image_store, f"{HOST}/app:0")  # used now: the most recent
    sizes = {item.digest: item.size for item in image_store.list()}
    bound = sum(sizes.values()) - 1
    removed = image_store.prune(bound)
    assert [item.digest for item in removed] == [images[1].digest]
    assert [item.digest for item in image_store.list()] == [images[0].digest, images[2].digest]
    assert [item.digest for item in image_store.prune(0)] == [images[2].digest, images[0].digest]


def test_new_images_evict_old_ones_under_the_bound(tmp_path: Path, registry: FakeRegistry) -> None:
    probe = ImageStore(tmp_path / "probe", fetcher=registry)
    one_size = pull_apps(probe, registry, 1)[0]
    bound = probe.list()[0].size * 2 + 1000  # room for two images, not three
    bounded = ImageStore(tmp_path / "store", fetcher=registry, max_bytes=bound)
    images = pull_apps(bounded, registry, 3)
    assert [item.digest for item in bounded.list()] == [images[2].digest, images[1].digest]
    assert not images[0].rootfs.exists() and one_size.rootfs.exists()
    assert sum(item.size for item in bounded.list()) <= bound


def test_a_new_artifact_evicts_under_the_bound(tmp_path: Path, registry: FakeRegistry) -> None:
    bounded = ImageStore(tmp_path / "store", fetcher=registry, max_bytes=10**9)
    old, new = pull_apps(bounded, registry, 2)
    bounded.max_bytes = sum(item.size for item in bounded.list()) + 10_000
    bounded.derived(new, "disk.img", lambda path: path.write_bytes(os.urandom(64 * 1024)))
    assert [item.digest for item in bounded.list()] == [new.digest]
    assert not old.rootfs.exists()


def test_an_image_in_use_is_never_evicted(image_store: ImageStore, registry: FakeRegistry) -> None:
    busy, idle = pull_apps(image_store, registry, 2)
    lock = image_store.root / "locks" / f"{busy.digest[7:]}.lock"
    with _cache.flock(lock):  # as a resolve or derive in another process holds it
        removed = image_store.prune(0)
    assert [item.digest for item in removed] == [idle.digest]
    assert [item.digest for item in image_store.list()] == [busy.digest]
    assert busy.rootfs.exists()


def test_an_interrupted_unpack_is_cleaned_up(
    image_store: ImageStore, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))

    def crash(*args: Any) -> None:
        os.mkdir(args[1] / ".new-0123456789abcdef")
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "unpack", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve(image_store, f"{HOST}/app:1")
    monkeypatch.undo()
    local = resolve(image_store, f"{HOST}/app:1")
    assert os.listdir(local.rootfs.parent) == ["rootfs"]


def test_the_default_store_reads_its_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SANDBOXER_IMAGE_DIR", str(tmp_path / "images"))
    monkeypatch.setenv("SANDBOXER_IMAGE_CACHE_MAX", "3G")
    monkeypatch.setenv("SANDBOXER_IMAGE_MAX_SIZE", "512m")
    configured = store.default_store()
    assert configured.root == tmp_path / "images"
    assert configured.max_bytes == 3 << 30 and configured.limits.max_bytes == 512 << 20
    monkeypatch.delenv("SANDBOXER_IMAGE_DIR")
    monkeypatch.delenv("SANDBOXER_IMAGE_CACHE_MAX")
    assert store.default_store().root == Path("/var/lib/sandboxer/images")
    assert store.default_store().max_bytes == 20 << 30
    monkeypatch.setenv("SANDBOXER_IMAGE_CACHE_MAX", "lots")
    with pytest.raises(InvalidSpec, match="SANDBOXER_IMAGE_CACHE_MAX"):
        store.default_store()


# -- skopeo: command lines and error messages -----------------------------------------------


@pytest.fixture
def skopeo_argv(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The command lines skopeo would run (nothing runs)."""
    seen: list[list[str]] = []

    def run(argv: list[str], *args: Any) -> bytes:
        seen.append(argv)
        return b"{}"

    monkeypatch.setattr(_fetch, "_run", run)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    return seen


def reference(text: str) -> ImageReference:
    return parse_reference(text)


def test_skopeo_uses_plain_http_only_on_loopback(
    skopeo_argv: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    skopeo = _fetch.Skopeo()
    digest = "sha256:" + "0" * 64
    skopeo.copy(reference(f"127.0.0.1:5000/a@{digest}"), tmp_path, "t", 1, None)
    skopeo.copy(reference(f"registry.example/a@{digest}"), tmp_path, "t", 1, None)
    skopeo.manifest(reference("localhost:5000/a:1"))
    skopeo.manifest(reference("registry.example/a:1"))
    local_copy, remote_copy, local_inspect, remote_inspect = skopeo_argv
    assert local_copy == [
        "/usr/bin/skopeo", "--override-os", "linux", "--override-arch", "amd64", "copy",
        "--src-tls-verify=false", f"docker://127.0.0.1:5000/a@{digest}", f"oci:{tmp_path}:t",
    ]  # fmt: skip
    assert not any("tls-verify" in arg for arg in remote_copy + remote_inspect)
    assert "--tls-verify=false" in local_inspect


def test_skopeo_takes_the_docker_credentials(
    skopeo_argv: list[list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    skopeo = _fetch.Skopeo()
    skopeo.manifest(reference("registry.example/a:1"))
    skopeo.copy(reference("registry.example/a@sha256:" + "0" * 64), tmp_path, "t", 1, None)
    assert f"--authfile={tmp_path / 'config.json'}" in skopeo_argv[0]
    assert f"--src-authfile={tmp_path / 'config.json'}" in skopeo_argv[1]


def test_without_skopeo_the_fix_is_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ImagePullFailed, match="apt-get install -y skopeo"):
        _fetch.Skopeo().manifest(reference("a:1"))


@pytest.mark.parametrize(
    ("stderr", "reason", "fix"),
    [
        (
            'time="x" level=fatal msg="pinging container registry 127.0.0.1:5000: Get '
            '\\"http://127.0.0.1:5000/v2/\\": dial tcp 127.0.0.1:5000: connect: '
            'connection refused"',
            "the registry 127.0.0.1:5000 is unreachable",
            "is the registry running?",
        ),
        (
            "reading manifest 4 in x: manifest unknown: manifest unknown",
            "no such",
            "check the name",
        ),
        (
            "unauthorized: authentication required",
            "refused access",
            "log in first: docker login 127.0.0.1:5000",
        ),
        ("Digest did not match, expected sha256:a, got sha256:b", "digest", "the registry or"),
        ("something odd", "skopeo failed", "read skopeo's error"),
    ],
)
def test_skopeo_failures_say_what_to_do(stderr: str, reason: str, fix: str) -> None:
    error = _fetch.pull_failed(reference("127.0.0.1:5000/a:1"), stderr)
    assert isinstance(error, ImagePullFailed) and isinstance(error, ImageNotFound)
    assert reason in str(error) and f"fix: {fix}" in str(error)
    assert "time=" not in str(error)


def test_skopeo_is_killed_at_its_deadline(tmp_path: Path) -> None:
    slow = tmp_path / "skopeo"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(ImagePullFailed, match="did not finish within 1s"):
        _fetch._run([str(slow)], "pulling a:1", 1.0, 100, None, ImagePullFailed)
    assert time.monotonic() - started < 10


def test_skopeo_output_is_bounded(tmp_path: Path) -> None:
    chatty = tmp_path / "skopeo"
    chatty.write_text("#!/bin/sh\nexec yes\n")
    chatty.chmod(0o755)
    with pytest.raises(ImagePullFailed, match="over 1000 bytes"):
        _fetch._run([str(chatty)], "pulling a:1", 30.0, 1000, None, ImagePullFailed)


def test_an_image_over_the_size_bound_is_refused_before_the_copy(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    small = ImageStore(tmp_path / "store", fetcher=registry, max_image_bytes=1000)
    registry.push("big:1", registry.image({"big": os.urandom(2000)}))
    with pytest.raises(ImagePullFailed, match="SANDBOXER_IMAGE_MAX_SIZE"):
        small.resolve(f"{HOST}/big:1")
    assert registry.calls == [f"manifest {HOST}/big:1"]


def test_a_store_others_may_write_to_is_refused(tmp_path: Path, registry: FakeRegistry) -> None:
    root = tmp_path / "shared"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    with pytest.raises(EngineError, match="no one else may write to"):
        ImageStore(root, fetcher=registry).list()


def test_a_corrupt_index_says_how_to_recover(image_store: ImageStore) -> None:
    image_store.list()
    (image_store.root / "index.json").write_text('{"images": {"x": 1}}')
    with pytest.raises(EngineError, match=r"(?s)corrupt.*fix: remove the store"):
        image_store.list()


def test_prune_removes_what_a_crash_left(image_store: ImageStore, registry: FakeRegistry) -> None:
    registry.push("app:1", registry.image({"a": b"1"}))
    kept = resolve(image_store, f"{HOST}/app:1")
    orphan = image_store.root / "images" / ("e" * 64) / "tree" / "rootfs"
    orphan.mkdir(parents=True)
    busy = image_store.root / "images" / ("b" * 64)
    busy.mkdir()
    stale = image_store.root / "tmp" / "layout-0123456789abcdef"
    stale.mkdir(parents=True)
    (stale.parent / f"{stale.name}.lock").touch()
    with _cache.flock(image_store.root / "locks" / f"{'b' * 64}.lock"):
        assert image_store.prune() == []
    assert not orphan.parent.parent.exists() and busy.exists() and kept.rootfs.exists()
    registry.docker["docker.io/library/app:latest"] = registry.image({"b": b"2"})
    image_store.import_docker("app")  # a new scratch layout: the stale one goes
    assert os.listdir(image_store.root / "tmp") == []


def test_skopeo_failures_become_the_callers_error(tmp_path: Path) -> None:
    failing = tmp_path / "skopeo"
    failing.write_text("#!/bin/sh\necho 'level=fatal msg=\"no such image\"' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(ImagePullFailed, match=r"^no such image$"):
        _fetch._run([str(failing)], "copying", 30.0, 1000, None, _fetch_message)


def _fetch_message(stderr: str) -> ImagePullFailed:
    return ImagePullFailed(_fetch._message(stderr))


def test_disk_usage_counts_each_inode_once_and_follows_no_link(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "data").write_bytes(os.urandom(256 * 1024))
    os.link(tree / "data", tree / "again")
    (tmp_path / "outside").write_bytes(os.urandom(1024 * 1024))
    os.symlink(tmp_path / "outside", tree / "link")
    os.symlink(tmp_path, tree / "loop")
    usage = _cache.disk_usage(tree)
    assert 256 * 1024 <= usage < 2 * 256 * 1024
