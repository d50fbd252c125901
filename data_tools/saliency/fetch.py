"""Saliency networks by name: where each is published, its hash, preset, size and licence,
fetched once into a cache at the user's command and checked before use.

    python -m data_tools.saliency.fetch list
    python -m data_tools.saliency.fetch fetch isnet
    python -m data_tools.saliency.fetch path isnet
    python -m data_tools.saliency --images photos/ --out-dir sal/ --model isnet   # fetches on first use

The cache is ``~/.cache/dcsp_dist/models`` (``$DCSP_MODELS`` moves it). Nothing is vendored:
every file comes from its publisher, under its licence (``list`` prints it).

Each name's sources are tried in order until one gives a file with the registry's hash:
- a **URL** (the publisher's release file), through ``pooch`` (retries, progress bar, hash
  check, temporary name until complete);
- an **npm package** in the layout ``@imgly/background-removal-data`` publishes: the
  package's ``dist/resources.json`` maps a resource (``/models/small``) to chunks, each a
  file in ``dist/`` named by its sha256 with its byte offsets; concatenated in offset order
  they give the ONNX file. Two routes to the same chunks: the publisher's CDN (one request
  per chunk) and the npm registry's package tarball (one request, 136 MB, every model).
  The assembly is this module's own code: pooch fetches files, it does not join them.

A download goes to a temporary name; a file is moved into the cache only after its hash
matches, so a partial or corrupt download is never used. A file found in the cache is
checked against the hash before it is used.

Nothing a download says becomes a path unchecked: ``resources.json`` is pinned by its
sha256 (the package version is pinned too), and each of its chunks must be named by 64 hex
digits, lie within the model's size and join the others without gap or overlap
(``_check_chunks``); every name handed to pooch must stay inside the fetch's own folder
(``_inside``). A read-only cache that holds the file is used as it is; files land readable
by everyone the umask allows (a cache shared between users); what a killed fetch left behind
is removed by the next fetch of that model.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tarfile
import tempfile

from dcsp_dist.core.console import say
from dcsp_dist.core.errors import UserError, first_line

IMGLY_PACKAGE = "@imgly/background-removal-data"
IMGLY_VERSION = "1.4.5"
IMGLY_CDN = f"https://staticimgly.com/{IMGLY_PACKAGE}/{IMGLY_VERSION}/dist/"
# dist/resources.json of that version (the CDN's and the tarball's are the same file).
IMGLY_RESOURCES = "sha256:368ca5d3dbe86c380deb37ee5834b28a3e9c08bd858c85292a5ab19d1b4764f8"
IMGLY_TARBALL = (f"https://registry.npmjs.org/{IMGLY_PACKAGE}/-/background-removal-data-{IMGLY_VERSION}.tgz",
                 "sha256:ca7789abb39370727c9a098310b53bce41518d200000423c7107f8c01bbce946")
IMGLY_LICENCE = ("IS-Net (xuebinqin/DIS): MIT; packaged by IMG.LY in @imgly/background-removal-data, AGPL-3.0 "
                 "(its ThirdPartyLicenses.json names the model's MIT licence)")
REMBG_RELEASE = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"


class ModelError(UserError):
    """A model that cannot be had: one line naming it, what was tried and what to do."""


@dataclasses.dataclass(frozen=True)
class Url:
    """A file published at ``url``."""
    url: str

    def describe(self) -> str:
        return self.url


@dataclasses.dataclass(frozen=True)
class NpmChunks:
    """``resource`` of a package in the chunked npm layout: from ``base`` (the CDN's dist/
    directory, one request per chunk; its ``resources.json`` must have the hash ``index``) or
    from the package ``tarball`` (url, known hash)."""
    resource: str
    base: str | None = None
    tarball: tuple | None = None
    index: str | None = None

    def describe(self) -> str:
        return f"{self.base or self.tarball[0]} ({self.resource})"


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    file: str                 # name in the cache
    hash: str                 # "sha256:..." (or "md5:..." where only the publisher's md5 is known)
    size: int | None          # bytes
    preset: str               # data_tools.saliency.onnx_runner preset
    licence: str
    sources: tuple
    about: str = ""


def _imgly(resource: str) -> tuple:
    return (NpmChunks(resource, base=IMGLY_CDN, index=IMGLY_RESOURCES), NpmChunks(resource, tarball=IMGLY_TARBALL))


REGISTRY = {m.name: m for m in (
    Model("isnet", "isnet-int8.onnx", "sha256:7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a",
          44_342_436, "isnet", IMGLY_LICENCE, _imgly("/models/small"),
          "IS-Net general use, int8-quantised (IMG.LY's 'small'); the recommended model for photos"),
    Model("isnet-fp16", "isnet-fp16.onnx",
          "sha256:b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb",
          88_188_479, "isnet", IMGLY_LICENCE, _imgly("/models/medium"),
          "IS-Net general use, float16 (IMG.LY's 'medium'); several times slower than int8 on CPUs"),
    Model("isnet-fp32", "isnet-general-use.onnx",
          "sha256:60920e99c45464f2ba57bee2ad08c919a52bbf852739e96947fbb4358c0d964a",
          178_648_008, "isnet", "MIT (xuebinqin/DIS); ONNX export by rembg, MIT",
          (Url(REMBG_RELEASE + "isnet-general-use.onnx"),), "IS-Net general use, float32, as rembg publishes it"),
    Model("u2net", "u2net.onnx", "md5:60024c5c889badc19c04ad937298a77b", None, "u2net",
          "Apache-2.0 (xuebinqin/U-2-Net); ONNX export by rembg, MIT",
          (Url(REMBG_RELEASE + "u2net.onnx"),), "U^2-Net, 176 MB (hash: the md5 rembg checks)"),
    Model("u2netp", "u2netp.onnx", "sha256:309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
          4_574_861, "u2net", "Apache-2.0 (xuebinqin/U-2-Net); ONNX export by rembg, MIT",
          (Url(REMBG_RELEASE + "u2netp.onnx"),), "U^2-Net small, 4.6 MB"),
)}


def cache_dir() -> str:
    """``$DCSP_MODELS`` (``~`` expanded, as pooch would) or ``~/.cache/dcsp_dist/models``."""
    return os.path.expanduser(os.environ.get("DCSP_MODELS") or os.path.join("~", ".cache", "dcsp_dist", "models"))


def file_hash(path: str, algorithm: str = "sha256") -> str:
    from dcsp_dist.core.atomic import file_digest
    return file_digest(path, algorithm)


def _matches(path: str, known: str) -> bool:
    algorithm, _, value = known.partition(":")
    return os.path.isfile(path) and file_hash(path, algorithm) == value


def get(name: str) -> Model:
    if name not in REGISTRY:
        raise ModelError(f"--model {name}: not a model name ({', '.join(REGISTRY)}) and no such file")
    return REGISTRY[name]


def cached(model: Model, cache: str | None = None) -> str | None:
    """The cached file when it is there with the right hash, else None."""
    path = os.path.join(cache or cache_dir(), model.file)
    return path if _matches(path, model.hash) else None


@contextlib.contextmanager
def _locked(cache: str, model: Model):
    """One fetch of a file at a time on this cache (ranks of one node, or of several on a
    shared file system): the others wait, then find it cached. The holder first removes what
    a killed fetch of this model left (its work folders and partial files)."""
    import fcntl
    import shutil
    try:
        os.makedirs(cache, exist_ok=True)
        fh = open(os.path.join(cache, f".{model.file}.lock"), "a")
    except OSError as exc:
        raise ModelError(f"model {model.name}: the cache {cache} cannot be written ({exc.strerror}) and does not "
                         f"hold {model.file}; set DCSP_MODELS to a writable folder, or put the file there") from None
    with fh:
        os.chmod(fh.name, _shared_mode()) if os.stat(fh.name).st_uid == os.getuid() else None
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            for name in os.listdir(cache):
                if name.startswith(_work_prefix(model)):
                    shutil.rmtree(os.path.join(cache, name), ignore_errors=True)
                elif name.startswith(f".{model.file}.") and name.endswith(".part"):
                    os.remove(os.path.join(cache, name))
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _work_prefix(model: Model) -> str:
    return f".fetch-{model.file}-"


def _shared_mode() -> int:
    """0644 under the usual umask: what a file made by ``open`` would get (pooch's are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fetch(model: Model | str, cache: str | None = None, progress: bool = True) -> str:
    """The model's file in the cache, fetched first if it is not there; ModelError (one line
    naming every source tried and where to put the file by hand) when none answers. A cache
    that holds the file is only read (it may be read-only: baked into an image, shared)."""
    model = get(model) if isinstance(model, str) else model
    cache = os.path.expanduser(cache or cache_dir())
    found = cached(model, cache)
    if found:
        return found
    with _locked(cache, model):
        found = cached(model, cache)
        if found:
            return found
        failures = []
        for source in model.sources:
            if progress and not sys.stderr.isatty():
                say(f"fetching model {model.name} ({model.size / 1e6:.1f} MB) from {source.describe()}"
                    if model.size else f"fetching model {model.name} from {source.describe()}", err=True)
            try:
                return _from(source, model, cache, progress)
            except Exception as exc:   # pooch/requests/tarfile raise many kinds; each is one line here
                failures.append(f"{source.describe()}: {first_line(exc)}")
    raise ModelError(f"model {model.name}: no source answered ({'; '.join(failures)}); download it by hand and "
                     f"put it at {os.path.join(cache, model.file)} (its {model.hash.split(':')[0]} must be "
                     f"{model.hash.split(':')[1]})")


def _from(source, model: Model, cache: str, progress: bool) -> str:
    import pooch
    target = os.path.join(cache, model.file)
    if isinstance(source, Url):   # pooch: temporary name, hash checked, then moved into place
        path = pooch.retrieve(source.url, known_hash=model.hash, fname=_inside(cache, model.file), path=cache,
                              progressbar=_bar(progress))
        os.chmod(path, _shared_mode())
        return path
    with tempfile.TemporaryDirectory(dir=cache, prefix=_work_prefix(model)) as work:
        if source.tarball:
            url, known = source.tarball
            tgz = pooch.retrieve(url, known_hash=known, fname="package.tgz", path=work, progressbar=_bar(progress))
            chunks = _tarball_chunks(tgz, source.resource, model)
        else:
            chunks = _cdn_chunks(source, work, progress, model)
        _assemble(chunks, target, model)
    return target


def _bar(progress: bool) -> bool:
    """pooch's tqdm bar on a terminal only: under a launcher (horovodrun, mpirun, srun) its
    carriage returns pile up into one growing line; there one line says what is fetched."""
    return progress and sys.stderr.isatty()


def _inside(folder: str, name: str) -> str:
    """``name`` if it names a file directly inside ``folder`` (no separator, no ``..``, no
    link out), else ModelError: every name that reaches pooch goes through here."""
    path = os.path.realpath(os.path.join(folder, name))
    if os.sep in name or (os.altsep and os.altsep in name) or name in ("", ".", "..") \
            or os.path.dirname(path) != os.path.realpath(folder):
        raise ModelError(f"refused to write {name!r}: not a file name inside {folder}")
    return name


def _resource(index: dict, resource: str, where: str, model: Model) -> list:
    entry = index.get(resource) if isinstance(index, dict) else None
    if not isinstance(entry, dict) or not entry.get("chunks"):
        raise ModelError(f"{where}: no resource {resource} in resources.json")
    return _check_chunks(entry["chunks"], model, f"{where} resources.json {resource}")


def _check_chunks(chunks, model: Model, where: str) -> list:
    """The chunks in offset order, each named by 64 lower-case hex digits (its sha256) with
    offsets [start, end) that join the previous one's and end at the model's size; a bad
    entry is a ModelError naming it, before anything is fetched."""
    import re
    if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
        raise ModelError(f"{where}: chunks is not a list of entries")
    for i, chunk in enumerate(chunks):
        name, offsets = chunk.get("hash"), chunk.get("offsets")
        if not isinstance(name, str) or not re.fullmatch(r"[0-9a-f]{64}", name):
            raise ModelError(f"{where}: chunk {i} is named {str(name)[:80]!r}, not a sha256 (64 hex digits)")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise ModelError(f"{where}: chunk {i} ({name[:12]}...) has offsets {offsets!r}, not [start, end]")
    ordered = sorted(chunks, key=lambda c: c["offsets"][0])
    position = 0
    for chunk in ordered:
        start, end = chunk["offsets"]
        if start != position or end <= start:
            raise ModelError(f"{where}: chunk {chunk['hash'][:12]}... is bytes {start}-{end}, expected to start at "
                             f"{position} (chunks overlap, leave a gap or are empty)")
        if model.size is not None and end > model.size:
            raise ModelError(f"{where}: chunk {chunk['hash'][:12]}... ends at byte {end}, past the model's "
                             f"{model.size}")
        position = end
    if model.size is not None and position != model.size:
        raise ModelError(f"{where}: the chunks end at byte {position}, not at the model's {model.size}")
    return ordered


def _cdn_chunks(source: NpmChunks, work: str, progress: bool, model: Model):
    """Yield each chunk's bytes, fetched one by one from the CDN and checked by pooch."""
    import pooch
    if not source.index:
        raise ModelError(f"{source.base}resources.json has no pinned sha256: its chunk list is not used unchecked")
    index_path = pooch.retrieve(source.base + "resources.json", known_hash=source.index, fname="resources.json",
                                path=work, progressbar=False)
    with open(index_path) as fh:
        try:
            index = json.load(fh)
        except ValueError as exc:
            raise ModelError(f"{source.base}resources.json is not JSON ({exc})") from None
    for chunk in _resource(index, source.resource, source.base, model):
        path = pooch.retrieve(source.base + chunk["hash"], known_hash="sha256:" + chunk["hash"],
                              fname=_inside(work, chunk["hash"]), path=work, progressbar=_bar(progress))
        with open(path, "rb") as fh:
            yield chunk, fh.read()
        os.remove(path)


def _tarball_chunks(tgz: str, resource: str, model: Model):
    """Yield each chunk's bytes from the package tarball (``package/dist/<sha256>``); nothing
    is extracted to disk."""
    with tarfile.open(tgz, "r:gz") as tar:
        members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        if "dist/resources.json" not in members:
            raise ModelError(f"{tgz}: no dist/resources.json (not the chunked npm layout)")
        chunks = _resource(json.load(tar.extractfile(members["dist/resources.json"])), resource, tgz, model)
        for chunk in chunks:
            member = members.get("dist/" + chunk["hash"])
            if member is None:
                raise ModelError(f"{tgz}: chunk {chunk['hash'][:12]}... of {resource} is missing")
            yield chunk, tar.extractfile(member).read()


def _assemble(chunks, target: str, model: Model) -> None:
    """Concatenate the chunks in offset order into a temporary file, each checked against its
    name and offsets, the whole against the model's hash; then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{model.file}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            position = 0
            for chunk, data in chunks:
                if hashlib.sha256(data).hexdigest() != chunk["hash"]:
                    raise ModelError(f"chunk {chunk['hash'][:12]}... does not match its sha256 (corrupt)")
                start, end = chunk["offsets"]
                if start != position or end - start != len(data):
                    raise ModelError(f"chunk {chunk['hash'][:12]}... is bytes {start}-{end}, expected from {position} "
                                     f"({len(data)} bytes)")
                out.write(data)
                position = end
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, _shared_mode())
        if not _matches(tmp, model.hash):
            raise ModelError(f"the assembled file does not match {model.hash[:20]}...")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve(spec: str, progress: bool = True) -> tuple[str, str | None]:
    """``(path, preset)`` for ``--model``: a registry name, fetched on first use (its preset),
    whatever files or folders of that name lie around (write ``./isnet`` for a file named
    so); else a model file as it is (no preset)."""
    if spec not in REGISTRY and (os.path.isfile(spec) or spec.lower().endswith((".onnx", ".keras", ".h5"))
                                 or os.sep in spec):
        return spec, None
    model = get(spec)
    return fetch(model, progress=progress), model.preset


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.saliency.fetch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every name, its size, preset, licence and whether it is cached")
    for command in ("fetch", "path"):
        p = sub.add_parser(command, help="fetch into the cache" if command == "fetch" else
                           "print the cached file's path (exit 1 when it is not cached)")
        p.add_argument("name", choices=sorted(REGISTRY))
    args = parser.parse_args(argv)
    if args.command == "list":
        say(f"cache: {cache_dir()}")
        for m in REGISTRY.values():
            size = f"{m.size / 1e6:.1f} MB" if m.size else "size not recorded"
            state = "cached" if cached(m) else "not cached"
            say(f"{m.name:11s} {size:>18s}  preset {m.preset:7s} {state}\n    {m.about}\n    licence: {m.licence}\n"
                  f"    sources: {'; '.join(s.describe() for s in m.sources)}")
        return 0
    model = get(args.name)
    if args.command == "path":
        found = cached(model)
        if not found:
            say(f"error: {model.name} is not cached in {cache_dir()} (python -m data_tools.saliency.fetch fetch "
                  f"{model.name})", err=True)
            return 1
        say(found)
        return 0
    try:
        say(fetch(model))
    except ModelError as exc:
        say(f"error: {exc}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
