"""The ``secure-keys`` command line: seal, rotate, dev (and more as they land).

``main`` parses arguments and dispatches; each command lives in its own module and
does its I/O at the edge (stdin, files, the Kubernetes API). Plaintext is read from
stdin or a file, never from the command line, where other users could see it in the
process list.
"""
