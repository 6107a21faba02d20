"""Checkpoints on local disk, mirrored to S3 in the background with a commit protocol.

Local layout (`root` = <output_dir>/checkpoints):

    root/step_00000100/...        DeepSpeed's files (model, optimizer shards), rank_*.pt (RNG + data
                                  pipeline state per rank), elastic/ (train/universal.py: the same
                                  weights and Adam moments for any world size), run_config.yaml,
                                  ds_config.json, tokenizer/
    root/step_00000100/COMMITTED  {tag, step, world_size, files: [{path, size, sha256}], files_sha256},
                                  written by each node's local rank 0 once every rank saved and
                                  hashed its own files
    root/latest                   newest locally committed tag, written after COMMITTED

S3 (see `s3sync` for the primitives; the attempt-scoped layout is `AttemptCheckpoints`, here):

    step_00000100/attempt-<id>/<files>                 the files of ONE attempt of the run
    step_00000100/attempt-<id>/_manifests/rank_<r>.json what rank r of that attempt uploaded
    step_00000100/COMMITTED                            names the attempt whose files ARE the checkpoint

After the local save each rank's files go to S3 from a background thread, into its attempt's own
key space (train/checkpoint_upload.py: the uploader, its retries, deadline and retention).

Resume (`fetch_for_resume`) takes the NEWEST committed checkpoint (`latest` is a hint: a warning says
when it disagrees or is unreadable), verifies every file against COMMITTED (size + sha256, locally
too) and the marker itself (its own checksum, one file set per rank), and falls back to the previous
committed checkpoint, with a warning naming what is damaged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from botocore.exceptions import ClientError

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.s3sync import (
    COMMITTED,
    LATEST,
    ChecksumError,
    S3Checkpoints,
    describe_files,
    error_code,
    sha256_file,
)


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("_")[1])


def owner_rank(relpath: str) -> int:
    """Which rank wrote a checkpoint file, and so uploads it: DeepSpeed's `*zero_pp_rank_<r>_*`, our
    `rank_<r>.pt` and `elastic/params_<r>.pt`; everything else (DeepSpeed's model states under
    ZeRO-1/2, elastic/meta.json and state.pt, the configs, the tokenizer) is rank 0's."""
    m = (re.search(r"zero_pp_rank_(\d+)_", relpath)
         or re.search(r"(?:^|/)(?:rank|elastic/params)_(\d+)\.pt$", relpath))
    return int(m.group(1)) if m else 0


def list_files(tag_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*")
                  if p.is_file() and p.name != COMMITTED)


def files_digest(files: list[dict]) -> str:
    """The sha256 of a manifest's file list, stored beside it: an edited or partly lost COMMITTED
    (valid JSON, one entry fewer) no longer matches it."""
    canon = json.dumps(sorted([e["path"], e["size"], e["sha256"]] for e in files), separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def check_manifest(files: list[dict], world_size: int | None, digest: str | None, where: str) -> None:
    """A COMMITTED marker is whole: its own checksum holds (when it has one), and every per-rank file
    kind (rank_<r>.pt, DeepSpeed's *zero_pp_rank_<r>_*, elastic/params_<r>.pt) is there for every
    rank 0..world_size-1 (world_size None: up to the highest rank named). ChecksumError otherwise."""
    if digest is not None and files_digest(files) != digest:
        raise ChecksumError(f"{where} does not match its own checksum (an entry lost or edited): corrupt")
    kinds: dict[str, set[int]] = {}
    for e in files:
        m = (re.search(r"zero_pp_rank_(\d+)_", e["path"])
             or re.search(r"(?:^|/)(?:rank|elastic/params)_(\d+)\.pt$", e["path"]))
        if m:
            kind = e["path"][:m.start(1)] + "{rank}" + e["path"][m.end(1):]
            kinds.setdefault(kind, set()).add(int(m.group(1)))
    kinds.setdefault("rank_{rank}.pt", set())
    world = world_size if world_size is not None else 1 + max(max(r, default=0) for r in kinds.values())
    for kind, ranks in sorted(kinds.items()):
        missing = sorted(set(range(world)) - ranks)
        if missing:
            name = kind.replace("{rank}", str(missing[0]) if "zero_pp" in kind else f"{missing[0]:05d}")
            raise ChecksumError(f"{where} lists no {name} (rank {missing[0]} of {world}): incomplete, "
                                f"corrupt")


# -- local commit -----------------------------------------------------------------------------------
def commit_local(root: Path, tag: str, world_size: int | None = None, known: list[dict] = ()) -> None:
    """The node's local rank 0, after every rank saved: COMMITTED (size + sha256 of every file, the
    list's own checksum, the world size) in the tag dir, then root/latest. `known`: entries the
    ranks already hashed (each its own files, in parallel); the rest is hashed here."""
    tag_dir = root / tag
    have = {e["path"]: e for e in known}
    paths = list_files(tag_dir)
    stale = [p for p in paths if p not in have or have[p]["size"] != (tag_dir / p).stat().st_size]
    fresh = {e["path"]: e for e in describe_files(tag_dir, stale)}
    files = [dict(fresh.get(p) or have[p]) for p in paths]
    manifest = {"tag": tag, "step": step_of(tag), "world_size": world_size, "files": files,
                "files_sha256": files_digest(files)}
    (tag_dir / COMMITTED).write_text(json.dumps(manifest))
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(tag)
    tmp.replace(root / LATEST)  # atomic: a reader sees the old or the new tag, never half


def local_committed_tags(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob(f"step_*/{COMMITTED}"))


def local_manifest(tag_dir: Path) -> dict:
    """The local COMMITTED marker as {files: [{path, size, sha256|None}], ...}; ChecksumError when it
    is unreadable or not whole. An older marker ({path: size}) has no checksums."""
    where = tag_dir / COMMITTED
    try:
        manifest = json.loads(where.read_text())
        files = manifest["files"]
        if isinstance(files, dict):  # written before checksums were kept locally
            files = [{"path": p, "size": int(n), "sha256": None} for p, n in files.items()]
        elif not all({"path", "size", "sha256"} <= set(e) for e in files):
            raise KeyError("a file entry lacks path/size/sha256")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ChecksumError(f"{where} is not a readable manifest ({type(e).__name__}): corrupt") from e
    check_manifest(files, manifest.get("world_size"), manifest.get("files_sha256"), str(where))
    return {**manifest, "files": files}


def verify_local(tag_dir: Path) -> None:
    """Every file of a local checkpoint against its COMMITTED marker: size, then sha256 (the same
    check as an S3 download; ~1 s per GB on one core)."""
    for e in local_manifest(tag_dir)["files"]:
        p = tag_dir / e["path"]
        if not p.is_file() or p.stat().st_size != e["size"]:
            have = p.stat().st_size if p.is_file() else "missing"
            raise ChecksumError(f"{p}: {have} bytes, manifest says {e['size']} (truncated or missing)")
        if e["sha256"] is not None and sha256_file(p) != e["sha256"]:
            raise ChecksumError(f"{p}: sha256 differs from the manifest (corrupt)")


def prune_local(root: Path, keep_last: int, protect: set[str] = frozenset()) -> list[str]:
    """Delete local checkpoints beyond the newest `keep_last` committed ones (never `protect`ed
    tags, i.e. those still uploading), and uncommitted leftovers older than the newest commit."""
    committed = local_committed_tags(root)
    if not committed:
        return []
    keep = set(committed[-keep_last:]) | set(protect)
    doomed = [p.name for p in sorted(root.glob("step_*")) if p.name not in keep and p.name < committed[-1]]
    for t in doomed:
        shutil.rmtree(root / t, ignore_errors=True)
    return doomed


# -- S3: one key space per attempt -----------------------------------------------------------------
def attempt_dir(attempt: str) -> str:
    """The key space of one attempt's files and manifests inside a checkpoint tag."""
    return f"attempt-{attempt or 'none'}"


class AttemptCheckpoints(S3Checkpoints):
    """The checkpoint prefix with attempt-scoped objects: an attempt writes only under
    `step_X/attempt-<id>/`, and `step_X/COMMITTED` names the attempt whose objects are the
    checkpoint. An older attempt that keeps uploading after a takeover therefore writes only into
    its own key space, which no reader looks at; it cannot replace a COMMITTED either (a conditional
    put), only create one for a step that has none, naming its own complete, verified objects."""

    def object_key(self, tag: str, manifest: dict, path: str) -> str:
        """Where a committed file lives (markers written before attempt scoping: directly in the tag)."""
        return self.uri.key(tag, manifest.get("objects", ""), path)

    def commit_attempt(self, tag: str, step: int, entries: list[dict], meta: dict, attempt: str) -> None:
        """Check every object of this attempt (size + sha256 metadata), then write COMMITTED naming
        it, then `latest`. COMMITTED is put with If-None-Match: an existing marker is replaced only
        by the lease holder, and only the marker it read (If-Match): never an orphan's overwrite."""
        objects = attempt_dir(attempt)
        for e in entries:
            key = self.uri.key(tag, objects, e["path"])
            head = self.client.head_object(Bucket=self.uri.bucket, Key=key)
            if head["ContentLength"] != e["size"] or head.get("Metadata", {}).get("sha256") != e["sha256"]:
                raise ChecksumError(f"s3://{self.uri.bucket}/{key}: {head['ContentLength']} bytes on S3, "
                                    f"manifest says {e['size']} (or another sha256)")
        body = json.dumps({"tag": tag, "step": step, "objects": objects, "files": entries,
                           "files_sha256": files_digest(entries), **meta}, indent=1).encode()
        key = self.uri.key(tag, COMMITTED)
        try:
            self.client.put_object(Bucket=self.uri.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as e:
            if error_code(e) in ("NotImplemented", "501"):  # a store without conditional writes
                self.check_lease(attempt)
                self.client.put_object(Bucket=self.uri.bucket, Key=key, Body=body)
            elif error_code(e) not in ("PreconditionFailed", "412"):
                raise
            else:  # a marker is there: ours (a retried put whose answer was lost), or another attempt's
                old = self.client.get_object(Bucket=self.uri.bucket, Key=key)
                try:
                    theirs = json.loads(old["Body"].read()).get("objects")
                except (ValueError, AttributeError):
                    theirs = None
                if theirs != objects:
                    self.check_lease(attempt)  # FencedError unless this attempt owns the prefix
                    # 412 again: replaced meanwhile; retried from the top (the lease check fences then)
                    self.client.put_object(Bucket=self.uri.bucket, Key=key, Body=body, IfMatch=old["ETag"])
        self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key(LATEST), Body=tag.encode())

    def committed_checked(self, tag: str) -> dict | None:
        """committed_manifest, and the marker is whole (its checksum, every rank's files)."""
        manifest = self.committed_manifest(tag)
        if manifest is not None:
            check_manifest(manifest["files"], manifest.get("world_size"), manifest.get("files_sha256"),
                           f"s3://{self.uri.bucket}/{self.uri.key(tag, COMMITTED)}")
        return manifest

    def fetch(self, tag: str, dest: Path) -> dict:
        """Download committed `tag` (the committed attempt's objects only) into `dest` and verify
        every file (size + sha256); raises ChecksumError / FileNotFoundError."""
        manifest = self.committed_checked(tag)
        if manifest is None:
            raise FileNotFoundError(f"{self.uri}/{tag} has no {COMMITTED} marker")
        self.download_verified(manifest["files"], dest, lambda path: self.object_key(tag, manifest, path))
        return manifest

    def latest_text(self) -> str | None:
        """What `latest` says, raw (None: absent)."""
        try:
            raw = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(LATEST))["Body"].read()
        except ClientError as e:
            if error_code(e) not in ("NoSuchKey", "404", "NotFound"):
                raise
            return None
        return raw.decode("utf-8", "replace").strip()

    def prune_attempts(self, keep_last: int) -> list[str]:
        """Retention after a commit: `prune`, then the objects of other attempts inside the kept
        committed tags (an orphan's uploads, a replaced commit), up to the newest committed tag."""
        doomed = self.prune(keep_last)
        committed = self.committed_tags()
        for tag in committed:
            manifest = self.committed_manifest(tag)
            keep = manifest.get("objects") if manifest else None
            if not keep:
                continue
            stale = {k.split("/")[-1] for k in self._subdirs(tag)} - {keep}
            for sub in sorted(s for s in stale if s.startswith("attempt-")):
                keys = self.list_keys(f"{tag}/{sub}/")
                for i in range(0, len(keys), 1000):
                    self.client.delete_objects(Bucket=self.uri.bucket,
                                               Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
                doomed.append(f"{tag}/{sub}")
        return doomed

    def _subdirs(self, tag: str) -> list[str]:
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.uri.bucket, Prefix=self.uri.key(tag) + "/", Delimiter="/")
        for page in pages:
            out += [cp["Prefix"].rstrip("/") for cp in page.get("CommonPrefixes", [])]
        return out


# -- resume -----------------------------------------------------------------------------------------
class NoUsableCheckpointError(RuntimeError):
    """Committed checkpoints exist at the source, but none of them is intact."""


# what a damaged checkpoint raises while being read: each one means "try the previous checkpoint"
DAMAGE = (ChecksumError, FileNotFoundError, ValueError, KeyError, TypeError, OSError)


def fetch_for_resume(source: str, dest: Path, log: Callable[[str], None] = print) -> tuple[Path, str] | None:
    """Find the newest committed checkpoint at `source` (s3:// URI, a checkpoints root, or one tag
    directory), verify it (download into `dest` for S3; size + sha256 of every file either way, and
    the COMMITTED marker's own checksum), and fall back to the previous committed one, with a
    warning that names the damaged object, when anything is wrong with it: a truncated, garbage or
    deleted file, an unreadable or incomplete COMMITTED marker. `latest` is a hint only: the newest
    COMMITTED tag wins, with a warning when `latest` is absent, unreadable, names a tag that is not
    committed, or an older one (a run stopped between COMMITTED and `latest`). Returns (tag_dir,
    tag), or None when `source` holds no committed checkpoint; NoUsableCheckpointError (listing
    what was tried) when none is intact."""
    if source.startswith("s3://"):
        s3 = AttemptCheckpoints(parse_s3_uri(source))
        candidates = s3.committed_tags()[::-1]
        latest = s3.latest_text()

        def load(tag: str) -> Path:
            shutil.rmtree(dest / tag, ignore_errors=True)
            s3.fetch(tag, dest / tag)
            return dest / tag
    else:
        root = Path(source)
        if (root / COMMITTED).is_file():  # one tag directory
            verify_local(root)
            return root, root.name
        candidates = local_committed_tags(root)[::-1]
        latest = (root / LATEST).read_text(errors="replace").strip() if (root / LATEST).is_file() else None

        def load(tag: str) -> Path:
            verify_local(root / tag)
            return root / tag
    where = source.rstrip("/")
    if candidates and latest != candidates[0]:
        newest = candidates[0]
        if latest is None:
            why = "is missing"
        elif not (latest.startswith("step_") and latest[5:].isdigit()):
            why = f"is unreadable ({latest[:40]!r})"
        elif latest not in candidates:
            why = f"names {latest}, which is not a committed checkpoint there (deleted, or never committed)"
        else:
            why = f"names {latest}, older than the newest committed one (a stop between COMMITTED and latest)"
        log(f"WARNING: {where}/{LATEST} {why}: resuming from the newest committed checkpoint, {newest}")
    tried = []
    for i, tag in enumerate(candidates):
        try:
            return load(tag), tag
        except DAMAGE as e:
            tried.append(f"{tag} ({e})")
            nxt = candidates[i + 1] if i + 1 < len(candidates) else None
            log(f"WARNING: checkpoint {where}/{tag} is unusable: {e}; "
                + (f"falling back to the previous committed one, {nxt}" if nxt else "no other left"))
            if source.startswith("s3://"):
                shutil.rmtree(dest / tag, ignore_errors=True)
    if candidates:
        raise NoUsableCheckpointError(f"no intact committed checkpoint under {source}; tried: "
                                      f"{'; '.join(tried)}")
    return None
