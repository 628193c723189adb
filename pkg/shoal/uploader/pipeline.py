"""One upload from a file on disk to committed chunks: the steps the service and the CLI share.

    check_and_register: probe the content (InvalidVideo -> 400), create the video record
    process:            chunking -> registering -> uploading_chunks -> finalizing -> completed

The video id comes from the metadata service before the client gets its answer, so the id the
client sees is the one the manifest uses. The video is `uploading` until every chunk is
committed and `POST /video/{id}/complete` (the metadata service checks chunks 0..n-1) makes it
`active`: all or nothing. On failure the video is marked `failed` (`POST /video/{id}/fail`; the
metadata service collects its committed chunks, and marks it failed itself after
--upload-grace if this call cannot reach it), everything this upload stored that is not part of
a committed placement is deleted here, and the status says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import httpx

from shoal.uploader import media
from shoal.uploader.chunker import ChunkPlan, plan_chunks
from shoal.uploader.distribute import DistributionError, Distributor, chunk_id_for, sha256_tag
from shoal.uploader.fmp4 import Fmp4Error, read_layout
from shoal.uploader.metaclient import MetadataClient, MetadataError
from shoal.uploader.sessions import Session, SessionStore, progress_in

log = logging.getLogger("shoal.uploader")


@dataclass
class Settings:
    concurrency: int = 4  # chunks in flight at once
    retries: int = 3
    backoff: float = 0.2
    keep_work_files: bool = False


def _read(fd: int, plan: ChunkPlan) -> tuple[bytes, str]:
    """The chunk's bytes and their sha256, off the event loop."""
    data = os.pread(fd, plan.size, plan.offset)
    return data, sha256_tag(data)


class Pipeline:
    def __init__(
        self,
        metadata: MetadataClient,
        http: httpx.AsyncClient,
        sessions: SessionStore,
        work_dir: str | os.PathLike[str],
        settings: Settings | None = None,
    ) -> None:
        self.metadata = metadata
        self.http = http
        self.sessions = sessions
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings or Settings()

    async def check_and_register(self, s: Session, path: Path, mode: str | None = None) -> media.Probe:
        """Probe the file (InvalidVideo when it is not a whole video), then create the video record.

        `mode` forces the redundancy mode (a manual override on the metadata service)."""
        await self.sessions.update(s, "processing", size_bytes=os.stat(path).st_size)
        probe = await media.probe(path)
        await self.sessions.update(
            s, progress=15, container=probe.container, duration_sec=round(probe.duration_sec, 3)
        )
        video_id = await self.metadata.create_video(s.title, round(probe.duration_sec, 3))
        if mode is not None:
            try:
                await self.metadata.set_override(video_id, mode)
            except MetadataError as exc:
                await self._mark_failed(video_id, f"setting the redundancy mode failed: {exc}")
                raise
        await self.sessions.update(s, progress=19, video_id=video_id)
        return probe

    async def process(self, s: Session, source: Path) -> None:
        """Chunk, distribute and commit; always ends the session as completed or failed."""
        fmp4 = self.work_dir / f"{s.upload_session_id}.mp4"
        distributor: Distributor | None = None
        try:
            plans = await self._chunk(s, source, fmp4)
            distributor = await self._register(s)
            await self._distribute(s, distributor, fmp4, plans)
            await self._finalize(s, distributor, plans)
        except asyncio.CancelledError:
            await self._fail(s, distributor, "cancelled: the uploader service is shutting down")
            raise
        except (media.InvalidVideo, media.MediaToolError, Fmp4Error) as exc:
            await self._fail(s, distributor, f"chunking failed: {exc}")
        except (DistributionError, MetadataError) as exc:
            await self._fail(s, distributor, str(exc))
        except Exception as exc:
            log.exception("upload %s failed", s.upload_session_id)
            await self._fail(s, distributor, f"internal error: {exc!r}")
        finally:
            if not self.settings.keep_work_files:
                for leftover in (fmp4, source):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover)

    async def _chunk(self, s: Session, source: Path, fmp4: Path) -> list[ChunkPlan]:
        await self.sessions.update(s, "chunking")
        how = await media.remux(source, fmp4)
        await self.sessions.update(s, progress=35, remux=how)

        def layout():
            with open(fmp4, "rb") as f:
                return read_layout(f, os.fstat(f.fileno()).st_size)

        plans = plan_chunks(await asyncio.to_thread(layout))
        await self.sessions.update(s, progress=39, total_chunks=len(plans))
        return plans

    async def _register(self, s: Session) -> Distributor:
        await self.sessions.update(s, "registering")
        assert s.video_id is not None
        mode = await self.metadata.redundancy_mode(s.video_id)
        nodes = await self.metadata.healthy_nodes()
        d = Distributor(
            self.metadata,
            self.http,
            nodes,
            mode,
            concurrency=self.settings.concurrency,
            retries=self.settings.retries,
            backoff=self.settings.backoff,
        )
        # d.mode: replication when erasure coding lacks 5 usable nodes (Distributor.fallback says why)
        await self.sessions.update(s, progress=49, redundancy_mode=d.mode, nodes=d.picker.usable)
        return d

    async def _distribute(self, s: Session, d: Distributor, fmp4: Path, plans: list[ChunkPlan]) -> None:
        await self.sessions.update(s, "uploading_chunks")
        assert s.video_id is not None
        video_id = s.video_id
        # twice the PUT concurrency: while some chunks wait for their commit, others are sent
        slots = asyncio.Semaphore(2 * self.settings.concurrency)
        done = 0
        fd = os.open(fmp4, os.O_RDONLY)

        async def one(plan: ChunkPlan) -> None:
            nonlocal done
            try:
                data, checksum = await asyncio.to_thread(_read, fd, plan)
                times = (plan.start_sec, plan.duration_sec)
                await d.store_chunk(video_id, plan.sequence_num, data, times, checksum)
                done += 1
                await self.sessions.update(
                    s, progress=progress_in("uploading_chunks", done / len(plans)), chunks_uploaded=done
                )
            finally:
                slots.release()

        tasks: list[asyncio.Task] = []
        try:
            for plan in plans:
                await slots.acquire()
                failed = next((t for t in tasks if t.done() and t.exception()), None)
                if failed is not None:
                    slots.release()
                    break
                tasks.append(asyncio.create_task(one(plan)))
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
            os.close(fd)

    async def _finalize(self, s: Session, d: Distributor, plans: list[ChunkPlan]) -> None:
        await self.sessions.update(s, "finalizing")
        assert s.video_id is not None
        committed = {
            p.sequence_num
            for p in plans
            if (st := d.stored.get(chunk_id_for(s.video_id, p.sequence_num))) is not None and st.committed
        }
        if len(committed) != len(plans):  # never ask to complete what this upload did not commit
            missing = sorted(p.sequence_num for p in plans if p.sequence_num not in committed)
            raise DistributionError(f"chunks {missing[:10]} were not committed")
        # the metadata service checks that chunks 0..n-1 are all committed, then makes it active
        await self.metadata.call(
            "POST",
            f"/video/{s.video_id}/complete",
            json={"total_chunks": len(plans)},
            deadline=self.metadata.commit_timeout,
        )
        await self.sessions.update(s, progress=95)
        orphans = await d.cleanup(keep_committed=True)
        if orphans:
            await self.sessions.update(s, cleanup=f"removed {orphans} piece(s) left on nodes that failed")
        await self.sessions.finish(s)

    async def _mark_failed(self, video_id: str, reason: str) -> tuple[str | None, bool]:
        """POST /video/{id}/fail: (None when done, else why not, and whether the video turned
        out active). Not reached: the metadata service marks it failed after its upload grace."""
        try:
            await self.metadata.call("POST", f"/video/{video_id}/fail", json={"reason": reason[:1900]})
        except MetadataError as exc:
            return str(exc), exc.status == 409 and " is active" in str(exc)
        return None, False

    async def _fail(self, s: Session, d: Distributor | None, reason: str) -> None:
        notes = []
        if s.video_id is not None:
            why, active = await self._mark_failed(s.video_id, reason)
            if active:  # our completion landed although its answer did not: the upload is whole
                s.cleanup = f"the completion was answered late ({reason}); the video is active"
                await self.sessions.finish(s)
                return
            if why is None:
                notes.append(
                    "video marked failed (its committed chunks are collected by the metadata service)"
                )
            else:
                notes.append(
                    f"video not marked failed now ({why}); the metadata service does it after its upload grace"
                )
        if d is not None:
            # committed placements are the metadata service's to collect (with their records)
            deleted = await d.cleanup(keep_committed=True)
            notes.insert(0, f"deleted {deleted} uncommitted piece(s)")
        note = "; ".join(notes) or None
        log.warning("upload %s failed: %s", s.upload_session_id, reason)
        if note:
            s.cleanup = note
        await self.sessions.finish(s, reason)
