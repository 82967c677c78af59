"""Builds the container images a real node runs, on a machine with no Docker engine and no registry.

The kwokctl control plane needs no images, but a real kubelet + containerd node does: the pod
sandbox (pause), the operator and a sample workload. No registry is reachable here, so each image
is built with buildah from local inputs, written to an OCI archive under ``$HOMEOSTAT_CACHE/images``
and imported into the node's containerd with ``ctr images import`` (ADR 0018). Pods then use the
``localhost/...`` refs with ``imagePullPolicy: Never`` or ``IfNotPresent``.

Every image is keyed by a hash of what goes into it (its files, build arguments and the key of its
base), so a rebuild happens only when an input changes and a warm ``build_all()`` reads files and
checks that archives exist, without calling buildah. Buildah's storage lives in the cache too
(``--root``/``--runroot``), not in ``/var/lib/containers``.

    python tests/cluster/images.py build      # build what is missing, print one ref per line
    python tests/cluster/images.py refs       # print the refs the current inputs give, build nothing
    python tests/cluster/images.py import --address /path/to/containerd.sock
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

logger = logging.getLogger("cluster.images")

REPO = Path(__file__).resolve().parents[2]

PAUSE_REF = "localhost/homeostat/pause:3.10"
BASE_REF = "localhost/homeostat/debian-python:bookworm"
OPERATOR_REPOSITORY = "localhost/homeostat/operator"
APP_REPOSITORY = "localhost/homeostat/sample-app"

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Documentation, manual pages and translations are a third of a minbase rootfs and no pod reads them;
# the copyright files stay, as Debian's licences ask.
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
PAUSE_CFLAGS = ("-static", "-Os", "-s")

PAUSE_SOURCE = REPO / "tests/cluster/pause.c"
OPERATOR_INPUTS = ("Dockerfile", "pyproject.toml", "README.md", "operator", "crds")
APP_DIR = REPO / "examples/app"
APP_INPUTS = ("Dockerfile", "app.py")

TAG_LENGTH = 12
# Files that tools leave beside the sources; they never go into an image.
IGNORED_PARTS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
IGNORED_SUFFIXES = (".pyc", ".pyo")

# The machine reaches PyPI through a TLS-intercepting proxy whose CA only the host's bundle has. Pip in
# a Debian image reads /etc/ssl/certs, so the host's bundle is mounted over it for RUN steps only; it is
# never part of a committed layer.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

TOOLS = {
    "buildah": "buildah",
    "mmdebstrap": "mmdebstrap",
    "gcc": "gcc libc6-dev",
}


class ImageBuildError(RuntimeError):
    """A build step failed; the message is the one line to show, with the log's path."""


@dataclasses.dataclass(frozen=True)
class Image:
    ref: str
    archive: Path


# --- where things live -------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("HOMEOSTAT_CACHE") or Path.home() / ".cache/homeostat") / "images"


def _archives() -> Path:
    return cache_dir() / "archives"


def _log_path(name: str) -> Path:
    return cache_dir() / "logs" / f"{name}.log"


def _buildah_global() -> list[str]:
    storage = cache_dir() / "buildah"
    return [
        "buildah",
        "--root",
        str(storage / "root"),
        "--runroot",
        str(storage / "run"),
        "--storage-driver",
        "overlay",
    ]


# --- content keys ------------------------------------------------------------------------------


def input_files(paths: Iterable[str | Path], root: Path) -> list[Path]:
    """The files under ``paths`` (relative to ``root``; directories recursively), sorted, without
    caches and bytecode."""
    found: set[Path] = set()
    for entry in paths:
        path = root / entry
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        for candidate in candidates:
            relative = candidate.relative_to(root)
            if not candidate.is_file() or IGNORED_PARTS.intersection(relative.parts):
                continue
            if candidate.name.endswith(IGNORED_SUFFIXES):
                continue
            found.add(candidate)
        if not path.exists():
            raise ImageBuildError(f"image build failed: input {path} does not exist")
    return sorted(found)


def hash_inputs(paths: Iterable[str | Path], root: Path, extra: Sequence[str] = ()) -> str:
    """A hex sha256 over each file's path relative to ``root``, executable bit and content, and
    the ``extra`` strings (build arguments, the base image's key)."""
    digest = hashlib.sha256()
    for item in extra:
        digest.update(b"extra\0" + item.encode() + b"\0")
    for file in input_files(paths, root):
        executable = b"x" if os.access(file, os.X_OK) else b"-"
        digest.update(b"file\0" + str(file.relative_to(root)).encode() + b"\0" + executable + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def _apt_sources() -> list[Path]:
    directory = Path("/etc/apt/sources.list.d")
    sources = sorted(directory.glob("*.sources")) + sorted(directory.glob("*.list"))
    legacy = Path("/etc/apt/sources.list")
    return ([legacy] if legacy.is_file() and legacy.stat().st_size else []) + sources


def pause_key() -> str:
    return hash_inputs([PAUSE_SOURCE.relative_to(REPO)], REPO, ["gcc", *PAUSE_CFLAGS, PAUSE_REF])


def base_key() -> str:
    sources = _apt_sources()
    return hash_inputs(
        sources, Path("/"), ["mmdebstrap", SUITE, ",".join(BASE_PACKAGES), *MMDEBSTRAP_OPTIONS, BASE_REF]
    )


def operator_key() -> str:
    return hash_inputs(OPERATOR_INPUTS, REPO, [f"BASE_IMAGE={BASE_REF}@{base_key()}"])


def app_key() -> str:
    return hash_inputs(APP_INPUTS, APP_DIR, [f"BASE_IMAGE={BASE_REF}@{base_key()}"])


def tag_for(key: str, suffix: str | None = None) -> str:
    """The image tag a content key gives: its first hex digits, then ``-suffix`` if asked for."""
    tag = key[:TAG_LENGTH]
    if suffix:
        if not all(c.isalnum() or c in "._-" for c in suffix) or len(tag) + 1 + len(suffix) > 128:
            raise ValueError(f"not usable in an image tag: {suffix!r}")
        tag = f"{tag}-{suffix}"
    return tag


def operator_ref(tag_suffix: str | None = None) -> str:
    """``localhost/homeostat/operator:<hash>`` for the operator's current inputs; a ``tag_suffix``
    names a second tag of the same image (``build_operator(tag_suffix=...)`` makes it exist)."""
    return f"{OPERATOR_REPOSITORY}:{tag_for(operator_key(), tag_suffix)}"


def app_ref() -> str:
    return f"{APP_REPOSITORY}:{tag_for(app_key())}"


def split_ref(ref: str) -> tuple[str, str]:
    """``("localhost/homeostat/operator", "3f9a1c2e4b5d")`` for helm's image.repository/image.tag."""
    repository, _, tag = ref.rpartition(":")
    if not repository or "/" in tag:
        raise ValueError(f"no tag in image ref {ref!r}")
    return repository, tag


# --- running tools -----------------------------------------------------------------------------


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        raise ImageBuildError(f"image build needs {tool} (apt-get install {TOOLS.get(tool, tool)})")


def _run(cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None) -> str:
    """Runs one build step, appending its output to ``log``; a failure becomes one line naming the
    tool, its last stderr line and the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    proc = subprocess.run(
        list(cmd), capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        out.write(f"# exit {proc.returncode} after {time.monotonic() - started:.1f} s\n")
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        tool = Path(cmd[0]).name
        raise ImageBuildError(f"image build failed: {tool}: {last}; full log: {log}")
    return proc.stdout


def _buildah(args: Sequence[str], log: Path) -> str:
    tmp = cache_dir() / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # Large blobs are staged in TMPDIR (default /var/tmp); keep them in the cache as well.
    return _run([*_buildah_global(), *args], log, env={"TMPDIR": str(tmp)})


@contextlib.contextmanager
def _no_host_leftovers() -> Iterator[None]:
    """Buildah 1.28 writes its blob-info cache to /var/lib/containers/cache whatever --root says;
    it holds nothing we need, so it goes if it was not there before."""
    paths = [Path("/var/lib/containers"), Path("/etc/containers/networks")]
    existed = {path: path.exists() for path in paths}
    try:
        yield
    finally:
        for path in paths:
            if not existed[path] and path.exists():
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One build at a time per cache: two test processes asking at once must not both build."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- archives ----------------------------------------------------------------------------------


def _archive_name(kind: str, key: str, suffix: str | None = None) -> Path:
    return _archives() / f"{kind}-{tag_for(key, suffix)}.oci.tar"


def archive_manifest_digest(archive: Path) -> str:
    """The manifest digest an OCI archive's index names; containerd keeps it on import."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        if member is None:
            raise ImageBuildError(f"image archive {archive} has no index.json")
        index = json.load(member)
    return str(index["manifests"][0]["digest"])


def archive_image_id(archive: Path) -> str:
    """The config digest (buildah's image ID) of an OCI archive's one image."""
    digest = archive_manifest_digest(archive)
    with tarfile.open(archive) as tar:
        member = tar.extractfile("blobs/" + digest.replace(":", "/"))
        if member is None:
            raise ImageBuildError(f"image archive {archive} lacks its manifest {digest}")
        manifest = json.load(member)
    return str(manifest["config"]["digest"])


def _push(ref: str, archive: Path, log: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    _buildah(["push", "--quiet", ref, f"oci-archive:{partial}:{ref}"], log)
    partial.rename(archive)  # an archive that exists is complete: the warm path trusts that


def _prune(kind: str, keep: Path) -> None:
    """Drops the archives earlier inputs of the same image gave; only the current ones are used."""
    for old in _archives().glob(f"{kind}-*.oci.tar"):
        if old != keep and not old.name.startswith(keep.name.removesuffix(".oci.tar") + "-"):
            old.unlink(missing_ok=True)


def retag_archive(source: Path, ref: str, target: Path) -> None:
    """Writes a copy of an OCI archive whose one image is named ``ref``: the same manifest and
    layers, so containerd stores one image under two names (what ``buildah tag`` would give)."""
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(source) as old, tarfile.open(partial, "w") as new:
        for member in old.getmembers():
            data = old.extractfile(member) if member.isfile() else None
            if member.name == "index.json" and data is not None:
                index = json.load(data)
                for manifest in index["manifests"]:
                    manifest.setdefault("annotations", {})["org.opencontainers.image.ref.name"] = ref
                body = json.dumps(index, separators=(",", ":")).encode()
                member.size = len(body)
                new.addfile(member, io.BytesIO(body))
            else:
                new.addfile(member, data)
    partial.rename(target)


def _storage_id(ref: str, log: Path) -> str | None:
    try:
        out = _buildah(["inspect", "--type", "image", "--format", "{{.FromImageID}}", ref], log)
    except ImageBuildError:
        return None
    return "sha256:" + out.strip().removeprefix("sha256:")


def _ensure_in_storage(image: Image, log: Path) -> None:
    """Builds FROM the base need it in buildah's storage; if the storage was wiped or holds an
    older build under the same ref, the archive is the truth."""
    if _storage_id(image.ref, log) != archive_image_id(image.archive):
        _buildah(["pull", "--quiet", f"oci-archive:{image.archive}"], log)


# --- the images --------------------------------------------------------------------------------


def build_pause() -> Image:
    """The pod sandbox: a static C program in an image from scratch, running as UID 65535."""
    archive = _archive_name("pause", pause_key())
    image = Image(PAUSE_REF, archive)
    if archive.exists():
        return image
    for tool in ("buildah", "gcc"):
        _need(tool)
    log = _log_path("pause")
    log.unlink(missing_ok=True)
    logger.info("building %s (log: %s)", PAUSE_REF, log)
    binary = cache_dir() / "pause" / "pause"
    binary.parent.mkdir(parents=True, exist_ok=True)
    _run(["gcc", *PAUSE_CFLAGS, "-o", str(binary), str(PAUSE_SOURCE)], log)
    container = _buildah(["from", "scratch"], log).strip()
    try:
        _buildah(["copy", container, str(binary), "/pause"], log)
        _buildah(["config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container], log)
        _buildah(["commit", "--quiet", "--rm", container, PAUSE_REF], log)
    except ImageBuildError:
        _buildah(["rm", container], log)
        raise
    _push(PAUSE_REF, archive, log)
    _prune("pause", archive)
    return image


def build_base() -> Image:
    """Debian bookworm with python3 and venv, from the machine's apt sources (mmdebstrap)."""
    key = base_key()
    archive = _archive_name("debian-python", key)
    image = Image(BASE_REF, archive)
    if archive.exists():
        return image
    for tool in ("buildah", "mmdebstrap"):
        _need(tool)
    log = _log_path("debian-python")
    log.unlink(missing_ok=True)
    rootfs = cache_dir() / "rootfs" / f"{SUITE}-{tag_for(key)}.tar"
    if not rootfs.exists():
        logger.info("building the %s rootfs with mmdebstrap, about a minute (log: %s)", SUITE, log)
        sources = _apt_sources()
        if not sources:
            raise ImageBuildError("image build failed: mmdebstrap: no apt sources in /etc/apt")
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        for old in rootfs.parent.glob(f"{SUITE}-*.tar*"):
            old.unlink()
        partial = rootfs.with_name(rootfs.name + ".partial.tar")
        _run(
            [
                "mmdebstrap",
                *MMDEBSTRAP_OPTIONS,
                "--include=" + ",".join(BASE_PACKAGES),
                SUITE,
                str(partial),
                *map(str, sources),
            ],
            log,
        )
        partial.rename(rootfs)
    logger.info("building %s (log: %s)", BASE_REF, log)
    container = _buildah(["from", "scratch"], log).strip()
    try:
        _buildah(["add", container, str(rootfs), "/"], log)
        _buildah(
            [
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--env",
                "LANG=C.UTF-8",
                "--cmd",
                '["/bin/bash"]',
                container,
            ],
            log,
        )
        _buildah(["commit", "--quiet", "--rm", container, BASE_REF], log)
    except ImageBuildError:
        _buildah(["rm", container], log)
        raise
    _push(BASE_REF, archive, log)
    _prune("debian-python", archive)
    return image


def _bud(name: str, ref: str, context: Path, archive: Path, *, pypi: bool) -> None:
    _need("buildah")
    log = _log_path(name)
    log.unlink(missing_ok=True)
    _ensure_in_storage(build_base(), log)
    logger.info("building %s (log: %s)", ref, log)
    volumes = []
    if pypi and HOST_CA_BUNDLE.is_file():
        volumes = ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    _buildah(
        [
            "bud",
            "--quiet",
            # chroot isolation needs no runc, cgroups or network setup, and allows only the
            # host's network: the operator's RUN steps reach PyPI, the app has no RUN step.
            "--isolation",
            "chroot",
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={BASE_REF}",
            *volumes,
            "--file",
            str(context / "Dockerfile"),
            "--tag",
            ref,
            str(context),
        ],
        log,
    )
    _push(ref, archive, log)
    repository = split_ref(ref)[0]
    # Older tags of the same repository stay behind in buildah's storage otherwise, a few
    # hundred MB each; their archives are gone (_prune), so nothing refers to them.
    listed = _buildah(["images", "--format", "{{.Name}}:{{.Tag}}"], log)
    stale = [line for line in listed.split() if line != ref and line.startswith(repository + ":")]
    with contextlib.suppress(ImageBuildError):
        if stale:
            _buildah(["rmi", *stale], log)
        _buildah(["rmi", "--prune"], log)  # the build stage, left nameless


def build_operator(tag_suffix: str | None = None) -> Image:
    """The operator from the repository's Dockerfile on the Debian base. A ``tag_suffix`` gives a
    second tag of the very same image (for a test that upgrades to "a new image" mid-rollout)."""
    key = operator_key()
    archive = _archive_name("operator", key)
    ref = f"{OPERATOR_REPOSITORY}:{tag_for(key)}"
    if not archive.exists():
        # The wheel stage installs build tools and the runtime stage the dependencies from PyPI.
        _bud("operator", ref, REPO, archive, pypi=True)
        _prune("operator", archive)
    if tag_suffix is None:
        return Image(ref, archive)
    other_ref = f"{OPERATOR_REPOSITORY}:{tag_for(key, tag_suffix)}"
    other = _archive_name("operator", key, tag_suffix)
    if not other.exists():
        retag_archive(archive, other_ref, other)
    return Image(other_ref, other)


def build_app() -> Image:
    """The sample workload (examples/app): stdlib only, so its build downloads nothing."""
    key = app_key()
    archive = _archive_name("sample-app", key)
    ref = f"{APP_REPOSITORY}:{tag_for(key)}"
    if not archive.exists():
        _bud("sample-app", ref, APP_DIR, archive, pypi=False)
        _prune("sample-app", archive)
    return Image(ref, archive)


def _all_present() -> list[Image] | None:
    images = [
        Image(PAUSE_REF, _archive_name("pause", pause_key())),
        Image(BASE_REF, _archive_name("debian-python", base_key())),
        Image(operator_ref(), _archive_name("operator", operator_key())),
        Image(app_ref(), _archive_name("sample-app", app_key())),
    ]
    return images if all(image.archive.exists() for image in images) else None


def build_all() -> list[Image]:
    """Pause, Debian base, operator and sample app, each built only if its inputs changed. The
    base is listed for completeness; pods never run it, so it need not be imported."""
    warm = _all_present()
    if warm is not None:
        return warm
    with _lock(), _no_host_leftovers():
        return [build_pause(), build_base(), build_operator(), build_app()]


# --- containerd ------------------------------------------------------------------------------


def _present(address: Path) -> dict[str, str]:
    out = subprocess.run(
        ["ctr", "--address", str(address), "-n", "k8s.io", "images", "ls"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        raise ImageBuildError(f"image import failed: ctr images ls: {last}")
    present = {}
    for line in out.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            present[fields[0]] = fields[2]
    return present


def import_into(address: Path, images: Sequence[Image]) -> None:
    """Imports each image into containerd's ``k8s.io`` namespace (the one the CRI plugin serves)
    unless containerd already has that ref at the archive's manifest digest."""
    if shutil.which("ctr") is None:
        raise ImageBuildError("image import needs ctr (apt-get install containerd)")
    present = _present(address)
    for image in images:
        if present.get(image.ref) == archive_manifest_digest(image.archive):
            continue
        log = _log_path("import")
        logger.info("importing %s into %s", image.ref, address)
        _run(
            ["ctr", "--address", str(address), "-n", "k8s.io", "images", "import", str(image.archive)],
            log,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build what is missing; print one ref per line")
    sub.add_parser("refs", help="print the refs the current inputs give, building nothing")
    imp = sub.add_parser("import", help="build, then import into a containerd")
    imp.add_argument("--address", type=Path, required=True, help="containerd's socket")
    imp.add_argument("--tag-suffix", help="also import this second operator tag")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.command == "refs":
            for ref in (PAUSE_REF, BASE_REF, operator_ref(), app_ref()):
                print(ref)
            return 0
        images = build_all()
        if args.command == "import":
            if args.tag_suffix:
                images.append(build_operator(args.tag_suffix))
            import_into(args.address, images)
        for image in images:
            print(image.ref)
    except ImageBuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
