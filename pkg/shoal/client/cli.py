"""`shoal play VIDEO_ID --metadata-url URL [--output FILE|-] [--speed X] [--strategy smart|round-robin]
[--dashboard [--dashboard-port 8888]]`.

Without --dashboard it plays the video to its end (a status line on stderr every second) and
prints the performance summary as JSON (on stderr when the stream itself goes to stdout, so
`shoal play ID --output - | ffplay -` works). With --dashboard it serves the dashboard on
127.0.0.1 and plays inside it; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from shoal.client.scheduler import STRATEGIES
from shoal.web.tls import client_verify


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video_id", help="the video to play")
    p.add_argument("--metadata-url", required=True, help="metadata service, e.g. http://127.0.0.1:8080")
    p.add_argument("--output", default=None, help="write the reassembled fMP4 here ('-': stdout, for ffplay)")
    p.add_argument("--speed", type=float, default=1.0, help="playback clock speed (default 1: real time)")
    p.add_argument("--strategy", choices=STRATEGIES, default="smart", help="chunk scheduling (default smart)")
    p.add_argument("--parallel", type=int, default=4, help="chunk downloads in flight (default 4)")
    p.add_argument("--dashboard", action="store_true", help="serve the live dashboard while playing")
    p.add_argument("--dashboard-port", type=int, default=8888, help="dashboard port (default 8888)")
    p.add_argument("--quiet", action="store_true", help="no status lines")
    p.add_argument(
        "--metadata-timeout",
        type=float,
        default=5.0,
        help="seconds each call to the metadata service may take, retries included (default 5)",
    )
    p.add_argument(
        "--give-up",
        type=float,
        default=30.0,
        help="seconds a chunk no node can serve is retried before playback fails (default 30)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="viewer API key (or token) for services started with --auth-dir (default $SHOAL_API_KEY)",
    )
    p.add_argument(
        "--tls-ca", default=None, help="CA certificate (PEM) the services' HTTPS is verified against"
    )


def _line(status: dict) -> str:
    b, bs, ss = status["buffer"], status["buffer_stats"], status["scheduler_stats"]
    return (
        f"{b['state']:<11} {b['position_sec']:7.1f}/{b['duration_sec']:.0f} s  buffer {b['buffer_level_sec']:5.1f} s  "
        f"rebuffers {bs['rebuffering_events']}  downloads {ss['successful']}/{ss['total_downloads']}  "
        f"failovers {ss['failover_count']}"
    )


async def _play(args: argparse.Namespace) -> dict:
    from shoal.client.session import Player

    player = Player(
        args.video_id,
        args.metadata_url,
        strategy=args.strategy,
        speed=args.speed,
        parallel=args.parallel,
        output=args.output,
        api_key=args.api_key,
        ssl=client_verify(args.tls_ca),
        metadata_timeout=args.metadata_timeout,
        give_up_sec=args.give_up,
    )
    task = player.start()
    while not task.done():
        await asyncio.wait({task}, timeout=1.0)
        if not args.quiet and player.buffer is not None:
            print(_line(player.status()), file=sys.stderr, flush=True)
    return task.result()


def run_play(args: argparse.Namespace) -> int:
    if args.speed <= 0 or args.parallel < 1 or not args.metadata_timeout > 0 or not args.give_up > 0:
        print(
            "shoal play: --speed, --metadata-timeout and --give-up must be > 0 and --parallel >= 1",
            file=sys.stderr,
        )
        return 2
    if args.dashboard:
        from shoal.web.serve import serve

        print(f"dashboard: http://127.0.0.1:{args.dashboard_port}/", file=sys.stderr, flush=True)
        serve(
            "dashboard",
            {
                "host": "127.0.0.1",
                "port": args.dashboard_port,
                "workers": 1,
                "log_level": "warning",
                "shutdown_timeout": 5,
                "metadata_url": args.metadata_url,
                "video_id": args.video_id,
                "strategy": args.strategy,
                "speed": args.speed,
                "parallel": args.parallel,
                "output": args.output,
                "api_key": args.api_key,
                "tls_ca": args.tls_ca,
            },
        )
        return 0
    from shoal.client.session import PlayerError

    try:
        summary = asyncio.run(_play(args))
    except PlayerError as exc:
        print(f"shoal play: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    out = sys.stderr if args.output == "-" else sys.stdout
    print(json.dumps(summary), file=out)
    return 0
