"""The protocol between source and agent: frames, the methods and their typed arguments,
requests and answers, compressed streams, the handshake."""
