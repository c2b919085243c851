"""``eanet serve MODEL``: the web demo (Gradio) on this machine."""

from __future__ import annotations

import socket

import click

from eanet.cli import summary
from eanet.errors import EanetError


def _check_free(host: str, port: int) -> None:
    """Refuse a host:port nothing can listen on (taken, not this machine's, not an address) before the app loads."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise EanetError(f"cannot listen on {host}:{port}: {reason}; give --port or --host another value") from None


@click.command("serve", short_help=summary("serve"))
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--revision", help="with a Hub repository id: the branch, tag or commit")
@click.option("--example", "examples", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="an example image offered in the page (repeatable)")
def serve_cmd(model: str, host: str, port: int, revision: str | None, examples: tuple[str, ...]) -> None:
    """Serve MODEL (a folder or a Hub repository id) as a web page: upload an image, see the top-5 labels,
    the attention maps, and the model's name, size and test accuracy. Stop with Ctrl-C."""
    from eanet.extras import require

    require("gradio", extra="demo", what="eanet serve")
    from eanet.demo import MAX_FILE_SIZE, build_app, model_info
    from eanet.hub import load_model, resolve_model

    _check_free(host, port)
    folder = resolve_model(model, revision=revision)
    net = load_model(folder)
    app = build_app(net, info=model_info(net, folder), examples=list(examples) or None)
    click.echo(f"serving {net.variant or model} on http://{host}:{port} (Ctrl-C stops)")
    try:
        app.queue(default_concurrency_limit=2).launch(server_name=host, server_port=port,
                                                      max_file_size=MAX_FILE_SIZE, quiet=True, show_error=True)
    except OSError as exc:  # taken between the check and the launch
        raise EanetError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; give --port another value") from None
