"""Hub ids download over HTTP into the cache, resume after an interruption, and work offline once cached.

The "hub" is an http.server on 127.0.0.1 serving fixture folders at /<repo id>/resolve/<revision>/<file>,
as huggingface.co does, with HTTP Range support; HF_ENDPOINT points girl at it.
"""

import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from girl.files import CheckpointError
from girl.lm.checkpoint import load_model
from girl.lm.hub import HubError, resolve
from girl.lm.tokenizer import Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


class Hub:
    def __init__(self):
        self.repos: dict[str, Path] = {}
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, bytes sent)
        self.cut_after: dict[str, int] = {}  # file name -> bytes to send before dropping the connection, once
        self.status: dict[str, int] = {}  # file name -> an error status to answer instead
        self.html: set[str] = set()  # file names answered by a 200 HTML page (a login or proxy page)
        self.headers: dict[str, dict] = {}  # file name -> extra headers (what the hub announces)
        self.ignore_range: set[str] = set()  # file names served whole with 200 even when a Range is asked for
        self.seen: list[str] = []  # every path asked for
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                hub.seen.append(self.path)
                m = re.fullmatch(r"/(.+)/resolve/main/([^/]+)", self.path)
                folder = hub.repos.get(m.group(1)) if m else None
                if m and (m.group(2) in hub.status or m.group(2) in hub.html or folder is None
                          or not (folder / m.group(2)).is_file()):
                    hub.log.append((self.path, None, 0))
                if m and m.group(2) in hub.status:
                    return self.send_error(hub.status[m.group(2)])
                if m and m.group(2) in hub.html:
                    page = b"<!DOCTYPE html><html><body>Please log in</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    return self.wfile.write(page)
                if folder is None or not (folder / m.group(2)).is_file():
                    return self.send_error(404)
                data = (folder / m.group(2)).read_bytes()
                start, status = 0, 200
                if (r := self.headers.get("Range")) and m.group(2) not in hub.ignore_range:
                    start, status = int(re.fullmatch(r"bytes=(\d+)-", r).group(1)), 206
                    if start >= len(data):
                        hub.log.append((self.path, r, 0))
                        return self.send_error(416)
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                for k, v in hub.headers.get(m.group(2), {}).items():
                    self.send_header(k, v)
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if (n := hub.cut_after.pop(m.group(2), None)) is not None:
                    body = body[:n]  # then the connection closes early, as a dropped download would
                self.wfile.write(body)
                hub.log.append((self.path, r, len(body)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requests(self, filename):
        return [entry for entry in self.log if entry[0].endswith("/" + filename)]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    hub = Hub()
    # a served model folder: tiny qwen2 weights with the GPT-2 tokenizer beside them
    repo = tmp_path / "served" / "qwen2"
    shutil.copytree(FIXTURES / "tiny-qwen2", repo)
    shutil.copy(FIXTURES / "gpt2-tokenizer" / "tokenizer.json", repo)
    hub.repos["tiny-org/tiny-qwen2"] = repo
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("GIRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hub
    hub.server.shutdown()
    hub.server.server_close()


def logits(model):
    ids = load_file(str(FIXTURES / "tiny-qwen2" / "reference_logits.safetensors"))["input_ids"]
    with torch.no_grad():
        return model(ids)


def test_download_then_offline(hub, tmp_path, monkeypatch):
    model = load_model("tiny-org/tiny-qwen2")
    assert torch.equal(logits(model), logits(load_model(FIXTURES / "tiny-qwen2")))
    assert Tokenizer.from_pretrained("tiny-org/tiny-qwen2").encode("Hello world") == [15496, 995]
    cached = tmp_path / "cache" / "hub" / "tiny-org--tiny-qwen2" / "main"
    assert (cached / "model.safetensors").read_bytes() == (FIXTURES / "tiny-qwen2" / "model.safetensors").read_bytes()
    assert len(hub.requests("model.safetensors")) == 1 and len(hub.requests("model.safetensors.index.json")) == 1

    # everything is cached now: no request at all, even with the server gone
    n = len(hub.log)
    hub.server.shutdown()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert torch.equal(logits(load_model("tiny-org/tiny-qwen2")), logits(model))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert torch.equal(logits(load_model("tiny-org/tiny-qwen2")), logits(model))
    assert len(hub.log) == n


def test_interrupted_download_resumes(hub, tmp_path):
    size = (FIXTURES / "tiny-qwen2" / "model.safetensors").stat().st_size
    hub.cut_after["model.safetensors"] = 30_000
    with pytest.raises(HubError, match=f"got 30000 of {size} bytes; run again to resume"):
        load_model("tiny-org/tiny-qwen2")
    part = tmp_path / "cache" / "hub" / "tiny-org--tiny-qwen2" / "main" / "model.safetensors.part"
    assert part.stat().st_size == 30_000
    assert not part.with_suffix("").exists()  # no half file under the final name

    model = load_model("tiny-org/tiny-qwen2")
    first, second = hub.requests("model.safetensors")
    assert first[1] is None and second[1] == "bytes=30000-"  # the second asked only for the rest...
    assert second[2] == size - 30_000  # ...and got only the rest
    assert not part.exists()
    assert torch.equal(logits(model), logits(load_model(FIXTURES / "tiny-qwen2")))


def test_a_server_that_ignores_range_sends_the_whole_file_again(hub, tmp_path):
    """A mirror or proxy may answer a Range request with 200 and the whole file: the .part is started over,
    never appended to (that would give the first bytes twice)."""
    whole = (FIXTURES / "tiny-qwen2" / "model.safetensors").read_bytes()
    hub.cut_after["model.safetensors"] = 30_000
    with pytest.raises(HubError, match="run again to resume"):
        load_model("tiny-org/tiny-qwen2")
    hub.ignore_range.add("model.safetensors")
    model = load_model("tiny-org/tiny-qwen2")
    _, second = hub.requests("model.safetensors")
    assert second[1] == "bytes=30000-" and second[2] == len(whole)  # asked for the rest, was sent everything
    cached = tmp_path / "cache" / "hub" / "tiny-org--tiny-qwen2" / "main" / "model.safetensors"
    assert cached.read_bytes() == whole
    assert torch.equal(logits(model), logits(load_model(FIXTURES / "tiny-qwen2")))


def test_sharded_download(hub, tmp_path):
    repo = hub.repos["tiny-org/tiny-qwen2"]
    tensors = load_file(str(repo / "model.safetensors"))
    (repo / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {k: f"model-0000{1 + (i % 2)}-of-00002.safetensors" for i, k in enumerate(names)}
    for shard in set(weight_map.values()):
        save_file({k: tensors[k] for k in names if weight_map[k] == shard}, str(repo / shard))
    (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    model = load_model("tiny-org/tiny-qwen2")
    assert torch.equal(logits(model), logits(load_model(FIXTURES / "tiny-qwen2")))
    assert len(hub.requests("model-00001-of-00002.safetensors")) == 1
    assert len(hub.requests("model-00002-of-00002.safetensors")) == 1
    assert hub.requests("model.safetensors") == []  # the index was found, so no single file was asked for


def test_unknown_repo_and_offline_miss(hub, tmp_path, monkeypatch):
    with pytest.raises(HubError, match=r"nobody/nothing: no such local folder, and as a hub id: "
                                       r"http.*/nobody/nothing/resolve/main/config.json: not found \(404\)"):
        load_model("nobody/nothing")
    assert not (tmp_path / "cache").exists()  # a failed lookup leaves nothing in the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="config.json is not in the cache .* and HF_HUB_OFFLINE is set"):
        load_model("tiny-org/tiny-qwen2")


def test_weights_must_be_safetensors(hub):
    repo = hub.repos["tiny-org/tiny-qwen2"]
    (repo / "model.safetensors").rename(repo / "pytorch_model.bin")
    with pytest.raises(HubError, match="neither model.safetensors nor model.safetensors.index.json"):
        load_model("tiny-org/tiny-qwen2")
    assert hub.requests("pytorch_model.bin") == []


def test_not_a_folder_nor_an_id(tmp_path):
    with pytest.raises(HubError, match="not a folder, and not a hub id"):
        resolve(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(HubError, match="not a folder, and not a hub id"):
        resolve(str(tmp_path / "file.txt"))


@pytest.mark.parametrize("status, message", [
    (401, r"HTTP 401 .*gated: accept its license on the hub and set HF_TOKEN"),
    (403, r"HTTP 403 .*gated: accept its license on the hub and set HF_TOKEN"),
    (500, r"HTTP 500 "),
])
def test_http_errors_name_the_file_and_the_fix(hub, tmp_path, status, message):
    hub.status["model.safetensors"] = status
    with pytest.raises(HubError, match=rf"/tiny-org/tiny-qwen2/resolve/main/model.safetensors: {message}"):
        load_model("tiny-org/tiny-qwen2")
    assert not list((tmp_path / "cache").rglob("model.safetensors*"))


def test_an_html_page_is_not_taken_for_the_file(hub, tmp_path):
    hub.html.add("config.json")
    with pytest.raises(HubError, match=r"config.json: the server sent an HTML page instead of the file"):
        load_model("tiny-org/tiny-qwen2")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("announced", ["size", "sha256"])
def test_a_file_unlike_what_the_hub_announced_is_removed(hub, tmp_path, announced):
    data = (hub.repos["tiny-org/tiny-qwen2"] / "model.safetensors").read_bytes()
    right = {"X-Linked-Size": str(len(data)), "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"'}
    wrong = {"size": {"X-Linked-Size": str(len(data) + 1)},
             "sha256": {"X-Linked-Etag": f'"{hashlib.sha256(data + b"x").hexdigest()}"'}}[announced]
    hub.headers["model.safetensors"] = wrong
    with pytest.raises(HubError, match=r"model.safetensors: the file is not what the hub announced .*removed: run again"):
        load_model("tiny-org/tiny-qwen2")
    assert not list((tmp_path / "cache").rglob("model.safetensors*"))
    hub.headers["model.safetensors"] = right  # what the hub announces, checked and accepted
    assert torch.equal(logits(load_model("tiny-org/tiny-qwen2")), logits(load_model(FIXTURES / "tiny-qwen2")))


def test_a_shard_name_cannot_leave_the_folder(hub, tmp_path):
    """A weight index naming "../../x.safetensors" is refused before anything is fetched or read."""
    repo = hub.repos["tiny-org/tiny-qwen2"]
    (repo / "model.safetensors").rename(tmp_path / "evil.safetensors")
    (repo / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "../../../evil.safetensors"}}))
    with pytest.raises(HubError, match=r"shard index names '../../../evil.safetensors', not a file of the repo"):
        load_model("tiny-org/tiny-qwen2")
    assert hub.seen and not [path for path in hub.seen if "evil" in path]
    local = tmp_path / "local"
    shutil.copytree(repo, local)
    with pytest.raises(CheckpointError, match=r"shard '../../../evil.safetensors' is not a file name inside"):
        load_model(local)
