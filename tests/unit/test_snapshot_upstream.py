"""The view's way to the mirror: through the package cache on the default port only."""

from matrix.snapshot.upstream import Upstream


def test_a_mirror_on_a_port_of_its_own_is_asked_directly():
    upstream = Upstream("http://127.0.0.1:3142")
    assert upstream._opener_for("http://mirror.example/debian/x") is upstream._proxied
    assert upstream._opener_for("http://mirror.example:80/debian/x") is upstream._proxied
    # apt-cacher-ng drops the port and asks port 80: a local mirror would be unreachable.
    assert upstream._opener_for("http://192.0.2.2:8080/debian/x") is upstream._direct
