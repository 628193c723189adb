"""shoal.uploader: the upload service (port 8084) and `shoal upload`.

An upload is checked with ffprobe, remuxed by FFmpeg into fragmented MP4 (no re-encoding),
cut into chunks of at most 2 MiB with their time ranges, stored on storage nodes (3 replicas
or 5 erasure-coded fragments) and committed through the metadata service. See docs/uploader.md.
"""
