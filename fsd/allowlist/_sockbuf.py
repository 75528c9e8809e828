"""Room for big SOCK_SEQPACKET packets: one packet must fit in the sender's send buffer."""

import socket

import trio

SEND_BUFFER = 4 << 20
"""Asked-for send buffer: a 1 MiB request or a long ListPaths answer fits in one packet."""

_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux; Python 3.12+ names it


def enlarge_send_buffer(
    sock: socket.socket | trio.socket.SocketType, size: int = SEND_BUFFER
) -> None:
    """Best effort: root may exceed ``wmem_max`` (SO_SNDBUFFORCE), others get what it allows."""
    for option in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            continue
        return
