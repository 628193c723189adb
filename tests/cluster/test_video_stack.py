"""The video stack (metadata on a 3-member etcd, five storage nodes, an uploader, each on its
own host or sharing as placed) under partitions, delay, pauses and kill -9: every acknowledged
upload plays after healing, and every play is byte-exact."""

from __future__ import annotations

import httpx
import pytest

from shoal.testing.cluster import checkers
from shoal.testing.cluster.clients import Video, play
from shoal.testing.cluster.history import History

from .conftest import FAULTS, assert_held, run_checked, stack_fixture

pytestmark = pytest.mark.slow
video = stack_fixture("video")


@pytest.mark.parametrize("fault", FAULTS)
def test_video_stack_holds(video, fault, tmp_path):
    report = run_checked(video, fault, tmp_path)
    assert_held(report)
    uploads = [n for n in report.notes if "uploads acknowledged" in n]
    assert uploads and not uploads[0].startswith("0 "), report.describe()


def test_planted_bug_a_player_given_a_truncated_manifest_is_reported(video):
    """The real player, handed a manifest that lost its last chunk (read before the upload was
    final, say), plays without an error: the byte-exact checker must still fail the play."""
    history = History()
    w = Video(history, video.parts["uploader"].url, video.parts["metadata"].url, video.video)
    if not video.acked:
        with httpx.Client(timeout=20) as http:
            w.upload(http)
        video.acked += w.acked
    vid = video.acked[0]
    manifest = httpx.get(f"{w.metadata_url}/manifest/{vid}", timeout=10).json()
    assert len(manifest["chunks"]) >= 2
    manifest["chunks"] = manifest["chunks"][:-1]
    manifest["total_chunks"] = len(manifest["chunks"])
    op = play(history, 1, vid, w.metadata_url, w.scratch, 60, manifest=manifest)
    assert op.outcome == "ok", op.error
    found = checkers.plays_exact(history, {vid: video.expected})
    assert len(found) == 1 and "expected" in found[0]
    good = play(history, 1, vid, w.metadata_url, w.scratch, 60)  # and the whole manifest plays exact
    assert good.outcome == "ok" and good.result == video.expected
