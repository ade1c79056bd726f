"""CRIU's RPC, served by the engine: `engine swrk FD`, `engine service`.

A runtime (runc, podman through go-criu, crun through libcriu) talks to CRIU
over a SOCK_SEQPACKET socket, one protobuf message per packet and no length
prefix (CRIU's criu/cr-service.c): it sends a ``criu_req`` and reads a
``criu_resp``; during a dump or restore with ``notify_scripts`` it is sent
``criu_resp`` messages of type NOTIFY and answers each with a ``criu_req``
of type NOTIFY and ``notify_success``. The fds a request names
(``images_dir_fd``, ``work_dir_fd``) are the caller's, opened here through
``/proc/PEER/fd/N`` with the peer from SO_PEERCRED.

Modules: channel.py (the socket, the peer, the notify round trip),
options.py (criu_opts to the engine's command line, refusing what the engine
cannot honour), requests.py (one handler per request type), notify.py (where
the notifies are sent, as hooks of a plugin registered for the request),
service.py (swrk and the listening service).
"""

# The CRIU release whose RPC and command line the engine offers: VERSION
# answers it (go-criu wants 3.0 or later, podman 3.11, CRI-O 3.16).
CRIU_VERSION = (4, 2)


def criu_version_text() -> str:
    return ".".join(map(str, CRIU_VERSION))
