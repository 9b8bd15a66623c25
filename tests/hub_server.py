"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1, standard library only.

It speaks the part of the Hub API that the real ``huggingface_hub`` client uses to create a
repo, commit files (``preupload`` answers ``regular`` for every file, so contents come inline in
the NDJSON commit), resolve and download files, list revisions, refs and trees, state file metadata
(``paths-info``, ``tree``, ``revision?blobs=true``), and answer 404s with the Hub's ``X-Error-Code``.

How files are stored and described is the Hub's (checked against huggingface_hub 2.4's
``get_hf_file_metadata``, ``RepoFile``, ``RepoSibling`` and huggingface.js's ``paths-info``):

- A committed file is stored in LFS when the commit's ``.gitattributes`` routes it there
  (``filter=lfs``; a new repo gets the Hub's default list, which has ``*.safetensors``, ``*.bin``,
  ``*.pt``, ...) or when it is larger than 10 MiB (the Hub keeps no larger file in git); an empty
  file never is. A file carried over from the parent commit keeps its storage, as in git. (The
  real Hub tells the client to upload such files through LFS in its ``preupload`` answer; this
  server takes every file inline and stores it the same way, which the downloading client cannot
  tell apart.)
- Metadata of a file kept in git: ``oid`` = its git blob id (sha1 of ``b"blob <size>\\0"`` + bytes),
  ``size``. Of an LFS file: ``oid`` = the git blob id of its LFS pointer, ``size``, and ``lfs`` =
  ``{"oid": <sha256 of the bytes>, "size", "pointerSize"}`` (``blobId`` and ``lfs.sha256`` in the
  siblings of ``revision?blobs=true``). No Xet fields: the client then downloads over plain HTTP.
- ``resolve``: a file kept in git is answered ``200`` with ``ETag: "<git blob id>"``; an LFS file
  with ``302`` to the CDN (a second server on another port, so a different origin the client does not
  send its HEAD to) with ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``; every answer carries
  ``X-Repo-Commit``, a missing file's 404 too. The client names its cache blob after that ETag.

Test hooks: :meth:`HubServer.tamper` changes the bytes served for a file without a new commit (a
corrupt mirror or a man in the middle: the metadata and ETags still describe the committed bytes);
:attr:`HubServer.truncate_next` makes the next downloads of a path send half the body and drop the
connection; :attr:`HubServer.file_metadata` ``= False`` answers the metadata routes with a bare 404,
as a mirror that only serves downloads; :attr:`HubServer.requests` logs every request.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlparse

# The .gitattributes the Hub gives a new model repo (its LFS patterns).
HUB_GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz",
    "*.zip", "*.zst", "*tfevents*")).encode()
LFS_ABOVE = 10 * 1024 * 1024  # bytes: the Hub keeps no larger file in git


def _lfs_by_attributes(path: str, gitattributes: bytes | None) -> bool:
    """Whether ``.gitattributes`` gives ``path`` the ``filter=lfs`` attribute (the last matching line
    that sets or unsets ``filter`` wins, as in git). A pattern without ``/`` matches the file name at
    any depth; one with ``/`` the path from the root (fnmatch's ``*`` also crosses ``/``, which is
    looser than git, and enough for the patterns the Hub writes)."""
    lfs = False
    for line in (gitattributes or b"").decode("utf-8", "replace").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        pattern, attrs = fields[0], fields[1:]
        target = path if "/" in pattern.strip("/") else path.rsplit("/", 1)[-1]
        if not fnmatch.fnmatchcase(target, pattern.strip("/")):
            continue
        for attr in attrs:
            if attr.startswith("filter=") or attr in ("-filter", "!filter"):
                lfs = attr == "filter=lfs"
    return lfs


def stored_in_lfs(path: str, size: int, gitattributes: bytes | None) -> bool:
    """How the Hub stores a file committed with this ``.gitattributes`` (see the module docstring)."""
    return size > 0 and (size > LFS_ABOVE or _lfs_by_attributes(path, gitattributes))


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file (spec v1) that git keeps for an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    message: str
    date: str
    lfs: frozenset[str] = frozenset()  # the files stored in LFS


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        return None


def git_blob_sha1(data: bytes) -> str:
    digest = hashlib.sha1(b"blob %d\0" % len(data))
    digest.update(data)
    return digest.hexdigest()


class HubServer:
    """``with HubServer() as hub: os.environ["HF_ENDPOINT"] = hub.url``."""

    def __init__(self, token: str = "hf_test_token", user: str = "tester"):
        self.token, self.user = token, user
        self.repos: dict[str, Repo] = {}
        self.tampered: dict[tuple[str, str, str], bytes] = {}  # (repo, commit, path) -> served bytes
        self.truncate_next: dict[str, int] = {}  # path -> how many more downloads to cut short
        self.requests: list[tuple[str, str]] = []
        self.file_metadata = True  # False: the metadata routes answer a bare 404 (a download-only mirror)
        self.fail_commits = False  # answer every commit with a server error (a failed upload)
        # path -> the bytes the Hub stores (and describes, and serves) instead of those sent, in every new commit
        self.corrupt_uploads: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self._digests: dict[tuple[str, int], tuple[bytes, str]] = {}  # see digest()
        self._counter = 0
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self.cdn_httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("CdnHandler", (_CdnHandler,), {"hub": self}))
        for httpd in (self.httpd, self.cdn_httpd):
            httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn_httpd.server_address[1]}"  # LFS files are served from here
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "HubServer":
        for httpd in (self.httpd, self.cdn_httpd):
            self._threads.append(threading.Thread(target=httpd.serve_forever, daemon=True))
            self._threads[-1].start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._threads:
            for httpd in (self.httpd, self.cdn_httpd):
                httpd.shutdown()
                httpd.server_close()
            self._threads = []

    # ------------------------------------------------------------------ state
    def create_repo(self, repo_id: str) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = Repo(repo_id)
            self.repos[repo_id] = repo
            self._commit(repo, "main", {".gitattributes": HUB_GITATTRIBUTES}, [], "initial commit")
            return True

    def _commit(self, repo: Repo, branch: str, added: dict[str, bytes], deleted: list[str], message: str) -> Commit:
        parent = repo.branches.get(branch)
        files = dict(repo.commits[parent].files) if parent else {}
        files.update(added)
        for path in deleted:
            files.pop(path, None)
        kept = {p for p in repo.commits[parent].lfs if p in files and p not in added} if parent else set()
        attributes = files.get(".gitattributes")
        lfs = frozenset(kept | {p for p, data in added.items() if stored_in_lfs(p, len(data), attributes)})
        self._counter += 1
        oid = hashlib.sha1(f"{repo.repo_id}:{self._counter}:{parent}:{message}".encode()).hexdigest()
        commit = Commit(oid, parent, files, message, time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), lfs)
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    def commit_files(self, repo_id: str, files: dict[str, bytes], message: str = "update") -> str:
        """Commit ``files`` to main directly (not through the client); returns the commit sha."""
        with self.lock:
            return self._commit(self.repos[repo_id], "main", files, [], message).oid

    def tamper(self, repo_id: str, revision: str, path: str, data: bytes) -> None:
        with self.lock:
            commit = self.repos[repo_id].resolve(revision)
            self.tampered[(repo_id, commit.oid, path)] = data

    def served(self, repo_id: str, commit: Commit, path: str) -> bytes:
        return self.tampered.get((repo_id, commit.oid, path), commit.files[path])

    def metadata(self, commit: Commit, path: str) -> dict:
        """What the Hub states about a committed file (a paths-info / tree entry), from the committed
        bytes (not the served ones)."""
        data = commit.files[path]
        if path not in commit.lfs:
            return {"type": "file", "oid": self.digest("git-sha1", data), "size": len(data), "path": path}
        sha256 = self.digest("sha256", data)
        pointer = lfs_pointer(sha256, len(data))
        return {"type": "file", "oid": git_blob_sha1(pointer), "size": len(data),
                "lfs": {"oid": sha256, "size": len(data), "pointerSize": len(pointer)}, "path": path}

    def digest(self, kind: str, data: bytes) -> str:
        """``"sha256"`` (an LFS file's oid and ETag) or ``"git-sha1"`` (the git blob id: the oid and ETag
        of a file kept in git) of ``data``, computed once per bytes object: a ResNet-50 is hashed once,
        not at every HEAD and GET. The memo holds ``data``, so its id is not reused while the entry lives."""
        with self.lock:
            memo = self._digests.get((kind, id(data)))
        if memo is None:
            value = hashlib.sha256(data).hexdigest() if kind == "sha256" else git_blob_sha1(data)
            with self.lock:
                memo = self._digests.setdefault((kind, id(data)), (data, value))
        return memo[1]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # ------------------------------------------------------------------ helpers
    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _error(self, status: int, code: str, message: str, head: bool = False, headers: dict | None = None) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})},
                   head)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _authorised(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.hub.token}"

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}.", head)
        return repo

    def _commit_of(self, repo: Repo, revision: str, head: bool = False) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return commit

    def _info(self, repo: Repo, commit: Commit, blobs: bool = False) -> dict:
        siblings = []
        for p in sorted(commit.files):
            sibling = {"rfilename": p}
            if blobs:  # model_info(files_metadata=True)
                meta = self.hub.metadata(commit, p)
                sibling.update(size=meta["size"], blobId=meta["oid"])
                if "lfs" in meta:
                    sibling["lfs"] = {"sha256": meta["lfs"]["oid"], "size": meta["lfs"]["size"],
                                      "pointerSize": meta["lfs"]["pointerSize"]}
            siblings.append(sibling)
        return {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": False, "disabled": False,
                "gated": False, "lastModified": commit.date, "createdAt": commit.date, "tags": [], "downloads": 0,
                "likes": 0, "author": repo.repo_id.split("/")[0], "siblings": siblings}

    def _no_metadata(self, head: bool = False) -> bool:
        """Answer a metadata route as a download-only mirror does, when the test asks for one."""
        if not self.hub.file_metadata:
            self._send(404, b"Not Found", {"Content-Type": "text/plain"}, head)
        return not self.hub.file_metadata

    def _send_file(self, data: bytes, path: str, headers: dict, head: bool) -> None:
        """The bytes of a file, with ``Range`` and the :attr:`HubServer.truncate_next` hook."""
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **headers}
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start = int(rng[len("bytes="):].split("-")[0] or 0)
        body = memoryview(data)[start:]  # no copy of the file
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        if head:
            return self._send(200, data, headers, head=True)
        with self.hub.lock:
            cut = self.hub.truncate_next.get(path, 0)
            if cut:
                self.hub.truncate_next[path] = cut - 1
        if cut:  # promise the whole body, send half, drop the connection
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body[: max(1, len(body) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, body, headers)

    # ------------------------------------------------------------------ routes
    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, head: bool) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        self.hub.requests.append(("HEAD" if head else "GET", path))
        parts = path.strip("/").split("/")
        if path == "/api/whoami-v2":
            if not self._authorised():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header", head)
            return self._json(200, {"type": "user", "name": self.hub.user, "orgs": [],
                                    "auth": {"type": "access_token", "accessToken": {"displayName": "test",
                                                                                   "role": "write"}}}, head=head)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            if not rest or rest[0] == "revision":
                blobs = parse_qs(url.query).get("blobs", ["false"])[0].lower() == "true"
                if blobs and self._no_metadata(head):
                    return
                commit = self._commit_of(repo, rest[1] if len(rest) > 1 else "main", head)
                if commit is not None:
                    self._json(200, self._info(repo, commit, blobs), head=head)
                return
            if rest[0] == "refs":
                return self._json(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                                     for b, c in sorted(repo.branches.items())],
                                        "tags": [], "converts": []}, head=head)
            if rest[0] == "tree" and len(rest) >= 2:
                if self._no_metadata(head):
                    return
                commit = self._commit_of(repo, rest[1], head)
                if commit is None:
                    return
                prefix = "/".join(rest[2:])
                entries = [self.hub.metadata(commit, p) for p in sorted(commit.files)
                           if not prefix or p.startswith(prefix.rstrip("/") + "/")]
                return self._json(200, entries, head=head)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), head)
        self._error(404, "EntryNotFound", f"no route for {path}", head)

    def _resolve(self, repo_id: str, revision: str, file: str, head: bool) -> None:
        repo = self._repo(repo_id, head)
        if repo is None:
            return
        commit = self._commit_of(repo, revision, head)
        if commit is None:
            return
        if file not in commit.files:
            return self._error(404, "EntryNotFound", f"{file} does not exist at {revision}", head,
                               {"X-Repo-Commit": commit.oid})
        meta = self.hub.metadata(commit, file)
        if "lfs" in meta:  # to the CDN, the metadata on the redirect itself
            location = f"{self.hub.cdn_url}/lfs/{repo_id}/{commit.oid}/{quote(file)}"
            body = f"Found. Redirecting to {location}".encode()
            return self._send(302, body, {"Location": location, "X-Repo-Commit": commit.oid,
                                          "X-Linked-Etag": f'"{meta["lfs"]["oid"]}"',
                                          "X-Linked-Size": str(meta["lfs"]["size"]),
                                          "Content-Type": "text/plain; charset=utf-8"}, head)
        self._send_file(self.hub.served(repo_id, commit, file), file,
                        {"X-Repo-Commit": commit.oid, "ETag": f'"{meta["oid"]}"'}, head)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        self.hub.requests.append(("POST", path))
        body = self._body()
        parts = path.strip("/").split("/")
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if path == "/api/repos/create":
            if not self._authorised():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            payload = json.loads(body or b"{}")
            name = payload["name"]
            repo_id = name if "/" in name else f"{payload.get('organization') or self.hub.user}/{name}"
            url_ = f"{self.hub.url}/{repo_id}"
            if not self.hub.create_repo(repo_id):
                return self._json(409, {"error": "You already created this model repo", "url": url_})
            return self._json(200, {"url": url_, "name": repo_id, "id": repo_id})
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            repo_id, action, revision = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
            repo = self._repo(repo_id)
            if repo is None:
                return
            if action == "paths-info":
                if self._no_metadata():
                    return
                commit = self._commit_of(repo, revision)
                if commit is None:
                    return
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    wanted = json.loads(body or b"{}").get("paths", [])
                else:
                    wanted = parse_qs(body.decode()).get("paths", [])
                return self._json(200, [self.hub.metadata(commit, p) for p in wanted if p in commit.files])
            if not self._authorised():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if action == "preupload":
                files = json.loads(body)["files"]
                head_commit = repo.resolve(revision)
                return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                  for f in files],
                                        "commitOid": head_commit.oid if head_commit else None})
            if action == "commit":
                added, deleted, message = {}, [], ""
                for line in body.splitlines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    value = item["value"]
                    if item["key"] == "header":
                        message = value.get("summary", "")
                    elif item["key"] == "file":
                        content = value["content"]
                        added[value["path"]] = (base64.b64decode(content) if value.get("encoding") == "base64"
                                                else content.encode())
                    elif item["key"] in ("deletedFile", "deletedFolder"):
                        deleted.append(value["path"])
                    else:
                        return self._error(400, "BadRequest", f"this test Hub takes inline files only, not {item['key']}")
                if revision not in repo.branches:
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                if self.hub.fail_commits:
                    return self._error(400, "BadRequest", "the storage backend rejected the commit")
                with self.hub.lock:
                    added = {p: self.hub.corrupt_uploads.get(p, data) for p, data in added.items()}
                    commit = self.hub._commit(repo, revision, added, deleted, message)
                return self._json(200, {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.oid}",
                                        "commitOid": commit.oid, "pullRequestUrl": None})
        self._error(404, "EntryNotFound", f"no route for POST {path}")


class _CdnHandler(_Handler):
    """The CDN that LFS downloads are redirected to: ``GET``/``HEAD /lfs/<org>/<name>/<commit>/<path>``."""

    def _get(self, head: bool) -> None:
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append(("HEAD" if head else "GET", path))
        parts = path.strip("/").split("/")
        repo = self.hub.repos.get("/".join(parts[1:3])) if len(parts) >= 5 and parts[0] == "lfs" else None
        commit = repo.commits.get(parts[3]) if repo is not None else None
        file = "/".join(parts[4:])
        if commit is None or file not in commit.lfs:
            return self._send(404, b"NoSuchKey", {"Content-Type": "text/plain"}, head)
        self._send_file(self.hub.served(repo.repo_id, commit, file), file, {}, head)

    def do_POST(self) -> None:
        self._send(405, b"Method Not Allowed", {"Content-Type": "text/plain"})
