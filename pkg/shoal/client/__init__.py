"""shoal.client: the smart streaming client (node scoring, scheduling, buffer, failover) and its dashboard.

    from shoal.client import Player
    summary = await Player(video_id, metadata_url="http://127.0.0.1:8080", output="out.mp4").play()

`shoal play VIDEO_ID --metadata-url URL` runs it from a shell; `--dashboard` serves the live
dashboard (port 8888). Design and figures: docs/client.md.
"""

from shoal.client.buffer import Buffer
from shoal.client.fetch import FetchError, Timeouts
from shoal.client.manifest import ChunkRef, FragmentRef, Manifest, ManifestError, parse_manifest
from shoal.client.monitor import NetworkMonitor, new_scores
from shoal.client.scheduler import ROUND_ROBIN, SMART, STRATEGIES, Hedging, Scheduler
from shoal.client.session import Player, PlayerError

__all__ = [
    "ROUND_ROBIN",
    "SMART",
    "STRATEGIES",
    "Buffer",
    "ChunkRef",
    "FetchError",
    "FragmentRef",
    "Hedging",
    "Manifest",
    "ManifestError",
    "NetworkMonitor",
    "Player",
    "PlayerError",
    "Scheduler",
    "Timeouts",
    "new_scores",
    "parse_manifest",
]
