# Sourced after debian-minimal's own environment: the release the target asked for is
# replaced, as a broken element or a stale cache might do.
export DIB_RELEASE=bookworm
