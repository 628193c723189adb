"""An nginx config that fronts every service of a `shoal up` layout under one host.

    shoal up --nginx-config [--nginx-listen 127.0.0.1:8000] > /etc/nginx/conf.d/shoal.conf

Each service gets a path prefix (/state/, /metadata/, /storage/1/, /uploader/, /dashboard/,
/compute/, /kv/, /manager/) that nginx strips before passing the request on, telling the
service the prefix in X-Forwarded-Prefix (its /openapi.json then names it in `servers`).
The Host header and X-Forwarded-For/-Proto/-Host go along too.
Services believe X-Forwarded-* only from the proxies in their --forwarded-allow-ips
(`shoal up --forwarded-allow-ips 127.0.0.1`). Bodies and responses stream (uploads, chunks,
kv watch streams); each service enforces its own body limit, so the 413 is in its envelope.
"""

from __future__ import annotations

from shoal.platform.layout import Child

_HEADERS = (
    ("Host", "$http_host"),
    ("Connection", '""'),  # keep-alive to the upstream
    ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
    ("X-Forwarded-Proto", "$scheme"),
    ("X-Forwarded-Host", "$http_host"),
    ("X-Forwarded-Prefix", "$shoal_prefix"),  # an empty value is not sent
)


def _upstream(c: Child) -> str:
    return "shoal_" + c.name.replace("-", "_")


def server_config(children: list[Child], listen: str = "127.0.0.1:8000") -> str:
    """`upstream`s, a `map` and one `server` block, for nginx's http context (e.g. conf.d/)."""
    width = max(len(c.prefix) for c in children) + 2
    lines = [
        "# shoal behind nginx: `shoal up --nginx-config` writes this for its layout. Start shoal with",
        "# `shoal up --forwarded-allow-ips 127.0.0.1` so its services believe the X-Forwarded-* headers.",
    ]
    lines += [
        f"upstream {_upstream(c)} {{ server {c.url.removeprefix('http://')}; keepalive 8; }}"
        for c in children
    ]
    lines += ["", "# the prefix a request came in under, told to the service (its OpenAPI `servers`)"]
    lines += ["map $uri $shoal_prefix {", '    default "";']
    lines += [f"    {'~^' + c.prefix + '/':<{width + 2}} {c.prefix};" for c in children]
    lines += ["}", ""]
    index = " ".join(f"{c.prefix}/" for c in children)
    lines += [
        "server {",
        f"    listen {listen};",
        "    server_name _;",
        "    absolute_redirect off;",
        "    tcp_nopush off;  # Debian's default `on` delays small responses by ~20 ms",
        "    client_max_body_size 0;  # every service enforces its own limit (413 in its envelope)",
        "    proxy_http_version 1.1;",
        "    proxy_buffering off;  # chunks, upload progress and kv watch streams go straight through",
        "    proxy_request_buffering off;  # uploads stream to the uploader as they arrive",
        "    proxy_read_timeout 3600s;  # kv watch streams stay open",
        "    proxy_send_timeout 3600s;",
        "    # (a location that sets any proxy_set_header of its own loses all of these)",
        *(f"    proxy_set_header {k} {v};" for k, v in _HEADERS),
        "",
        f'    location = / {{ default_type text/plain; return 200 "shoal: {index}\\n"; }}',
        "    # the trailing / of proxy_pass strips the prefix: /state/peers -> /peers",
    ]
    for c in children:
        lines.append(f"    location {c.prefix + '/':<{width}} {{ proxy_pass http://{_upstream(c)}/; }}")
    for c in children:
        lines.append(f"    location = {c.prefix:<{width - 2}} {{ return 301 {c.prefix}/; }}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def standalone_config(children: list[Child], listen: str, workdir: str, run_as_root: bool = False) -> str:
    """A whole nginx.conf around server_config(), with every path in `workdir` (for tests, or
    running nginx as an unprivileged user: `nginx -p WORKDIR -c nginx.conf`)."""
    user = "user root;\n" if run_as_root else ""
    return (
        f"{user}worker_processes 1;\n"
        "daemon off;\n"
        f"pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/error.log warn;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        f"    access_log {workdir}/access.log;\n"
        f"    client_body_temp_path {workdir}/client_body;\n"
        f"    proxy_temp_path {workdir}/proxy;\n"
        f"    fastcgi_temp_path {workdir}/fastcgi;\n"
        f"    uwsgi_temp_path {workdir}/uwsgi;\n"
        f"    scgi_temp_path {workdir}/scgi;\n"
        + "".join(f"    {line}\n" if line else "\n" for line in server_config(children, listen).splitlines())
        + "}\n"
    )
