"""Download a model from the Hugging Face hub with the standard library, into a local cache.

    folder = resolve("Qwen/Qwen2.5-0.5B")   # or a local folder, returned as it is

Environment:
    HF_ENDPOINT      base URL (default https://huggingface.co); a mirror or a test server
    HF_TOKEN         sent as a bearer token, for gated models
    HF_HUB_OFFLINE   1: use the cache only, never the network
    GIRL_CACHE       cache root (default ~/.cache/girl)

Files are written to `name.part` first and renamed when complete; an interrupted download resumes
from the .part file with an HTTP Range request. A model whose files are all cached needs no network.
A file whose size or sha256 differs from what the server announces (X-Linked-Size; X-Linked-Etag or an
ETag that is a sha256, as for LFS files) is removed, and an HTML page where a file was expected refused.
"""

import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from girl.files import plain_file_name, shard_names

REQUIRED = ["config.json"]
OPTIONAL = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"]
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
CHUNK = 1 << 20


class HubError(RuntimeError):
    """A download that failed; the message names the URL and what to do."""


def resolve(name_or_path, revision: str = "main") -> Path:
    """A local folder as it is; otherwise a hub id, downloaded (or found in the cache) as a folder."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or not HUB_ID.match(name) or name.startswith(".") or name.count("/") > 1:
        raise HubError(f"{name}: not a folder, and not a hub id like 'Qwen/Qwen2.5-0.5B'")
    try:
        return download(name, revision)
    except HubError as e:  # the name may be a mistyped local path as much as a hub id
        raise HubError(f"{name}: no such local folder, and as a hub id: {e}") from None


def cache_dir(repo_id: str, revision: str = "main") -> Path:
    root = Path(os.environ.get("GIRL_CACHE") or Path.home() / ".cache" / "girl")
    return root / "hub" / repo_id.replace("/", "--") / revision


def download(repo_id: str, revision: str = "main") -> Path:
    """Fetch config, tokenizer files and safetensors weights (following a shard index) of `repo_id`."""
    folder = cache_dir(repo_id, revision)
    absent_file = folder / ".absent.json"  # optional files the hub does not have, so offline use is quiet
    absent = set(json.loads(absent_file.read_text())) if absent_file.is_file() else set()

    def get(filename: str, required: bool) -> bool:
        if (folder / filename).is_file():
            return True
        if filename in absent and not required:
            return False
        url = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{repo_id}/resolve/{revision}/{filename}"
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
            if required:
                raise HubError(f"{repo_id}: {filename} is not in the cache {folder} and HF_HUB_OFFLINE is set")
            return False
        found = fetch(url, folder / filename)
        if not found:
            if required:
                raise HubError(f"{url}: not found (404). Check the model id and revision.")
            absent.add(filename)
            absent_file.write_text(json.dumps(sorted(absent)))
        return found

    for f in REQUIRED:
        get(f, required=True)
    for f in OPTIONAL:
        get(f, required=False)
    if get("model.safetensors.index.json", required=False):
        for shard in shard_names(folder / "model.safetensors.index.json"):
            if not plain_file_name(shard):  # "../../x" would be fetched to, and read from, outside the cache
                raise HubError(f"{repo_id}: the shard index names {shard!r}, not a file of the repo; refusing it")
            get(shard, required=True)
    elif not get("model.safetensors", required=False):
        raise HubError(
            f"{repo_id}: has neither model.safetensors nor model.safetensors.index.json; only safetensors "
            "weights are loaded (pickled .bin files can run code)"
        )
    return folder


def fetch(url: str, dest: Path) -> bool:
    """Download url to dest through dest.part, resuming a partial .part. False if the server says 404."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "girl"}
    if token := os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        if e.code == 416 and have:  # nothing left to send: the .part is already whole
            os.replace(part, dest)
            return True
        hint = " The model may be gated: accept its license on the hub and set HF_TOKEN." if e.code in (401, 403) else ""
        raise HubError(f"{url}: HTTP {e.code} {e.reason}.{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        raise HubError(f"{url}: cannot connect ({e}). Set HF_ENDPOINT for a mirror, or HF_HUB_OFFLINE=1 "
                       "to use the cache only.") from None
    if response.headers.get_content_type() == "text/html":  # a login page, a proxy's or a mirror's error page
        response.close()
        raise HubError(f"{url}: the server sent an HTML page instead of the file. Check HF_ENDPOINT (a mirror's "
                       "address), and HF_TOKEN for a gated model.")
    dest.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed first request leaves no folder
    announced_size = response.headers.get("X-Linked-Size")
    etag = (response.headers.get("X-Linked-Etag") or response.headers.get("ETag") or "").removeprefix("W/").strip('"')
    with response:
        if response.status != 206:  # the server ignored our Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        print(f"downloading {url} ({'resuming at %d bytes, ' % have if have else ''}"
              f"{total if total is not None else '?'} bytes)", file=sys.stderr)
        with open(part, "ab" if have else "wb") as f:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
            except (OSError, http.client.HTTPException) as e:
                raise HubError(f"{url}: interrupted ({e}); run again to resume from {part}") from None
    if total is not None and part.stat().st_size != total:
        raise HubError(f"{url}: got {part.stat().st_size} of {total} bytes; run again to resume from {part}")
    # what the hub announced for the file (LFS files carry both): a mismatch is a corrupt file, not a short one
    size, problem = part.stat().st_size, None
    if announced_size and int(announced_size) != size:
        problem = f"{size} bytes, the hub announced {announced_size}"
    elif re.fullmatch(r"[0-9a-f]{64}", etag) and (digest := sha256_of(part)) != etag:
        problem = f"sha256 {digest}, the hub announced {etag}"
    if problem:
        part.unlink()
        raise HubError(f"{url}: the file is not what the hub announced ({problem}); it was removed: run again")
    os.replace(part, dest)
    return True


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
