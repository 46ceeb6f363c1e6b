"""The vhost-user wire: the message format (bytes <-> frozen dataclasses, syntax checks only) and the
control socket that carries it with its SCM_RIGHTS fds (listen, connect, inherit).

A layer of docs/architecture.md: it imports only the vocabulary (errors.py, spec.py), never a layer above.
"""
