"""Host images: base root filesystems, generated Dockerfiles, facts, dib layers and
the package cache."""
