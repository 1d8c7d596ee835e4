"""The ``secure-keys`` command line: seal and rotate (and more as they land).

``main`` parses arguments and dispatches; each command lives in its own module and
does its I/O at the edge (stdin, files, and the Kubernetes API through ``kubeapi``,
the only module here that talks to a cluster). Plaintext is read from
stdin or a file, never from the command line, where other users could see it in the
process list.
"""
