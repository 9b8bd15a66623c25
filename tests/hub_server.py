"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1, standard library only.

It speaks the part of the Hub API that the real ``huggingface_hub`` client uses to create a
repo, commit files (``preupload`` answers ``regular`` for every file, so contents come inline in
the NDJSON commit), resolve and download files (``HEAD``/``GET`` with ``X-Repo-Commit``, ``ETag``,
``Range``), list revisions, refs and trees, and answer 404s with the Hub's ``X-Error-Code``.

Test hooks: :meth:`HubServer.tamper` changes the bytes served for a file without a new commit (a
corrupt mirror or a man in the middle); :attr:`HubServer.truncate_next` makes the next downloads of
a path send half the body and drop the connection; :attr:`HubServer.requests` logs every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    message: str
    date: str


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


def _git_blob_sha1(data: bytes) -> str:
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
        self.fail_commits = False  # answer every commit with a server error (a failed upload)
        self.corrupt_uploads: dict[str, bytes] = {}  # path -> bytes served instead, in every new commit
        self.lock = threading.Lock()
        self._digests: dict[tuple[str, int], tuple[bytes, str]] = {}  # see digest()
        self._counter = 0
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "HubServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self._thread = None

    # ------------------------------------------------------------------ state
    def create_repo(self, repo_id: str) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = Repo(repo_id)
            self.repos[repo_id] = repo
            self._commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                         [], "initial commit")
            return True

    def _commit(self, repo: Repo, branch: str, added: dict[str, bytes], deleted: list[str], message: str) -> Commit:
        parent = repo.branches.get(branch)
        files = dict(repo.commits[parent].files) if parent else {}
        files.update(added)
        for path in deleted:
            files.pop(path, None)
        self._counter += 1
        oid = hashlib.sha1(f"{repo.repo_id}:{self._counter}:{parent}:{message}".encode()).hexdigest()
        commit = Commit(oid, parent, files, message, time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()))
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

    def digest(self, kind: str, data: bytes) -> str:
        """``"sha256"`` (the ETag) or ``"git-sha1"`` (the tree oid) of ``data``, computed once per
        bytes object: a ResNet-50 is hashed once, not at every HEAD and GET. The memo holds ``data``,
        so its id is not reused while the entry lives."""
        with self.lock:
            memo = self._digests.get((kind, id(data)))
        if memo is None:
            value = hashlib.sha256(data).hexdigest() if kind == "sha256" else _git_blob_sha1(data)
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

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head)

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

    def _info(self, repo: Repo, commit: Commit) -> dict:
        return {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": False, "disabled": False,
                "gated": False, "lastModified": commit.date, "createdAt": commit.date, "tags": [], "downloads": 0,
                "likes": 0, "author": repo.repo_id.split("/")[0],
                "siblings": [{"rfilename": p} for p in sorted(commit.files)]}

    def _entry(self, repo: Repo, commit: Commit, path: str) -> dict:
        data = self.hub.served(repo.repo_id, commit, path)
        return {"type": "file", "oid": self.hub.digest("git-sha1", data), "size": len(data), "path": path}

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
                commit = self._commit_of(repo, rest[1] if len(rest) > 1 else "main", head)
                if commit is not None:
                    self._json(200, self._info(repo, commit), head=head)
                return
            if rest[0] == "refs":
                return self._json(200, {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c}
                                                     for b, c in sorted(repo.branches.items())],
                                        "tags": [], "converts": []}, head=head)
            if rest[0] == "tree" and len(rest) >= 2:
                commit = self._commit_of(repo, rest[1], head)
                if commit is None:
                    return
                prefix = "/".join(rest[2:])
                entries = [self._entry(repo, commit, p) for p in sorted(commit.files)
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
            return self._error(404, "EntryNotFound", f"{file} does not exist at {revision}", head)
        data = self.hub.served(repo_id, commit, file)
        etag = f'"{self.hub.digest("sha256", data)}"'
        headers = {"X-Repo-Commit": commit.oid, "ETag": etag, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
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
            cut = self.hub.truncate_next.get(file, 0)
            if cut:
                self.hub.truncate_next[file] = cut - 1
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
                commit = self._commit_of(repo, revision)
                if commit is None:
                    return
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    wanted = json.loads(body or b"{}").get("paths", [])
                else:
                    wanted = parse_qs(body.decode()).get("paths", [])
                return self._json(200, [self._entry(repo, commit, p) for p in wanted if p in commit.files])
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
                    commit = self.hub._commit(repo, revision, added, deleted, message)
                    for p, data in self.hub.corrupt_uploads.items():
                        self.hub.tampered[(repo_id, commit.oid, p)] = data
                return self._json(200, {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{commit.oid}",
                                        "commitOid": commit.oid, "pullRequestUrl": None})
        self._error(404, "EntryNotFound", f"no route for POST {path}")
