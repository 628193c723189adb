"""Video life-cycle routes (beyond the spec): complete an upload, fail it, delete a video.

A video is `uploading` from POST /video until its uploader completes it (every chunk 0..n-1
committed: then `active`) or fails it (`failed`, its chunks collected by the maintenance pass);
DELETE /video/{id} removes any video. Listing and manifests show `active` videos unless asked
for another status (`?status=uploading|failed|any`).
"""

from __future__ import annotations

import statistics
from typing import Any

from shoal.web import Api, ApiError

from .models import CompleteBody, FailBody
from .records import ChunkRecord
from .store import Incomplete, StatusConflict, UnknownVideo


def video_json(video: Any, total_chunks: int) -> dict:
    """A video as GET /videos lists it (the spec's fields, plus why it failed)."""
    out = {
        "video_id": video.video_id,
        "title": video.title,
        "duration_sec": video.duration_sec,
        "total_chunks": video.total_chunks if video.total_chunks is not None else total_chunks,
        "status": video.status,
        "created_at": video.created_at,
    }
    if video.reason:
        out["reason"] = video.reason
    return out


def chunk_summary(chunks: list[ChunkRecord]) -> dict:
    """The manifest's summary fields, measured from the chunks (they vary: 0.3-4 s, any size).

    chunk_duration_sec / chunk_size_bytes (the spec's names) are the LONGEST chunk's duration
    and the LARGEST chunk's size: a bound a client can size its buffers by. The means and the
    total come along; every chunk's own duration_sec and size_bytes are in `chunks`."""
    sizes = [r.placement.size_bytes for r in chunks]
    durations = [r.duration_sec for r in chunks if r.duration_sec is not None]
    return {
        "chunk_duration_sec": round(max(durations), 6) if durations else None,
        "chunk_duration_mean_sec": round(statistics.fmean(durations), 6) if durations else None,
        "chunk_size_bytes": max(sizes) if sizes else 0,
        "chunk_size_mean_bytes": round(statistics.fmean(sizes)) if sizes else 0,
        "total_bytes": sum(sizes),
        "chunks_duration_sec": round(sum(durations), 6) if durations else None,
    }


def make_video_api(m: Any) -> Api:
    api = Api(tags=["metadata"])

    def known(video_id: str) -> None:
        if len(video_id) > 128 or "\0" in video_id:
            raise ApiError(404, f"video {video_id} not found")

    @api.post(
        "/video/{video_id}/complete",
        body=CompleteBody,
        summary="Finish an upload: every chunk 0..n-1 must be committed; the video becomes active",
        extra_responses={404: "no such video", 409: "chunks missing, or the video is failed"},
    )
    async def complete(request: Any, video_id: str, body: CompleteBody) -> dict:
        known(video_id)
        try:
            video = await m.store.complete_video(video_id, body.total_chunks)
        except UnknownVideo:
            raise ApiError(404, f"video {video_id} not found") from None
        except Incomplete as exc:
            raise ApiError(
                409, str(exc), details={"missing": exc.missing[:1000], "extra": exc.extra[:1000]}
            ) from None
        except StatusConflict as exc:
            raise ApiError(409, str(exc)) from None
        return video_json(video, video.total_chunks or 0)

    @api.post(
        "/video/{video_id}/fail",
        body=FailBody,
        summary="Mark an upload failed (its chunks are collected); idempotent",
        extra_responses={404: "no such video", 409: "the video is active (delete it instead)"},
    )
    async def fail(request: Any, video_id: str, body: FailBody) -> dict:
        known(video_id)
        try:
            video = await m.store.fail_video(video_id, body.reason)
        except UnknownVideo:
            raise ApiError(404, f"video {video_id} not found") from None
        except StatusConflict as exc:
            raise ApiError(409, str(exc)) from None
        return video_json(video, await m.store.total_chunks(video_id))

    @api.delete(
        "/video/{video_id}",
        summary="Delete a video (any status); its chunks are collected by the maintenance pass",
        extra_responses={404: "no such video"},
    )
    async def delete(request: Any, video_id: str) -> dict:
        known(video_id)
        try:
            video = await m.store.delete_video(video_id)
        except UnknownVideo:
            raise ApiError(404, f"video {video_id} not found") from None
        return {
            "status": "deleted",
            "video_id": video_id,
            "message": f"video {video_id} deleted; {await m.store.total_chunks(video_id)} chunk(s) to collect",
            "previous_status": video.status,
        }

    return api
