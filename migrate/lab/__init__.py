"""The sandbox lab: two hosts on this machine (network namespaces, a dockerd and an sshd each)
for the demo and the tests. Not part of the product: only cli/ and tests import it."""
