"""Saliency models by name (data_tools.saliency.fetch): real downloads over HTTP from a server on
localhost that serves a package the test builds in the chunked npm layout (chunks named by
their sha256, dist/resources.json), its tarball, and a plain release file. No network."""
import functools
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading

import pytest

from data_tools.saliency import fetch, maps

CHUNK = 1000


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Files under the served directory; a path under /cut/ sends half its bytes and closes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/cut/"):
            data = open(os.path.join(self.directory, self.path[len("/cut/"):]), "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        super().do_GET()


@pytest.fixture()
def served(tmp_path):
    """(base URL, served directory, the model's bytes): package/dist/ with 5 chunks of a
    4,500-byte "model" under /models/small, and package.tgz holding the same package."""
    root = tmp_path / "www"
    dist = root / "package" / "dist"
    dist.mkdir(parents=True)
    payload = os.urandom(4500)
    chunks = []
    for start in range(0, len(payload), CHUNK):
        part = payload[start:start + CHUNK]
        digest = hashlib.sha256(part).hexdigest()
        (dist / digest).write_bytes(part)
        chunks.append({"hash": digest, "offsets": [start, start + len(part)]})
    chunks.reverse()                                   # listed out of order: assembly sorts by offset
    (dist / "resources.json").write_text(json.dumps({"/models/small": {"chunks": chunks, "size": len(payload)}}))
    with tarfile.open(root / "package.tgz", "w:gz") as tar:
        tar.add(root / "package", arcname="package")
    (root / "model.onnx").write_bytes(payload)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, payload
    server.shutdown()


def _model(sources, payload, name="toy"):
    return fetch.Model(name, f"{name}.onnx", "sha256:" + hashlib.sha256(payload).hexdigest(), len(payload),
                        "isnet", "test", tuple(sources))


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _cdn(base, root):
    """The CDN route with its resources.json pinned (as the registry pins the real one)."""
    return fetch.NpmChunks("/models/small", base=base + "package/dist/",
                            index="sha256:" + _sha(root / "package" / "dist" / "resources.json"))


def test_npm_chunks_from_the_cdn_and_from_the_tarball_are_byte_exact(served, tmp_path):
    base, root, payload = served
    for source in (_cdn(base, root),
                   fetch.NpmChunks("/models/small", tarball=(base + "package.tgz",
                                                              "sha256:" + _sha(root / "package.tgz")))):
        cache = tmp_path / f"cache-{'cdn' if source.base else 'tgz'}"
        path = fetch.fetch(_model([source], payload), str(cache), progress=False)
        assert open(path, "rb").read() == payload
        assert sorted(os.listdir(cache)) == [".toy.onnx.lock", "toy.onnx"]      # nothing else left


def test_a_corrupt_chunk_is_refused_and_nothing_is_cached(served, tmp_path):
    base, root, payload = served
    dist = root / "package" / "dist"
    victim = sorted(p for p in dist.iterdir() if p.name != "resources.json")[0]
    victim.write_bytes(b"x" + victim.read_bytes()[1:])                        # same name, other bytes
    with tarfile.open(root / "bad.tgz", "w:gz") as tar:
        tar.add(root / "package", arcname="package")
    sources = [_cdn(base, root),
               fetch.NpmChunks("/models/small", tarball=(base + "bad.tgz", "sha256:" + _sha(root / "bad.tgz")))]
    cache = tmp_path / "cache"
    with pytest.raises(fetch.ModelError) as err:
        fetch.fetch(_model(sources, payload), str(cache), progress=False)
    message = str(err.value)
    assert "\n" not in message and "no source answered" in message
    assert "does not match its sha256" in message                 # the tarball route's chunk check
    assert "SHA256 hash of downloaded file" in message             # pooch's check on the CDN route
    assert os.path.join(str(cache), "toy.onnx") in message and _model(sources, payload).hash[7:] in message
    assert [n for n in os.listdir(cache) if not n.startswith(".toy.onnx.lock")] == []


def test_an_interrupted_download_leaves_nothing_that_is_used(served, tmp_path):
    base, _, payload = served
    cache = tmp_path / "cache"
    cut = _model([fetch.Url(base + "cut/model.onnx")], payload)
    with pytest.raises(fetch.ModelError):
        fetch.fetch(cut, str(cache), progress=False)
    assert not (cache / "toy.onnx").exists() and fetch.cached(cut, str(cache)) is None
    whole = _model([fetch.Url(base + "cut/model.onnx"), fetch.Url(base + "model.onnx")], payload)
    assert open(fetch.fetch(whole, str(cache), progress=False), "rb").read() == payload   # the next source


def test_a_name_resolves_to_the_cached_file_and_a_damaged_cache_is_fetched_again(served, tmp_path, monkeypatch):
    base, _, payload = served
    cache = tmp_path / "cache"
    monkeypatch.setenv("DCSP_MODELS", str(cache))
    monkeypatch.setitem(fetch.REGISTRY, "toy", _model([fetch.Url(base + "model.onnx")], payload))
    path, preset = fetch.resolve("toy", progress=False)
    assert (path, preset) == (str(cache / "toy.onnx"), "isnet") and open(path, "rb").read() == payload
    assert fetch.main(["path", "toy"]) == 0
    (cache / "toy.onnx").write_bytes(payload[:100])                             # damaged in the cache
    assert fetch.cached(fetch.REGISTRY["toy"]) is None
    assert open(fetch.resolve("toy", progress=False)[0], "rb").read() == payload
    assert fetch.resolve(str(tmp_path / "mine.onnx")) == (str(tmp_path / "mine.onnx"), None)   # a file path


def test_unknown_names_and_unreachable_sources_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DCSP_MODELS", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    assert maps.main(["--images", str(photos), "--out-dir", str(tmp_path / "s"), "--model", "isnet-xl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "isnet-xl: not a model name (isnet, isnet-fp16" in err[0]
    dead = fetch.Model("dead", "dead.onnx", "sha256:" + "0" * 64, 1, "isnet", "test",
                        (fetch.Url("http://127.0.0.1:9/dead.onnx"),))
    monkeypatch.setitem(fetch.REGISTRY, "dead", dead)
    assert fetch.main(["fetch", "dead"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "fetching model dead (0.0 MB) from http://127.0.0.1:9/dead.onnx"   # not a terminal: a line
    err = [line for line in err if not line.startswith("fetching model")]
    assert len(err) == 1 and "http://127.0.0.1:9/dead.onnx" in err[0] and "put it at" in err[0]
    assert fetch.main(["path", "dead"]) == 1


def test_the_registry_names_what_the_issue_asks_for():
    for name in ("isnet", "isnet-fp16", "u2net", "u2netp"):
        m = fetch.REGISTRY[name]
        assert m.hash.split(":")[0] in ("sha256", "md5") and m.licence and m.sources
        assert m.preset in ("isnet", "u2net")
    isnet = fetch.REGISTRY["isnet"]
    assert isnet.size == 44_342_436 and isnet.hash.startswith("sha256:7001d607")
    assert [type(s).__name__ for s in isnet.sources] == ["NpmChunks", "NpmChunks"]
    assert isnet.sources[1].tarball[0].startswith("https://registry.npmjs.org/@imgly/background-removal-data/")


def test_tarball_members_are_read_not_extracted(served, tmp_path):
    """A tarball whose resources.json names a missing chunk is one clear error (nothing is
    extracted to disk from a downloaded archive)."""
    base, root, payload = served
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        index = json.dumps({"/models/small": {"chunks": [{"hash": "ab" * 32, "offsets": [0, 4500]}]}}).encode()
        info = tarfile.TarInfo("package/dist/resources.json")
        info.size = len(index)
        tar.addfile(info, io.BytesIO(index))
    (root / "missing.tgz").write_bytes(buf.getvalue())
    source = fetch.NpmChunks("/models/small", tarball=(base + "missing.tgz", "sha256:" + _sha(root / "missing.tgz")))
    with pytest.raises(fetch.ModelError, match="chunk abababababab... of /models/small is missing"):
        fetch.fetch(_model([source], payload), str(tmp_path / "cache"), progress=False)


def _bad_index(root, payload, change):
    """Rewrite the served resources.json with ``change(chunks)`` applied; returns its sha256."""
    path = root / "package" / "dist" / "resources.json"
    index = json.loads(path.read_text())
    change(index["/models/small"]["chunks"])
    path.write_text(json.dumps(index))
    return "sha256:" + _sha(path)


def _climb(chunks):
    payload_sha = chunks[0]["hash"]
    chunks[0]["hash"] = f"../../../../../../../../{CLIMB_TARGET}/pwn:{payload_sha}"


CLIMB_TARGET = "tmp/dcsp-test-climb"


@pytest.mark.parametrize("what,change,needle", [
    ("a name that climbs out", _climb, "not a sha256 (64 hex digits)"),
    ("a name that is not hex", lambda c: c[0].update(hash="z" * 64), "not a sha256"),
    ("upper-case hex", lambda c: c[0].update(hash=c[0]["hash"].upper()), "not a sha256"),
    ("overlapping chunks", lambda c: c[0].update(offsets=[c[0]["offsets"][0] - 10, c[0]["offsets"][1]]),
     "expected to start at"),
    ("a chunk past the model's size", lambda c: c[0].update(offsets=[c[0]["offsets"][0], 9_999_999]),
     "past the model's 4500"),
    ("offsets that are not two numbers", lambda c: c[1].update(offsets=["0", 7]), "not [start, end]"),
])
def test_a_resources_json_whose_chunks_are_bad_is_refused_before_any_write(served, tmp_path, what, change, needle):
    """Even a resources.json whose pin matches (a pin taken from a bad file) cannot make a
    chunk's name a path or its offsets a lie: the error names the entry, and nothing lands
    outside the cache (nor anything but the lock in it)."""
    import shutil
    base, root, payload = served
    shutil.rmtree("/" + CLIMB_TARGET, ignore_errors=True)
    index = _bad_index(root, payload, change)
    source = fetch.NpmChunks("/models/small", base=base + "package/dist/", index=index)
    cache = tmp_path / "deep" / "down" / "cache"
    with pytest.raises(fetch.ModelError) as err:
        fetch.fetch(_model([source], payload), str(cache), progress=False)
    assert needle in str(err.value) and "resources.json /models/small" in str(err.value), str(err.value)
    assert not os.path.exists("/" + CLIMB_TARGET)
    assert os.listdir(cache) == [".toy.onnx.lock"]


def test_a_resources_json_that_is_not_the_pinned_one_is_refused(served, tmp_path):
    base, root, payload = served
    pinned = "sha256:" + _sha(root / "package" / "dist" / "resources.json")
    _bad_index(root, payload, _climb)                                   # the server now serves another file
    source = fetch.NpmChunks("/models/small", base=base + "package/dist/", index=pinned)
    with pytest.raises(fetch.ModelError, match="SHA256 hash of downloaded file"):
        fetch.fetch(_model([source], payload), str(tmp_path / "cache"), progress=False)
    unpinned = fetch.NpmChunks("/models/small", base=base + "package/dist/")
    with pytest.raises(fetch.ModelError, match="no pinned sha256"):
        fetch.fetch(_model([unpinned], payload), str(tmp_path / "cache"), progress=False)
    assert fetch.REGISTRY["isnet"].sources[0].index.startswith("sha256:368ca5d3")      # the real one is pinned


def test_a_cache_that_holds_the_file_is_only_read_and_fetched_files_are_shared(served, tmp_path, monkeypatch):
    base, root, payload = served
    ready = tmp_path / "baked"                       # as an image or an admin's share holds it
    ready.mkdir()
    (ready / "toy.onnx").write_bytes(payload)
    model = _model([fetch.Url(base + "model.onnx")], payload)
    assert fetch.fetch(model, str(ready), progress=False) == str(ready / "toy.onnx")
    assert os.listdir(ready) == ["toy.onnx"]                          # no lock file opened for writing
    old = os.umask(0o022)
    try:
        for source in (fetch.Url(base + "model.onnx"), _cdn(base, root)):
            cache = tmp_path / f"shared-{type(source).__name__}"
            path = fetch.fetch(_model([source], payload), str(cache), progress=False)
            assert os.stat(path).st_mode & 0o777 == 0o644, oct(os.stat(path).st_mode)   # pooch's own are 0600
    finally:
        os.umask(old)


def test_tilde_registry_names_and_leftovers(served, tmp_path, monkeypatch):
    base, _, payload = served
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DCSP_MODELS", "~/models")
    monkeypatch.setitem(fetch.REGISTRY, "toy", _model([fetch.Url(base + "model.onnx")], payload))
    cache = tmp_path / "home" / "models"
    cache.mkdir(parents=True)
    (cache / ".fetch-toy.onnx-abc123").mkdir()                       # what a killed fetch left
    (cache / ".fetch-toy.onnx-abc123" / "package.tgz").write_bytes(b"x" * 1000)
    (cache / ".toy.onnx.k1l2.part").write_bytes(b"y" * 1000)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()                                        # --out-dir toy --model toy
    path, preset = fetch.resolve("toy", progress=False)
    assert (path, preset) == (str(cache / "toy.onnx"), "isnet")
    assert sorted(os.listdir(cache)) == [".toy.onnx.lock", "toy.onnx"]  # the leftovers are gone
    assert fetch.main(["path", "toy"]) == 0 and not (tmp_path / "~").exists()
    assert fetch.resolve("toy", progress=False)[0] == str(cache / "toy.onnx")      # and again, the folder still there
    assert fetch.resolve("./toy") == ("./toy", None)                                 # a path when written as one
